"""What every API module shares: the error type, the caller dependency, the hub handle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from controller.auth import AuthError, Principal

if TYPE_CHECKING:
    from controller.hub import Hub


class ApiProblem(Exception):
    """An error answer with a status, a message and optional field details."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


_RAW_BODY_SCHEMAS: dict[str, dict[str, Any]] = {
    "application/octet-stream": {"type": "string", "format": "binary"},
    "application/json": {"type": "object"},
    "text/plain": {"type": "string"},
}


def raw_body(media_type: str) -> dict[str, Any]:
    """OpenAPI for a route that reads its body itself (a stream, a file): say what it takes."""
    schema = _RAW_BODY_SCHEMAS[media_type]
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def hub_of(request: Request) -> Hub:
    """The Hub this app serves."""
    hub: Hub = request.app.state.hub
    return hub


def principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError(
            "missing bearer token; log in (`gu auth token`) and send Authorization: Bearer <token>"
        )
    return hub_of(request).auth.verify_token(token.strip())


Caller = Annotated[Principal, Depends(principal)]
