"""Virtual network routes: what a member agent needs to bridge its VMs' frames (the
network's keys and members), and the admin's key rotation.

``GET /v1/vnet/{name}/membership`` answers only an agent that hosts an active member of
the network (403 to any other agent, as to apps; the admin may read it). The keys
(``controller.vnetkeys``) travel only here, over the agent's authenticated channel.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from controller import authz
from controller.api.common import ApiProblem, Caller
from controller.api.deps import ApiDeps, Deps
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


# ------------------------------------------------------------------- relay

RELAY_BATCH = 256
MAX_RELAY_DATAGRAM = 4096


class RelayRequest(BaseModel):
    to: str = Field(max_length=64)
    datagrams: list[str] = Field(max_length=RELAY_BATCH)


def _shared_networks(d: ApiDeps, a: str, b: str) -> set[bytes]:
    """Network ids (``agent.bridge.network_id``) both nodes host an active member of."""

    def nets(node: str) -> set[str]:
        return {
            str(p["spec"].get("network"))
            for p in d.store.list_where("Placement", "$.node", node)
            if p["spec"].get("network")
            and (p.get("status") or {}).get("state", "Pending") in ACTIVE
        }

    return {hashlib.sha256(n.encode()).digest()[:8] for n in nets(a) & nets(b)}


@router.post("/v1/vnet/relay")
async def relay_send(req: RelayRequest, who: Caller, d: Deps) -> dict[str, Any]:
    """An agent's sealed datagrams for another member node, when no direct UDP path works
    between them: the hub passes the ciphertext on, and can read none of it. Only between
    nodes hosting members of the network each datagram names, from its own sender."""
    if who.role != "agent":
        raise Forbidden(f"{who} lacks permission to relay: only agents relay frames")
    shared = await asyncio.to_thread(_shared_networks, d, who.name, req.to)
    me = bytes.fromhex(who.name.removeprefix("0x"))
    ok = []
    for text in req.datagrams:
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            continue
        # header: version (1) | network id (8) | sender (20) | ...
        if len(raw) <= 29 or len(raw) > MAX_RELAY_DATAGRAM or raw[9:29] != me:
            continue
        if raw[1:9] in shared:
            ok.append(text)
    if ok:
        d.relay.put(req.to, ok)
    return {"relayed": len(ok), "refused": len(req.datagrams) - len(ok)}


@router.get("/v1/vnet/relay")
async def relay_receive(
    who: Caller, d: Deps, timeout: float = Query(default=20.0, ge=0, le=30)
) -> dict[str, Any]:
    """The datagrams relayed to this agent (long poll: waits up to ``timeout`` seconds)."""
    if who.role != "agent":
        raise Forbidden(f"{who} lacks permission to receive relayed frames")
    return {"datagrams": await d.relay.take(who.name, timeout)}
