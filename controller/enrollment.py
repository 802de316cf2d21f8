"""Join tokens: how a new agent proves the admin let it in, and which labels it gets.

A join token is random, shown once, and stored only as its sha256 (in the store's
meta table) with its expiry, the **labels** the admin bound to it and how many
**uses** it has left, so a leaked database does not leak usable tokens. The labels
are the provider's trusted labels — the ones ImagePolicy selectors match — so a
machine holding a token cannot claim a pool the admin did not give it; labels an
agent reports itself (``gu agent --label``) are kept apart (``Provider.spec.labels``,
seen by Session selectors as ``self.<key>``) and never satisfy a policy.

Without ``uses`` a token is reusable until it expires, like a Kubernetes bootstrap
token; with ``uses: N`` it enrols N agents and is gone. Tokens are listed by a short
id (the first 12 hex digits of the digest: it names a token without being one) and
can be revoked. After enrolment an agent logs in with its own key and needs no token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from controller.store import Store

_PREFIX = "jointoken:"
DEFAULT_TTL = 24 * 3600
ID_LENGTH = 12


@dataclass(frozen=True)
class JoinToken:
    """What the hub keeps of a join token (never the token itself)."""

    id: str
    expires: float
    labels: dict[str, str] = field(default_factory=dict)
    uses: int | None = None  # left; None: until it expires

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "expires": self.expires, "labels": self.labels, "uses": self.uses}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse(key: str, value: str) -> JoinToken:
    digest = key.removeprefix(_PREFIX)
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):  # written by an older hub: the expiry alone
        return JoinToken(digest[:ID_LENGTH], float(value))
    uses = doc.get("uses")
    return JoinToken(
        digest[:ID_LENGTH],
        float(doc["expires"]),
        {str(k): str(v) for k, v in (doc.get("labels") or {}).items()},
        int(uses) if uses is not None else None,
    )


def _value(token: JoinToken) -> str:
    return json.dumps({"expires": token.expires, "labels": token.labels, "uses": token.uses})


def create_join_token(
    store: Store,
    ttl: float = DEFAULT_TTL,
    labels: dict[str, str] | None = None,
    uses: int | None = None,
) -> tuple[str, JoinToken]:
    """A new join token (shown once) and what the hub keeps of it."""
    token = "gujt1_" + secrets.token_urlsafe(24)
    digest = _digest(token)
    kept = JoinToken(digest[:ID_LENGTH], time.time() + ttl, dict(labels or {}), uses)
    with store.transaction():
        store.put_meta(_PREFIX + digest, _value(kept))
        _sweep(store)
    return token, kept


def _sweep(store: Store) -> None:
    """Forget expired tokens."""
    now = time.time()
    for key, value in store.meta_items(_PREFIX):
        if _parse(key, value).expires < now:
            store.delete_meta(key)


def list_join_tokens(store: Store) -> list[JoinToken]:
    """The live tokens, soonest to expire first."""
    now = time.time()
    found = [_parse(k, v) for k, v in store.meta_items(_PREFIX)]
    return sorted((t for t in found if t.expires >= now), key=lambda t: t.expires)


def revoke_join_token(store: Store, token_id: str) -> bool:
    """Delete the token whose id is ``token_id``; whether there was one."""
    if len(token_id) != ID_LENGTH:
        return False
    with store.transaction():
        for key, _ in store.meta_items(_PREFIX + token_id):
            store.delete_meta(key)
            return True
    return False


def redeem_join_token(store: Store, token: str) -> JoinToken | None:
    """Spend one use of ``token``: what it grants, or None if it is unknown, expired,
    revoked or spent (atomic: two agents racing for a token's last use get one each)."""
    if not token.startswith("gujt1_") or len(token) > 100:
        return None
    want = _PREFIX + _digest(token)
    with store.transaction():
        for key, value in store.meta_items(_PREFIX):
            if not hmac.compare_digest(key, want):
                continue
            found = _parse(key, value)
            if found.expires < time.time() or found.uses == 0:
                store.delete_meta(key)
                return None
            if found.uses is not None:
                left = JoinToken(found.id, found.expires, found.labels, found.uses - 1)
                if left.uses:
                    store.put_meta(key, _value(left))
                else:
                    store.delete_meta(key)
            return found
    return None
