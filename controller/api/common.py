"""What every API module shares: the error type and body, the caller dependency, kinds."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel

from controller.api.deps import deps_of
from controller.auth import AuthError, Forbidden, MetricsToken, Principal
from specs.kinds import UnknownKindError, resolve_kind


class ApiProblem(Exception):
    """An error answer with a status, a message and optional field details."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


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


_RAW_BODY_SCHEMAS: dict[str, dict[str, Any]] = {
    "application/octet-stream": {"type": "string", "format": "binary"},
    "application/json": {"type": "object"},
    "text/plain": {"type": "string"},
}


def raw_body(media_type: str) -> dict[str, Any]:
    """OpenAPI for a route that reads its body itself (a stream, a file): say what it takes."""
    schema = _RAW_BODY_SCHEMAS[media_type]
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def kind_of(name: str) -> str:
    """The canonical kind for a path segment (``sessions`` → ``Session``); 404 if unknown."""
    try:
        return resolve_kind(name)
    except UnknownKindError as exc:
        raise ApiProblem(404, str(exc)) from None


UI_COOKIE = "gu_session"
"""The web UI's session cookie (HttpOnly, SameSite=Strict; ``controller.api.ui``)."""

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


async def principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` or the web UI's session cookie;
    401 otherwise. A request the cookie authenticates that may change something must carry
    the session's CSRF token in ``X-CSRF-Token`` (403 otherwise).

    Async on purpose: checking a token is an HMAC and a JSON decode (microseconds),
    and a sync dependency would cost every request a hop to the thread pool.
    """
    d = deps_of(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        token = token.strip()
        if token.startswith(MetricsToken.PREFIX):
            return d.metrics_token.check(token)
        return d.auth.verify_token(token)
    cookie = request.cookies.get(UI_COOKIE)
    if cookie and not header:
        who = d.auth.verify_token(cookie, use="ui")
        if request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get("x-csrf-token", ""), d.auth.csrf_of(cookie)
        ):
            raise Forbidden(
                "missing or wrong X-CSRF-Token header for this UI session; reload the page"
            )
        request.state.ui_session = cookie
        return who
    raise AuthError(
        "missing bearer token; log in (`gu auth token`) and send Authorization: Bearer <token>"
    )


Caller = Annotated[Principal, Depends(principal)]
