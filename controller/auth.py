"""Log-in by challenge–response, and the short-lived bearer tokens it hands out.

Flow: a client asks ``challenge(publicKey, purpose)`` and gets a random,
single-use nonce that lives ``nonce_ttl`` seconds. It signs the DSSE encoding
of ``(hub id, nonce, purpose, expiry)`` with its Ed25519 key and sends it to
``issue_token``. The hub checks, in this order: the nonce exists, was issued to
that key for that purpose and is consumed now (a replay finds nothing); the
signed expiry is in the near future; the signature verifies under the key; the
key belongs to a principal (admin, App, or enrolled agent). Only then does it
issue a token.

Tokens are ``gu1.<payload>.<mac>``: an HMAC-SHA256, under a key derived from
the hub's private key (HKDF), over a small JSON payload (role, name, key,
expiry, id). Checking one costs an HMAC and a JSON parse: no store read on the
hot path. The hub keeps no client secret at rest; a key removed from its App
cannot log in again, and its tokens die with their short lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from specs.identity import LOGIN_PAYLOAD_TYPE, login_body, node_id, public_key_str, verify

Role = Literal["admin", "app", "agent", "metrics"]
_PREFIX = "gu1"


class AuthError(Exception):
    """Authentication failed (HTTP 401). The message never contains the token."""

    status = 401


class Forbidden(Exception):
    """Authenticated, but not allowed (HTTP 403); the message names the missing permission."""

    status = 403


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``role`` and ``name`` (admin name, App name, or node id)."""

    role: Role
    name: str
    key: str = ""
    expires: float = 0.0

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


@dataclass
class _Nonce:
    public_key: str
    purpose: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Nonces, signature checks and tokens for one hub (thread-safe)."""

    def __init__(
        self,
        hub_key: Ed25519PrivateKey,
        resolve: Callable[[str, str], Principal | None],
        *,
        token_ttl: int = 900,
        nonce_ttl: int = 60,
        max_pending: int = 100_000,
    ) -> None:
        """``resolve(public_key, purpose)`` maps a verified key to its principal, or None."""
        self.hub_public_key = public_key_str(hub_key)
        self.hub_id = node_id(self.hub_public_key)
        self.token_ttl = token_ttl
        self.nonce_ttl = nonce_ttl
        self.max_pending = max_pending
        self._resolve = resolve
        raw = hub_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self._mac_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"gu token v1"
        ).derive(raw)
        self._nonces: dict[str, _Nonce] = {}
        self._lock = threading.Lock()
        #: (role, name, key) → when it was revoked: a token of it issued before is refused
        self._revoked: dict[tuple[str, str, str], float] = {}
        self._persist: Callable[[dict[tuple[str, str, str], float]], None] | None = None

    # ------------------------------------------------------------ revocation

    def load_revocations(
        self,
        revoked: dict[tuple[str, str, str], float],
        persist: Callable[[dict[tuple[str, str, str], float]], None] | None = None,
    ) -> None:
        """Start from ``revoked`` (kept by the hub across restarts: tokens outlive them);
        ``persist(revoked)`` is called with the new table after each revocation."""
        with self._lock:
            self._revoked = self._still_needed(revoked, time.time())
        self._persist = persist

    def merge_revocations(self, revoked: dict[tuple[str, str, str], float]) -> None:
        """Add revocations another hub of the cluster made (read from the shared store)."""
        with self._lock:
            merged = dict(self._revoked)
            for key, when in revoked.items():
                merged[key] = max(when, merged.get(key, when))
            self._revoked = self._still_needed(merged, time.time())

    def _still_needed(
        self, table: dict[tuple[str, str, str], float], now: float
    ) -> dict[tuple[str, str, str], float]:
        """The revocations that can still name a live token (older ones: all expired)."""
        cutoff = now - self.token_ttl - 60
        return {k: t for k, t in table.items() if t >= cutoff}

    def revoke(self, role: str, name: str, key: str) -> None:
        """Refuse from now on every token of this principal issued until now (a key
        removed from an App, a deleted Provider): at once, not at their expiry."""
        now = time.time()
        with self._lock:
            self._revoked[(role, name, key)] = now
            self._revoked = self._still_needed(self._revoked, now)
            table = dict(self._revoked)
        if self._persist is not None:
            self._persist(table)

    # ------------------------------------------------------------ log-in

    def challenge(self, public_key: str, purpose: str) -> dict[str, object]:
        """A fresh single-use nonce for ``public_key`` and ``purpose``."""
        now = time.time()
        nonce = _b64(secrets.token_bytes(24))
        with self._lock:
            if len(self._nonces) >= self.max_pending:
                self._expire(now)
                if len(self._nonces) >= self.max_pending:
                    raise AuthError("too many log-ins in flight; try again in a minute")
            self._nonces[nonce] = _Nonce(public_key, purpose, now + self.nonce_ttl)
        return {
            "nonce": nonce,
            "hubId": self.hub_id,
            "hubPublicKey": self.hub_public_key,
            "expiresIn": self.nonce_ttl,
        }

    def _expire(self, now: float) -> None:
        for key in [k for k, n in self._nonces.items() if n.expires < now]:
            del self._nonces[key]

    def issue_token(
        self,
        public_key: str,
        nonce: str,
        purpose: str,
        expiry: int,
        signature: str,
        ttl: int | None = None,
    ) -> tuple[str, Principal]:
        """Check a signed challenge and return ``(token, principal)``; raises AuthError."""
        self.verify_challenge(public_key, nonce, purpose, expiry, signature)
        principal = self._resolve(public_key, purpose)
        if principal is None:
            raise AuthError("this key belongs to no admin, App or enrolled agent of this hub")
        life = min(ttl or self.token_ttl, self.token_ttl)
        return self.make_token(principal, life), principal

    def verify_challenge(
        self, public_key: str, nonce: str, purpose: str, expiry: int, signature: str
    ) -> None:
        """Consume the nonce and check the signed challenge; raises AuthError."""
        now = time.time()
        with self._lock:
            pending = self._nonces.pop(nonce, None)  # consumed even if the rest fails
        if pending is None or pending.expires < now:
            raise AuthError("unknown, expired or already used nonce; ask for a new challenge")
        if pending.public_key != public_key or pending.purpose != purpose:
            raise AuthError("the nonce was issued for another key or purpose")
        if not now - 5 <= expiry <= now + 300:
            raise AuthError("the signed expiry must lie within the next 5 minutes")
        body = login_body(self.hub_id, nonce, purpose, expiry)
        if not verify(public_key, LOGIN_PAYLOAD_TYPE, body, signature):
            raise AuthError("signature does not verify for this hub, nonce and key")

    # ------------------------------------------------------------ tokens

    def make_token(self, principal: Principal, ttl: float, *, use: str = "api") -> str:
        """A token for ``principal`` valid for ``ttl`` seconds; ``use`` ``ui``: a web UI
        session cookie, which is no bearer token (and a bearer token no cookie)."""
        payload: dict[str, object] = {
            "r": principal.role,
            "n": principal.name,
            "k": principal.key,
            "exp": round(time.time() + ttl, 3),
            "iat": round(time.time(), 3),
            "id": _b64(secrets.token_bytes(9)),
        }
        if use != "api":
            payload["use"] = use
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self._mac_key, f"{_PREFIX}.{body}".encode(), hashlib.sha256).digest()
        return f"{_PREFIX}.{body}.{_b64(mac)}"

    def csrf_of(self, session: str) -> str:
        """The CSRF token that goes with a UI session cookie (an HMAC of it): the page
        reads it from ``/v1/whoami`` and sends it as ``X-CSRF-Token`` on every mutating
        request, which a cross-site form or fetch cannot."""
        mac = hmac.new(self._mac_key, b"csrf." + session.encode(), hashlib.sha256)
        return _b64(mac.digest())

    def verify_token(self, token: str, *, use: str = "api") -> Principal:
        """The principal of a valid token made for ``use``; raises AuthError for a bad or
        expired one."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise AuthError("malformed bearer token; get one with `gu auth token`")
        want = hmac.new(self._mac_key, f"{_PREFIX}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            got = _unb64(parts[2])
            payload = json.loads(_unb64(parts[1])) if hmac.compare_digest(want, got) else None
        except (ValueError, json.JSONDecodeError):
            payload = None
        if not isinstance(payload, dict):
            raise AuthError("invalid bearer token (not issued by this hub)")
        if payload.get("use", "api") != use:
            raise AuthError(
                "a web UI session is no bearer token, nor a bearer token a UI session"
                if use == "api"
                else "invalid UI session; run `gu ui` for a log-in link"
            )
        if float(payload["exp"]) < time.time():
            if use == "ui":
                raise AuthError("UI session expired; run `gu ui` for a new log-in link")
            raise AuthError("bearer token expired; log in again")
        who = Principal(payload["r"], payload["n"], payload.get("k", ""), float(payload["exp"]))
        revoked = self._revoked.get((who.role, who.name, who.key))
        if revoked is not None and float(payload.get("iat", 0)) <= revoked:
            raise AuthError(
                f"bearer token revoked: the key of {who} was removed from this hub "
                "(an App's publicKeys, or its Provider deleted)"
            )
        return who


# ------------------------------------------------------------------ web UI


class LoginLinks:
    """One-time codes for the web UI's log-in links (``gu ui``): each works once, within
    ``ttl`` seconds, and only its SHA-256 is kept (in memory: a hub restart voids them)."""

    def __init__(self, ttl: float = 60.0, max_pending: int = 1000) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self._codes: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def create(self, who: Principal) -> str:
        """A fresh code that logs its bearer in as ``who``."""
        now = time.time()
        code = _b64(secrets.token_bytes(32))
        with self._lock:
            for key in [k for k, (_, exp) in self._codes.items() if exp < now]:
                del self._codes[key]
            if len(self._codes) >= self.max_pending:
                raise AuthError("too many UI log-in links pending; try again in a minute")
            self._codes[_digest(code)] = (who, now + self.ttl)
        return code

    def redeem(self, code: str) -> Principal:
        """The principal of a valid code, which is used up; AuthError otherwise."""
        with self._lock:
            found = self._codes.pop(_digest(code), None)
        if found is None or found[1] < time.time():
            raise AuthError(
                "this log-in link is wrong, already used or expired (a link works once, "
                f"within {int(self.ttl)} s): run `gu ui` for a new one"
            )
        return found[0]


class MetricsToken:
    """The read-only token Prometheus scrapes ``/metrics`` with: random, shown once, kept
    only as its SHA-256 (in the store's meta table, so it survives restarts)."""

    PREFIX = "gum_"

    def __init__(self, digest: str | None = None) -> None:
        self.digest = digest

    def new(self) -> tuple[str, str]:
        """(a new token, its digest to keep); the old one stops working."""
        token = self.PREFIX + _b64(secrets.token_bytes(32))
        self.digest = _digest(token)
        return token, self.digest

    def check(self, token: str) -> Principal:
        if self.digest is None or not hmac.compare_digest(_digest(token), self.digest):
            raise AuthError("invalid metrics token; make one with `gu hub metrics-token -o FILE`")
        return Principal("metrics", "metrics")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
