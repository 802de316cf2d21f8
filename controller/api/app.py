"""The hub's HTTP API (FastAPI): one app, one router per concern.

Default deny: every route but ``/healthz`` and the two log-in steps depends on
``principal()`` (``Caller``), which turns the bearer token into a Principal or
answers 401; each route then asks ``authz.check`` for its verb and kind (403
otherwise). Errors are JSON ``{"error": {"message": ..., "details": [...]}}``
with a message a user can act on, and never echo a token.

Where a route goes: a router module under ``controller/api/`` (``login``,
``agents``, ``logs``, ``peers``, ``images``, ``ui``, ``metrics``, ``objects``), its handlers taking what they
need from ``d: Deps`` (``controller.api.deps``). ``create_app`` only installs
the error handlers and includes the routers, those with fixed first path
segments before the generic ``/v1/{kind}`` routes of ``objects``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from controller.api import (
    agents,
    blobs,
    images,
    login,
    logs,
    metrics,
    objects,
    peers,
    ui,
    vnet,
)
from controller.api.common import ERROR_RESPONSES, ApiProblem, Caller
from controller.api.deps import ApiDeps, Deps
from controller.api.fastbeat import HeartbeatFastPath
from controller.auth import AuthError, Forbidden
from controller.metrics import RequestTimer
from controller.store import StoreError


def _problem(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"message": message, "details": details or []}}, status, headers=headers
    )


async def _on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return _problem(exc.status, exc.message, exc.details)


async def _on_auth(_: Request, exc: Exception) -> JSONResponse:
    return _problem(401, str(exc))


async def _on_forbidden(_: Request, exc: Exception) -> JSONResponse:
    return _problem(403, str(exc))


async def _on_store(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    return _problem(exc.status, str(exc))


async def _on_invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"path": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
        for e in exc.errors()
    ]
    return _problem(422, "request does not match the API schema", details)


def healthz(d: Deps) -> dict[str, Any]:
    """Liveness: no token needed, says nothing secret."""
    return {"ok": True, "hubId": d.hub_id}


def openapi(request: Request, who: Caller) -> dict[str, Any]:
    """The OpenAPI document of this API (token required, like everything else)."""
    return request.app.openapi()


#: the largest request body the hub reads, but for the routes that stream theirs (image
#: uploads, bounded by the image store; log uploads, kept as their tail)
MAX_BODY_BYTES = 32 << 20
_STREAMED = (
    ("POST", "/v1/images", ""),
    ("POST", "/v1/blobs", ""),
    ("PUT", "/v1/placements/", "/logs"),
    ("PUT", "/v1/placements/", "/outputs"),
)


class BodyLimit:
    """ASGI middleware: a body over ``MAX_BODY_BYTES`` gets 413 with a clear message, by
    its Content-Length or, without one, as soon as that many bytes have arrived."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or any(
            scope["method"] == m and scope["path"].startswith(p) and scope["path"].endswith(e)
            for m, p, e in _STREAMED
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        over = False

        async def counted() -> Any:
            nonlocal seen, over
            if over:
                return await _no_body()
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # stop reading: the app sees a body cut short...
                    over = True
                    return await _no_body()
            return message

        async def answer(message: Any) -> None:
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)  # ...and its answer is replaced by the 413

        await self.app(scope, counted, answer)

    async def _refuse(self, send: Any) -> None:
        response = _problem(
            413,
            f"request body over {self.limit >> 20} MiB; the hub reads at most that "
            "(apply fewer objects at once; push images with `gu image push`)",
        )
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(deps: ApiDeps) -> FastAPI:
    """The API app serving from ``deps``."""
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
    app.state.deps = deps
    app.add_exception_handler(ApiProblem, _on_problem)
    app.add_exception_handler(AuthError, _on_auth)
    app.add_exception_handler(Forbidden, _on_forbidden)
    app.add_exception_handler(StoreError, _on_store)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["meta"])
    app.add_api_route(
        "/openapi.json", openapi, methods=["GET"], tags=["meta"], include_in_schema=False
    )
    for module in (login, agents, logs, peers, images, blobs, ui, metrics, vnet, objects):
        app.include_router(module.router)
    app.add_middleware(BodyLimit)
    # (inside the timer, so its answers are timed under the heartbeat route too)
    app.add_middleware(HeartbeatFastPath, deps=deps)
    deps.feed.listen(deps.decisions.on_batch, ("Provider",))
    app.add_middleware(RequestTimer, metrics=deps.metrics)
    return app


__all__ = ["create_app"]
