"""The Provider Information API, at the roadmap's paths.

``GET /peers`` lists providers; ``/peers/{nodeId}`` is one with its inventory
and usage; ``/peers/{nodeId}/inf/{storage,cpu,mem,os}`` are the small views a
requestor uses to pick machines. All read the Provider objects with the live
usage and last-seen time of the hub's lease table overlaid
(``controller.liveness``); ``ready`` is the Provider's ``Ready`` condition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from controller import authz
from controller.api.common import ApiProblem, Caller
from controller.api.deps import ApiDeps, Deps
from controller.auth import Principal
from specs import peerinfo
from specs.kinds import Inventory, Provider, Usage
from specs.meta import get_condition

router = APIRouter(tags=["peers"])


ACTIVE = ("Pending", "Pulling", "Starting", "Running", "Suspended")


def _summary(prov: Provider, sessions: int) -> dict[str, Any]:
    ready = get_condition(prov.status.conditions, "Ready")
    last = prov.status.lastHeartbeat
    return {
        "nodeId": prov.spec.nodeId,
        "name": prov.spec.displayName,
        "labels": prov.metadata.labels,
        "ready": bool(ready and ready.status == "True"),
        "lastSeen": last.isoformat().replace("+00:00", "Z") if last else None,
        "sessions": sessions,
    }


def _active(placement: dict[str, Any]) -> bool:
    return bool(placement.get("status", {}).get("state", "Pending") in ACTIVE)


def sessions_per_node(d: ApiDeps) -> Counter[str]:
    """How many sessions have an active placement on each node."""
    pairs = {
        (p["spec"].get("node"), p["spec"]["session"])
        for p in d.store.list("Placement")
        if _active(p) and p["spec"].get("node")
    }
    return Counter(node for node, _ in pairs)


def sessions_on(d: ApiDeps, node: str) -> int:
    """How many sessions have an active placement on ``node`` (indexed: its placements only)."""
    return len(
        {
            p["spec"]["session"]
            for p in d.store.list_where("Placement", "$.node", node)
            if _active(p)
        }
    )


def provider(d: ApiDeps, node_id: str, who: Principal) -> Provider:
    """The Provider ``who`` may see, parsed; 404 otherwise."""
    authz.check(who, "get", "Provider")
    obj = d.store.try_get("Provider", node_id)
    if obj is None or not authz.visible(who, "Provider", obj):
        raise ApiProblem(404, f"no provider with node id {node_id!r}; see GET /peers")
    return Provider.model_validate(d.liveness.overlay(obj))


def with_inventory(d: ApiDeps, node_id: str, who: Principal) -> Provider:
    """The Provider, once it has reported an inventory; 404 before."""
    prov = provider(d, node_id, who)
    if prov.status.inventory is None:
        raise ApiProblem(
            404, f"provider {node_id} has not reported its inventory yet; try again shortly"
        )
    return prov


@router.get("/peers")
def peers(who: Caller, d: Deps) -> list[dict[str, Any]]:
    """Every provider: node id, name, labels, readiness, last heartbeat, sessions."""
    authz.check(who, "list", "Provider")
    counts = sessions_per_node(d)
    return [
        _summary(Provider.model_validate(d.liveness.overlay(o)), counts[o["metadata"]["name"]])
        for o in d.store.list("Provider")
        if authz.visible(who, "Provider", o)
    ]


@router.get("/peers/{nodeId}")
def peer(nodeId: str, who: Caller, d: Deps) -> dict[str, Any]:
    """One provider with its inventory and usage."""
    prov = provider(d, nodeId, who)
    out = _summary(prov, sessions_on(d, nodeId))
    inv = prov.status.inventory
    out["inventory"] = inv.model_dump(mode="json") if inv else None
    out["usage"] = prov.status.usage.model_dump(mode="json")
    return out


summaries = {
    "storage": '``{"gib": free GiB, "totalGib": total GiB}``.',
    "cpu": '``{"architecture", "bit", "cores", "threads", "usage"}``.',
    "mem": '``{"gib": available GiB, "total": total GiB}``.',
    "os": '``{"name", "version"}``.',
}


def view_route(render: Callable[[Inventory, Usage], object]) -> Callable[..., dict[str, Any]]:
    # one route per view, same handler shape: the view function is the only difference
    def inf(nodeId: str, who: Caller, d: Deps) -> dict[str, Any]:
        prov = with_inventory(d, nodeId, who)
        assert prov.status.inventory is not None
        return dict(render(prov.status.inventory, prov.status.usage))  # type: ignore[call-overload]

    return inf


for view, render in peerinfo.VIEWS.items():
    router.add_api_route(
        f"/peers/{{nodeId}}/inf/{view}",
        view_route(render),
        methods=["GET"],
        name=f"inf_{view}",
        description=summaries[view],
    )
