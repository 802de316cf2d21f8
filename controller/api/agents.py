"""Agent-facing routes: join tokens, enrolment and heartbeats.

Agents start every connection themselves (they may sit behind NAT): they
enrol once with a join token, then log in with their key, heartbeat their
inventory and usage and watch their Placements (log tails go to
``controller.api.logs``). The hub
stamps ``lastHeartbeat`` with its own clock, so agents' clocks do not matter.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from controller import authz
from controller.api.common import ApiProblem, Caller
from controller.api.deps import Deps
from controller.auth import AuthError, Forbidden, Principal
from controller.enrollment import check_join_token, create_join_token
from controller.liveness import iso
from controller.store import NotFound
from specs.identity import node_id
from specs.kinds import Inventory, Usage

router = APIRouter(tags=["agents"])


class JoinTokenRequest(BaseModel):
    ttl: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)


class JoinTokenResponse(BaseModel):
    token: str
    expiresIn: int


class EnrollRequest(BaseModel):
    publicKey: str = Field(max_length=200)
    nonce: str = Field(max_length=200)
    expiry: int
    signature: str = Field(max_length=400)
    joinToken: str = Field(max_length=200)
    name: str = Field(default="", max_length=120)
    labels: dict[str, str] = Field(default_factory=dict)


class EnrollResponse(BaseModel):
    nodeId: str
    token: str
    expiresIn: int


class Heartbeat(BaseModel):
    inventory: Inventory
    usage: Usage
    endpoints: list[str] = Field(default_factory=list, max_length=16)
    period: float | None = Field(
        default=None,
        ge=0.1,
        le=3600,
        description="Seconds until the agent's next heartbeat (default: the hub's setting).",
    )


@router.post("/v1/jointokens", response_model=JoinTokenResponse)
def new_join_token(req: JoinTokenRequest, who: Caller, d: Deps) -> dict[str, Any]:
    """A join token for new agents (admin only); shown once, stored hashed."""
    authz.check(who, "admin", "JoinToken")
    token, _ = create_join_token(d.store, req.ttl)
    return {"token": token, "expiresIn": req.ttl}


@router.post("/v1/agents/enroll", response_model=EnrollResponse)
def enroll(req: EnrollRequest, d: Deps) -> dict[str, Any]:
    """Enrol an agent: a signed challenge (purpose ``enroll``) plus a join token."""
    d.auth.verify_challenge(req.publicKey, req.nonce, "enroll", req.expiry, req.signature)
    if not check_join_token(d.store, req.joinToken):
        raise AuthError("join token unknown or expired; get one with `gu hub token create`")
    nid = node_id(req.publicKey)
    spec = {
        "nodeId": nid,
        "displayName": req.name or nid[:10],
        "publicKey": req.publicKey,
        "labels": req.labels,
    }
    obj = {"kind": "Provider", "metadata": {"name": nid, "labels": req.labels}, "spec": spec}
    try:
        from specs.kinds import Provider

        Provider.model_validate(obj)
    except ValueError as exc:
        raise ApiProblem(422, f"enrolment rejected: {exc}") from None
    with d.store.transaction():
        if d.store.try_get("Provider", nid) is None:
            d.store.create(obj)
        else:
            d.store.replace(obj)
    d.store.record_event("Provider", nid, "Enrolled", f"agent {spec['displayName']} enrolled")
    who = Principal("agent", nid, req.publicKey)
    return {
        "nodeId": nid,
        "token": d.auth.make_token(who, d.auth.token_ttl),
        "expiresIn": d.auth.token_ttl,
    }


def _is_ready(status: dict[str, Any]) -> bool:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


@router.post("/v1/agents/heartbeat")
def heartbeat(req: Heartbeat, who: Caller, d: Deps) -> dict[str, Any]:
    """An agent's inventory and usage; the hub stamps the time.

    A beat that changes only usage and last-seen, from a Ready provider, goes to
    the lease table (``controller.liveness``) and writes nothing to the store, so it
    wakes no reconcile; see ``DECISION_FIELDS`` for what is written.
    """
    if who.role != "agent":
        raise Forbidden(
            f"{who} lacks permission to heartbeat: only enrolled agents send heartbeats, "
            "for their own Provider"
        )
    current = d.store.try_get("Provider", who.name)
    if current is None:
        raise NotFound(f"Provider/{who.name} not found: enrol again with a join token")
    period = req.period or d.heartbeat_seconds
    usage = req.usage.model_dump(mode="json")
    seen = d.liveness.beat(who.name, usage, period)
    decision = {
        "inventory": req.inventory.model_dump(mode="json"),
        "endpoints": req.endpoints,
        "heartbeatSeconds": period,
    }
    status = current.get("status") or {}
    if not _is_ready(status) or any(status.get(k) != v for k, v in decision.items()):
        # what can change a placement decision (DECISION_FIELDS) is written, with the
        # other beats of the next 0.2 s, in one transaction; usage and last-seen stay in
        # the lease table unless written along
        d.heartbeats.record(who.name, {**decision, "usage": usage, "lastHeartbeat": iso(seen)})
    return {"ok": True, "heartbeat": d.heartbeat_seconds, "time": time.time()}
