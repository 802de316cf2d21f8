"""Virtual network routes: what a member agent needs to bridge its VMs' frames (the
network's keys and members), and the admin's key rotation.

``GET /v1/vnet/{name}/membership`` answers only an agent that hosts an active member of
the network (403 to any other agent, as to apps; the admin may read it). The keys
(``controller.vnetkeys``) travel only here, over the agent's authenticated channel.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller import authz
from controller.api.common import ApiProblem, Caller
from controller.api.deps import Deps
from controller.auth import Forbidden
from controller.poolview import ACTIVE
from specs.kinds import default_bus

router = APIRouter(tags=["vnet"])


@router.get("/v1/vnet/{name}/membership")
def membership(name: str, who: Caller, d: Deps) -> dict[str, Any]:
    """The network's CIDR, MTU, keys (newest first) and active members (placement, node,
    ip, mac, and the node's reported endpoints), for an agent hosting one of them."""
    if who.role not in ("agent", "admin"):
        raise Forbidden(f"{who} lacks permission to read a network's membership")
    net = d.store.try_get("VirtualNetwork", name)
    if net is None:
        raise ApiProblem(404, f"VirtualNetwork/{name} not found")
    members = []
    hosts = False
    for p in d.store.list_where("Placement", "$.network", name):
        spec, status = p.get("spec") or {}, p.get("status") or {}
        iface = spec.get("networkInterface") or {}
        node = spec.get("node")
        if not node or not iface or (status.get("state") or "Pending") not in ACTIVE:
            continue
        hosts = hosts or node == who.name
        members.append({"placement": p["metadata"]["name"], "node": node,
                        "ip": str(iface.get("address", "")).split("/")[0],
                        "mac": iface.get("mac")})  # fmt: skip
    if who.role == "agent" and not hosts:
        raise Forbidden(
            f"{who} lacks permission to read network {name}: it hosts none of its members"
        )
    endpoints: dict[str, list[str]] = {}
    for node in {m["node"] for m in members}:
        prov = d.store.try_get("Provider", node)
        endpoints[node] = list(((prov or {}).get("status") or {}).get("endpoints") or [])
    for m in members:
        m["endpoints"] = endpoints.get(m["node"], [])
    spec = net.get("spec") or {}
    mcast = spec.get("multicast") or {}
    return {
        "network": name,
        "bus": f"{mcast['group']}:{mcast['port']}" if mcast else default_bus(name),
        "cidr": spec.get("cidr"),
        "mtu": spec.get("mtu"),
        "keys": d.vnet_keys.keys(name, str(net["metadata"].get("uid") or "")),
        "members": sorted(members, key=lambda m: m["placement"]),
    }


@router.post("/v1/vnet/{name}/rotate-key")
def rotate_key(name: str, who: Caller, d: Deps) -> dict[str, Any]:
    """Give the network a new key; the previous one stays valid for a short overlap."""
    authz.check(who, "admin")
    if d.store.try_get("VirtualNetwork", name) is None:
        raise ApiProblem(404, f"VirtualNetwork/{name} not found")
    return {"network": name, "keyId": d.vnet_keys.rotate(name)}


__all__ = ["router"]
