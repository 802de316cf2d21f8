"""The hub's HTTP API (FastAPI): log-in, objects, apply, watch.

Default deny: every route but ``/healthz`` and the two log-in steps depends on
``principal()``, which turns the bearer token into a Principal or answers 401;
each route then asks ``authz.check`` for its verb and kind (403 otherwise).
Errors are JSON ``{"error": {"message": ..., "details": [...]}}`` with a message
a user can act on, and never echo a token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from controller import authz
from controller.admission import admit
from controller.api.common import ApiProblem, Caller
from controller.auth import AuthError, Forbidden, Principal
from controller.store import StoreError
from specs.kinds import KINDS, SYSTEM_KINDS, USER_KINDS, UnknownKindError, plural, resolve_kind
from specs.selectors import parse_selector

if TYPE_CHECKING:
    from controller.hub import Hub


# ------------------------------------------------------------------ payloads

MAX_RESOURCE_VERSION = 2**63 - 1
"""The largest resourceVersion the store can hold (a signed 64-bit SQLite INTEGER)."""


class ChallengeRequest(BaseModel):
    publicKey: str = Field(max_length=200)
    purpose: str = Field(default="api", max_length=40)


class ChallengeResponse(BaseModel):
    nonce: str
    hubId: str
    hubPublicKey: str
    expiresIn: int


class TokenRequest(BaseModel):
    publicKey: str = Field(max_length=200)
    nonce: str = Field(max_length=200)
    purpose: str = Field(default="api", max_length=40)
    expiry: int
    signature: str = Field(max_length=400)
    ttl: int | None = Field(default=None, ge=1, le=86400)


class TokenResponse(BaseModel):
    token: str
    expiresIn: int
    role: str
    name: str


class ApplyRequest(BaseModel):
    objects: list[dict[str, Any]] = Field(max_length=100_000)
    applySet: str | None = Field(default=None, max_length=512)
    prune: bool = False
    dryRun: bool = False


class ApplyResultModel(BaseModel):
    kind: str
    name: str
    action: str
    generation: int
    resourceVersion: int


class ApplyResponse(BaseModel):
    results: list[ApplyResultModel]
    resourceVersion: int


class StatusRequest(BaseModel):
    status: dict[str, Any]
    resourceVersion: int | None = None


class ObjectList(BaseModel):
    items: list[dict[str, Any]]
    resourceVersion: int


class EventList(BaseModel):
    items: list[dict[str, Any]]


class ProblemDetail(BaseModel):
    path: str
    message: str
    index: int | None = None


class Problem(BaseModel):
    message: str
    details: list[ProblemDetail]


class ErrorResponse(BaseModel):
    """The body of every error answer (FastAPI's own 422 shape is never sent)."""

    error: Problem


# Declared on every route, so the OpenAPI document tells clients (and schemathesis)
# the error body the API really sends instead of FastAPI's default 422 schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (401, "No valid bearer token (log in again)"),
        (403, "Not allowed: the message names the missing permission, or the policy rule"),
        (404, "No such object"),
        (422, "The request does not match the API schema"),
    )
}


# ---------------------------------------------------------------- app


def _kind(name: str) -> str:
    try:
        return resolve_kind(name)
    except UnknownKindError as exc:
        raise ApiProblem(404, str(exc)) from None


def create_app(hub: Hub) -> FastAPI:
    """The API app of ``hub``."""
    app = FastAPI(
        title="gu hub",
        version="1",
        description="Desired state, providers and images of a gu compute pool.",
        # default deny: the API description is served below behind a token too
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.hub = hub

    def problem(
        status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            {"error": {"message": message, "details": details or []}}, status, headers=headers
        )

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return problem(exc.status, exc.message, exc.details)

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return problem(401, str(exc))

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, str(exc))

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        return problem(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"path": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        return problem(422, "request does not match the API schema", details)

    # ------------------------------------------------------------ open

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, Any]:
        """Liveness: no token needed, says nothing secret."""
        return {"ok": True, "hubId": hub.hub_id}

    @app.get("/openapi.json", tags=["meta"], include_in_schema=False)
    def openapi(who: Caller) -> dict[str, Any]:
        """The OpenAPI document of this API (token required, like everything else)."""
        return app.openapi()

    @app.post("/v1/auth/challenge", response_model=ChallengeResponse, tags=["auth"])
    def challenge(req: ChallengeRequest) -> dict[str, Any]:
        """Step 1 of log-in: a single-use nonce to sign."""
        return hub.auth.challenge(req.publicKey, req.purpose)

    @app.post("/v1/auth/token", response_model=TokenResponse, tags=["auth"])
    def token(req: TokenRequest) -> dict[str, Any]:
        """Step 2 of log-in: the signed challenge for a short-lived bearer token."""
        if req.purpose != "api":
            # a signature made for another purpose (an agent's enrolment) is no log-in
            raise AuthError(
                f"a bearer token is issued only for purpose 'api', not {req.purpose!r}; "
                "an 'enroll' challenge goes to POST /v1/agents/enroll"
            )
        tok, who = hub.auth.issue_token(
            req.publicKey, req.nonce, req.purpose, req.expiry, req.signature, req.ttl
        )
        return {
            "token": tok,
            "expiresIn": int(min(req.ttl or hub.auth.token_ttl, hub.auth.token_ttl)),
            "role": who.role,
            "name": who.name,
        }

    @app.get("/v1/whoami", tags=["auth"])
    def whoami(who: Caller) -> dict[str, Any]:
        """The caller's role and name, and when its token expires."""
        return {"role": who.role, "name": who.name, "expires": who.expires}

    # routes with fixed first segments go before the generic /v1/{kind} ones
    from controller.api import agents, images, peers

    agents.register(app, hub)
    peers.register(app, hub)
    images.register(app, hub)

    # ------------------------------------------------------------ objects

    @app.get("/v1/watch", tags=["objects"])
    async def watch(
        who: Caller,
        # bounded like the store's SQLite INTEGER: a bigger number was a 500, not a 422
        resourceVersion: int = Query(default=0, ge=0, le=MAX_RESOURCE_VERSION),
        kind: str | None = Query(default=None, max_length=256),
        timeout: float | None = Query(default=None, gt=0, le=3600),
    ) -> StreamingResponse:
        """NDJSON stream of changes after ``resourceVersion``: ``{type, object, resourceVersion}``.

        A BOOKMARK line (``object`` null) is sent every 10 s of quiet; 410 means the
        log no longer reaches back that far: list again and watch from its rv.
        """
        kinds = {_kind(k) for k in kind.split(",")} if kind else None
        for k in kinds or ():
            authz.check(who, "watch", k)
        hub.store.changes(resourceVersion, limit=1)  # 410 before the stream starts
        deadline = time.monotonic() + timeout if timeout else None
        return StreamingResponse(
            _stream(hub, who, resourceVersion, kinds, deadline), media_type="application/x-ndjson"
        )

    @app.get("/v1/{kind}", response_model=ObjectList, tags=["objects"])
    def list_objects(
        kind: str, who: Caller, labelSelector: str | None = Query(default=None, max_length=1024)
    ) -> dict[str, Any]:
        """Every object of a kind, optionally filtered by labels (``k=v,k2``)."""
        k = _kind(kind)
        authz.check(who, "list", k)
        rv = hub.store.resource_version
        items = hub.store.list(k, parse_selector(labelSelector))
        return {"items": [o for o in items if authz.visible(who, k, o)], "resourceVersion": rv}

    def fetch(who: Principal, verb: authz.Verb, kind: str, name: str) -> dict[str, Any]:
        """The object, if ``who`` may ``verb`` it: permission on the kind is checked before
        any lookup (403), and an object the caller may not see answers 404 exactly like a
        missing one, so its existence does not leak."""
        authz.check(who, verb, kind)
        obj = hub.store.try_get(kind, name)
        if obj is None or not authz.visible(who, kind, obj):
            raise ApiProblem(404, f"{kind}/{name} not found")
        authz.check(who, verb, kind, obj)
        return obj

    @app.get("/v1/{kind}/{name}", tags=["objects"])
    def get_object(kind: str, name: str, who: Caller) -> dict[str, Any]:
        """One object."""
        return fetch(who, "get", _kind(kind), name)

    @app.delete("/v1/{kind}/{name}", tags=["objects"])
    def delete_object(kind: str, name: str, who: Caller) -> dict[str, Any]:
        """Delete an object (finalizers run first; the answer shows deletionTimestamp)."""
        k = _kind(kind)
        if k in SYSTEM_KINDS and who.role != "admin":
            raise Forbidden(f"{who} lacks permission to delete {k}")
        fetch(who, "delete", k, name)
        return hub.store.delete(k, name)

    @app.put("/v1/{kind}/{name}/status", tags=["objects"])
    def put_status(kind: str, name: str, req: StatusRequest, who: Caller) -> dict[str, Any]:
        """Replace an object's status (controllers and agents); never moves generation."""
        k = _kind(kind)
        obj = fetch(who, "status", k, name)
        model = KINDS[k]
        try:
            model.model_validate({**obj, "status": req.status})
        except ValidationError as exc:
            raise ApiProblem(422, f"invalid status for {k}/{name}", _details(exc)) from None
        return hub.store.update_status(k, name, req.status, expected_rv=req.resourceVersion)

    @app.get("/v1/{kind}/{name}/events", response_model=EventList, tags=["objects"])
    def object_events(kind: str, name: str, who: Caller) -> dict[str, Any]:
        """Recent events of one object, oldest first."""
        k = _kind(kind)
        fetch(who, "get", k, name)
        return {"items": [vars(e) for e in hub.store.events(k, name)]}

    @app.post("/v1/apply", response_model=ApplyResponse, tags=["objects"])
    def apply(req: ApplyRequest, who: Caller) -> dict[str, Any]:
        """Validate every object, then create/update them atomically (all or nothing)."""
        objects, errors = _validate_for_apply(req.objects)
        if errors:
            bad = len({e["index"] for e in errors})  # errors are per field, several per object
            raise ApiProblem(422, f"{bad} invalid object(s); nothing was applied", errors)
        for obj in objects:
            authz.check(who, "apply", obj["kind"], obj)
        refused = admit(hub, objects)
        if refused:
            raise ApiProblem(
                403,
                f"{len(refused)} object(s) refused by image policy; nothing was applied",
                refused,
            )
        results = hub.store.apply(
            objects,
            apply_set=req.applySet,
            prune=req.prune,
            prune_kinds=USER_KINDS,
            dry_run=req.dryRun,
            finalizers=hub_finalizers,
        )
        return {
            "results": [vars(r) for r in results],
            "resourceVersion": hub.store.resource_version,
        }

    return app


def hub_finalizers(kind: str) -> list[str]:
    """Finalizers a newly created object starts with (Sessions wait for their placements)."""
    return ["gu/placements"] if kind == "Session" else []


def _details(exc: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item: dict[str, Any] = {
            "path": ".".join(str(p) for p in err["loc"]),
            "message": err["msg"].removeprefix("Value error, "),
        }
        if index is not None:
            item["index"] = index
        out.append(item)
    return out


def _validate_for_apply(
    raw: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate each object against its kind; keep only what a user may set."""
    objects: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for i, obj in enumerate(raw):
        kind = obj.get("kind")
        # any JSON may arrive here: a dict or list is no kind (and unhashable: was a 500)
        if not isinstance(kind, str) or kind not in USER_KINDS:
            msg = (
                f"{kind} is written by the hub and cannot be applied"
                if isinstance(kind, str) and kind in SYSTEM_KINDS
                else f"unknown kind {kind!r}; known kinds: {', '.join(sorted(USER_KINDS))}"
            )
            errors.append({"index": i, "path": "kind", "message": msg})
            continue
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            message = "metadata must be an object with a name, e.g. {name: my-object}"
            errors.append({"index": i, "path": "metadata", "message": message})
            continue
        clean = {
            "apiVersion": obj.get("apiVersion"),
            "kind": kind,
            "metadata": {
                "name": meta.get("name"),
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
            },
            "spec": obj.get("spec"),
        }
        try:
            USER_KINDS[kind].model_validate(clean)
        except ValidationError as exc:
            errors.extend(_details(exc, i))
            continue
        key = (kind, meta["name"])
        if key in seen:
            errors.append(
                {
                    "index": i,
                    "path": "metadata.name",
                    "message": f"{kind}/{meta['name']} is also object #{seen[key]} of this apply",
                }
            )
            continue
        seen[key] = i
        objects.append(clean)
    return objects, errors


async def _stream(
    hub: Hub, who: Principal, since: int, kinds: set[str] | None, deadline: float | None
) -> AsyncIterator[bytes]:
    """The body of a watch: replay from the log, then follow the notifier."""
    last_bookmark = time.monotonic()
    while (deadline is None or time.monotonic() < deadline) and not hub.notifier.closed:
        try:
            changes = await asyncio.to_thread(hub.store.changes, since, 500)
        except StoreError as exc:
            yield _line(
                {"type": "ERROR", "object": None, "message": str(exc), "resourceVersion": since}
            )
            return
        for change in changes:
            since = change.rv
            if kinds and change.kind not in kinds:
                continue
            if not authz.visible(who, change.kind, change.object):
                continue
            yield _line(
                {"type": change.type, "object": change.object, "resourceVersion": change.rv}
            )
        if changes:
            continue
        now = time.monotonic()
        if now - last_bookmark >= 10:
            last_bookmark = now
            yield _line({"type": "BOOKMARK", "object": None, "resourceVersion": since})
        wait = 10.0 if deadline is None else max(0.0, min(10.0, deadline - now))
        await hub.notifier.wait(since, wait)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


__all__ = ["create_app", "hub_finalizers", "plural"]
