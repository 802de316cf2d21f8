"""Log-in routes: the challenge, the signed answer for a bearer token, and whoami.

Challenge–response (``controller.auth``): the hub hands out a single-use nonce,
the client signs (hub id, nonce, purpose, expiry) with its Ed25519 key and gets
a short-lived bearer token. The two log-in steps are the only routes besides
``/healthz`` that need no token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from controller.api.common import Caller
from controller.api.deps import Deps
from controller.auth import AuthError

router = APIRouter(tags=["auth"])


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


@router.post("/v1/auth/challenge", response_model=ChallengeResponse)
def challenge(req: ChallengeRequest, d: Deps) -> dict[str, Any]:
    """Step 1 of log-in: a single-use nonce to sign."""
    return d.auth.challenge(req.publicKey, req.purpose)


@router.post("/v1/auth/token", response_model=TokenResponse)
def token(req: TokenRequest, d: Deps) -> dict[str, Any]:
    """Step 2 of log-in: the signed challenge for a short-lived bearer token."""
    if req.purpose != "api":
        # a signature made for another purpose (an agent's enrolment) is no log-in
        raise AuthError(
            f"a bearer token is issued only for purpose 'api', not {req.purpose!r}; "
            "an 'enroll' challenge goes to POST /v1/agents/enroll"
        )
    tok, who = d.auth.issue_token(
        req.publicKey, req.nonce, req.purpose, req.expiry, req.signature, req.ttl
    )
    return {
        "token": tok,
        "expiresIn": int(min(req.ttl or d.auth.token_ttl, d.auth.token_ttl)),
        "role": who.role,
        "name": who.name,
    }


@router.get("/v1/whoami")
def whoami(request: Request, who: Caller, d: Deps) -> dict[str, Any]:
    """The caller's role and name, and when its token expires; for a web UI session also
    the CSRF token its mutating requests must carry."""
    out: dict[str, Any] = {"role": who.role, "name": who.name, "expires": who.expires}
    session = getattr(request.state, "ui_session", None)
    if session is not None:
        out["csrf"] = d.auth.csrf_of(session)
    return out
