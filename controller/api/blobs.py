"""Blob routes: push and read data (``gu blob``), a placement's outputs (agents upload,
``gu outputs`` downloads). The bookkeeping is ``controller.blobs``; the bytes live in the
image store, so images, blobs and outputs share one store, its bounds and the quota.

Who may read a blob: the admin, any; an app, those it owns (pushed, or produced by its
Sessions), else 404 as for anything it may not see; an agent, the inputs of its own
placements.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from controller import authz
from controller.api.common import ApiProblem, Caller, raw_body
from controller.api.deps import ApiDeps, Deps
from controller.api.images import ImageFile, fresh, receive, valid
from controller.auth import Forbidden, Principal
from controller.blobs import OutputRecord, outputs_of, owned_by, owns, pin, record_output
from controller.images import ImageNotFound

router = APIRouter(tags=["blobs"])


def _may_read(d: ApiDeps, who: Principal, blob: str) -> None:
    """404 (an app) or 403 (an agent) unless ``who`` may read ``blob``."""
    if who.role == "admin":
        return
    if who.role == "app":
        if not owns(d.store, who.name, blob):
            raise ApiProblem(404, f"blob {blob} not found among app {who.name}'s blobs")
        return
    if who.role == "agent":
        for p in d.store.list_where("Placement", "$.node", who.name):
            inputs = ((p.get("spec") or {}).get("workload") or {}).get("inputs") or []
            if any(i.get("hash") == blob for i in inputs):
                return
        raise Forbidden(
            f"{who} lacks permission to pull blob {blob}: none of its placements reads it"
        )
    raise Forbidden(f"{who} lacks permission to pull blob {blob}")


@router.post("/v1/blobs", openapi_extra=raw_body("application/octet-stream"))
async def push_blob(
    request: Request,
    who: Caller,
    d: Deps,
    expected: str | None = Query(default=None, max_length=80),
    app: str | None = Query(default=None, max_length=63, description="admin: owned by this app"),
) -> dict[str, Any]:
    """Upload a blob (a file, or a folder packed as a tar) as the raw request body; answers
    its ``sha3-256:`` hash. An app owns what it pushes; the admin names the app with
    ``?app=``."""
    authz.check(who, "push", "Image")
    if app is not None and who.role != "admin":
        raise Forbidden(f"{who} lacks permission to push blobs for another app ({app})")
    owner = who.name if who.role == "app" else app
    info = await receive(request, d, owner, expected)
    return {"hash": info.hash, "size": info.size, "app": owner}


@router.get("/v1/blobs")
def list_blobs(who: Caller, d: Deps) -> dict[str, Any]:
    """The blobs the caller may read: an app's own (pushed or produced), every one for the
    admin."""
    authz.check(who, "pull", "Image")
    if who.role == "admin":
        items = [{"hash": i.hash, "size": i.size} for i in d.images.list()]
    elif who.role == "app":
        items = [{"hash": h, "size": n} for h, n in sorted(owned_by(d.store, who.name).items())]
    else:
        raise Forbidden(f"{who} lacks permission to list blobs")
    return {"items": items}


@router.get("/v1/blobs/{hash}")
def pull_blob(hash: str, who: Caller, d: Deps) -> FileResponse:
    """A blob's bytes (the reader verifies them against the hash)."""
    authz.check(who, "pull", "Image")
    h = valid(hash)
    _may_read(d, who, h)
    try:
        path = d.images.path(h)
    except ImageNotFound:
        raise ApiProblem(404, f"blob {h} is not on the hub; push it with `gu blob push`") from None
    return ImageFile(path, d.metrics.image_bytes.inc, media_type="application/octet-stream")


@router.put("/v1/blobs/{hash}/pin")
def pin_blob(hash: str, who: Caller, d: Deps, pinned: bool = Query(default=True)) -> dict[str, Any]:
    """Keep a blob after the Session that produced it is deleted (``pinned=false``: no
    longer)."""
    authz.check(who, "pull", "Image")
    h = valid(hash)
    _may_read(d, who, h)
    if who.role == "agent":
        raise Forbidden(f"{who} lacks permission to pin blobs")
    if not d.images.exists(h):
        raise ApiProblem(404, f"blob {h} is not on the hub")
    pin(d.store, h, pinned)
    return {"hash": h, "pinned": pinned}


@router.put("/v1/placements/{name}/outputs", openapi_extra=raw_body("application/octet-stream"))
async def put_outputs(
    name: str,
    request: Request,
    who: Caller,
    d: Deps,
    files: int = Query(ge=0, le=100_000_000),
    expected: str | None = Query(default=None, max_length=80),
) -> dict[str, Any]:
    """An agent's upload of what a finished placement left under ``outputs.path`` (a tar);
    the hub keeps it for the Session's app until the Session is deleted. Idempotent: the
    same bytes again change nothing."""
    authz.check(who, "status", "Placement")
    placement = await asyncio.to_thread(d.store.try_get, "Placement", name)
    if placement is None or not authz.visible(who, "Placement", placement):
        raise ApiProblem(404, f"Placement/{name} not found")
    authz.check(who, "status", "Placement", placement)
    spec = placement["spec"]
    if not (spec.get("workload") or {}).get("outputs"):
        raise ApiProblem(422, f"Placement/{name} declares no outputs (spec.workload.outputs)")
    started = datetime.now(UTC)
    app = str(spec.get("app") or "")
    info = await receive(request, d, app, expected)
    rec = OutputRecord(
        str(spec.get("session") or ""), name, info.hash, info.size, files, app,
        str(spec.get("node") or ""),
    )  # fmt: skip
    await asyncio.to_thread(record_output, d.store, rec, fresh(info, started))
    return {"hash": info.hash, "size": info.size, "files": files}


@router.get("/v1/sessions/{name}/outputs")
def session_outputs(name: str, who: Caller, d: Deps) -> dict[str, Any]:
    """The outputs of a Session's placements: placement, node, hash, size, files."""
    authz.check(who, "get", "Session")
    session = d.store.try_get("Session", name)
    if session is None or not authz.visible(who, "Session", session):
        raise ApiProblem(404, f"Session/{name} not found")
    return {"items": [r.as_json() for r in outputs_of(d.store, name)]}


__all__ = ["router"]
