"""Workload output: agents upload log tails, users read a Session's output.

The agent uploads the tail of each workload's output (at most 1 MiB) before
the status a reader may act on; the hub keeps it per placement
(``controller.logs.PlacementLogs``), with the previous run's copy after a
restart in place, and serves a Session's output one section per placement.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from controller import authz
from controller.api.common import Caller, raw_body
from controller.api.deps import ApiDeps, Deps
from controller.store import NotFound

router = APIRouter()

MAX_LOG_BYTES = 1 << 20


async def tail_of(request: Request, limit: int) -> bytes:
    """The last ``limit`` bytes of the request body, read as it streams in: however much
    an agent sends, the hub holds at most about twice ``limit`` of it at once."""
    tail = bytearray()
    async for chunk in request.stream():
        tail += chunk
        if len(tail) > 2 * limit:
            del tail[:-limit]
    return bytes(tail[-limit:])


@router.put("/v1/placements/{name}/logs", tags=["agents"], openapi_extra=raw_body("text/plain"))
async def put_logs(
    name: str,
    request: Request,
    who: Caller,
    d: Deps,
    run: int | None = Query(default=None, ge=0, le=1_000_000),
) -> dict[str, Any]:
    """The agent uploads the tail of a workload's output (at most 1 MiB).

    ``run`` counts the workload's restarts in place: the first upload of a
    new run keeps the previous run's copy (``GET …/logs?previous=true``).
    """
    # permission on the kind first, so a caller without it cannot probe names
    authz.check(who, "status", "Placement")
    # the store and the disk are reached from threads: the loop serves other requests meanwhile
    placement = await asyncio.to_thread(d.store.try_get, "Placement", name)
    if placement is None or not authz.visible(who, "Placement", placement):
        raise NotFound(f"Placement/{name} not found")
    authz.check(who, "status", "Placement", placement)
    body = await tail_of(request, MAX_LOG_BYTES)
    await asyncio.to_thread(d.logs.store, name, body, run)
    return {"bytes": len(body)}


@router.get("/v1/sessions/{name}/logs", response_class=PlainTextResponse, tags=["objects"])
def session_logs(
    name: str,
    who: Caller,
    d: Deps,
    node: str | None = Query(default=None, max_length=64),
    previous: bool = Query(default=False),
) -> str:
    """Output of a session's workloads, one section per placement (``previous``: the
    run before the last restart in place)."""
    authz.check(who, "get", "Session")
    session = d.store.try_get("Session", name)
    if session is None or not authz.visible(who, "Session", session):
        raise NotFound(f"Session/{name} not found")
    placements = d.store.list_where("Placement", "$.session", name)
    if node:
        placements = [
            p
            for p in placements
            if p["spec"].get("node") == node or _display(d, p["spec"].get("node")) == node
        ]
    if not placements:
        raise NotFound(f"Session/{name} has no placements" + (f" on {node}" if node else ""))
    parts = []
    for p in placements:
        pname = p["metadata"]["name"]
        text = d.logs.read(pname, previous)
        if len(placements) > 1:
            parts.append(f"==> {pname} on {p['spec'].get('node')} <==\n")
        parts.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(parts)


def _display(d: ApiDeps, nid: str | None) -> str | None:
    if not nid:
        return None
    prov = d.store.try_get("Provider", nid)
    return prov["spec"].get("displayName") if prov else None
