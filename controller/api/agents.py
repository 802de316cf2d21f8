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
from controller.enrollment import (
    create_join_token,
    list_join_tokens,
    redeem_join_token,
    revoke_join_token,
)
from controller.liveness import is_ready, iso
from controller.store import NotFound
from specs.identity import node_id
from specs.kinds import Inventory, Usage
from specs.meta import Labels

router = APIRouter(tags=["agents"])


class JoinTokenRequest(BaseModel):
    ttl: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    labels: Labels = Field(
        default_factory=dict,
        description="The provider labels an agent enrolled with this token gets (trusted: "
        "ImagePolicy selectors match them).",
    )
    uses: int | None = Field(
        default=None, ge=1, le=100_000, description="How many agents it may enrol (None: any)."
    )


class JoinTokenResponse(BaseModel):
    token: str
    expiresIn: int
    id: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    uses: int | None = None


class JoinTokenInfo(BaseModel):
    id: str
    expires: float
    labels: dict[str, str]
    uses: int | None


class JoinTokenList(BaseModel):
    items: list[JoinTokenInfo]


class LabelPatch(BaseModel):
    labels: dict[str, str | None] = Field(
        description="Labels to set; a null value removes that label.", max_length=64
    )


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
    token, kept = create_join_token(d.store, req.ttl, req.labels, req.uses)
    return {
        "token": token,
        "expiresIn": req.ttl,
        "id": kept.id,
        "labels": kept.labels,
        "uses": kept.uses,
    }


@router.get("/v1/jointokens", response_model=JoinTokenList)
def join_tokens(who: Caller, d: Deps) -> dict[str, Any]:
    """The live join tokens by id (never the tokens themselves; admin only)."""
    authz.check(who, "admin", "JoinToken")
    return {"items": [t.as_json() for t in list_join_tokens(d.store)]}


@router.delete("/v1/jointokens/{token_id}")
def revoke_token(token_id: str, who: Caller, d: Deps) -> dict[str, Any]:
    """Revoke a join token by its id: it enrols nothing any more (admin only)."""
    authz.check(who, "admin", "JoinToken")
    if not revoke_join_token(d.store, token_id):
        raise NotFound(f"no live join token with id {token_id!r} (see `gu hub token ls`)")
    return {"revoked": token_id}


@router.put("/v1/providers/{name}/labels")
def label_provider(name: str, req: LabelPatch, who: Caller, d: Deps) -> dict[str, Any]:
    """Set or remove a Provider's trusted labels (admin only; what policies match)."""
    authz.check(who, "admin", "Provider")
    with d.store.transaction():
        current = d.store.get("Provider", name)
        labels = dict(current["metadata"].get("labels") or {})
        for key, value in req.labels.items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        obj = {**current, "metadata": {**current["metadata"], "labels": labels}}
        try:
            from specs.kinds import Provider

            Provider.model_validate(obj)
        except ValueError as exc:
            raise ApiProblem(422, f"labels rejected: {exc}") from None
        return d.store.replace(obj)


@router.post("/v1/agents/enroll", response_model=EnrollResponse)
def enroll(req: EnrollRequest, d: Deps) -> dict[str, Any]:
    """Enrol an agent: a signed challenge (purpose ``enroll``) plus a join token."""
    d.auth.verify_challenge(req.publicKey, req.nonce, "enroll", req.expiry, req.signature)
    nid = node_id(req.publicKey)
    spec = {
        "nodeId": nid,
        "displayName": req.name or nid[:10],
        "publicKey": req.publicKey,
        "labels": req.labels,  # what the agent says of itself: never trusted by policy
    }
    try:
        from specs.kinds import Provider

        Provider.model_validate({"kind": "Provider", "metadata": {"name": nid}, "spec": spec})
    except ValueError as exc:
        raise ApiProblem(422, f"enrolment rejected: {exc}") from None
    with d.store.transaction():
        granted = redeem_join_token(d.store, req.joinToken)
        if granted is None:
            raise AuthError(
                "join token unknown, expired, revoked or used up; "
                "get one with `gu hub token create`"
            )
        current = d.store.try_get("Provider", nid)
        # trusted labels: the admin's (kept across re-enrolments) and the token's
        labels = {**((current or {}).get("metadata", {}).get("labels") or {}), **granted.labels}
        obj = {"kind": "Provider", "metadata": {"name": nid, "labels": labels}, "spec": spec}
        if current is None:
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


#: What no provider this hub serves can have: a claim past these is refused (a 2-core
#: machine saying 4,096 cores would otherwise attract every workload).
MAX_CORES = 1024
MAX_THREADS = 4096
MAX_MEMORY_BYTES = 64 * 2**40  # 64 TiB
MAX_STORAGE_BYTES = 2**50  # 1 PiB
KNOWN_RUNTIMES = frozenset({"native", "docker", "vm"})


def inventory_problems(inventory: Inventory, usage: Usage) -> list[str]:
    """What in a heartbeat's inventory and usage cannot be true (empty: plausible)."""
    cpu = inventory.cpu
    problems = []
    if not 1 <= cpu.cores <= MAX_CORES:
        problems.append(f"cpu.cores {cpu.cores} is outside 1..{MAX_CORES}")
    if not cpu.cores <= cpu.threads <= min(MAX_THREADS, 8 * max(cpu.cores, 1)):
        problems.append(f"cpu.threads {cpu.threads} for {cpu.cores} cores is not plausible")
    if not 0 < inventory.memoryBytes <= MAX_MEMORY_BYTES:
        problems.append(f"memoryBytes {inventory.memoryBytes} is outside 1..{MAX_MEMORY_BYTES}")
    if not 0 <= inventory.storageBytes <= MAX_STORAGE_BYTES:
        problems.append(f"storageBytes {inventory.storageBytes} is outside 0..{MAX_STORAGE_BYTES}")
    unknown = sorted(set(inventory.runtimes) - KNOWN_RUNTIMES)
    if unknown:
        problems.append(f"runtimes {', '.join(unknown)} are not runtimes gu knows")
    if not 0 <= usage.memoryAvailableBytes <= inventory.memoryBytes:
        problems.append("usage.memoryAvailableBytes is more than memoryBytes")
    if not 0 <= usage.storageFreeBytes <= max(inventory.storageBytes, 0):
        problems.append("usage.storageFreeBytes is more than storageBytes")
    if not 0 <= usage.cpuPercent <= 100:
        problems.append(f"usage.cpuPercent {usage.cpuPercent} is outside 0..100")
    return problems


def heartbeat_decision(req: Heartbeat, period: float) -> dict[str, Any]:
    """What of a heartbeat can change a placement decision (``DECISION_FIELDS``), as the
    Provider's status keeps it."""
    return {
        "inventory": req.inventory.model_dump(mode="json"),
        "endpoints": req.endpoints,
        "heartbeatSeconds": period,
    }


@router.post("/v1/agents/heartbeat")
def heartbeat(req: Heartbeat, who: Caller, d: Deps) -> dict[str, Any]:
    """An agent's inventory and usage; the hub stamps the time.

    A beat that changes only usage and last-seen, from a Ready provider, goes to
    the lease table (``controller.liveness``) and writes nothing to the store, so it
    wakes no reconcile; see ``DECISION_FIELDS`` for what is written. Such a beat is
    usually answered before it gets here, by ``controller.api.fastbeat``.
    """
    if who.role != "agent":
        raise Forbidden(
            f"{who} lacks permission to heartbeat: only enrolled agents send heartbeats, "
            "for their own Provider"
        )
    current = d.store.try_get("Provider", who.name)
    if current is None:
        raise NotFound(f"Provider/{who.name} not found: enrol again with a join token")
    # what the fast path compares the next beats with (controller.api.fastbeat)
    d.decisions.note(who.name, current["metadata"]["resourceVersion"], current)
    problems = inventory_problems(req.inventory, req.usage)
    if problems:
        message = "heartbeat refused, its inventory cannot be true: " + "; ".join(problems)
        events = d.store.events("Provider", who.name)
        if not events or events[-1].message != message:
            d.store.record_event("Provider", who.name, "InventoryRefused", message, "Warning")
        raise ApiProblem(422, message)
    period = d.heartbeat_period(req.period)  # what the pool's size asks, if longer
    usage = req.usage.model_dump(mode="json")
    seen = d.liveness.beat(who.name, usage, period)
    d.metrics.heartbeats.inc()
    decision = heartbeat_decision(req, period)
    status = current.get("status") or {}
    if not is_ready(status) or any(status.get(k) != v for k, v in decision.items()):
        # what can change a placement decision (DECISION_FIELDS) is written, with the
        # other beats of the next 0.2 s, in one transaction; usage and last-seen stay in
        # the lease table unless written along
        d.heartbeats.record(who.name, {**decision, "usage": usage, "lastHeartbeat": iso(seen)})
    return {"ok": True, "heartbeat": period, "time": time.time()}
