"""Join tokens: how a new agent proves the admin let it in.

A join token is random, shown once, and stored only as its sha256 with an
expiry (in the store's meta table), so a leaked database does not leak usable
tokens. It is reusable until it expires, like a Kubernetes bootstrap token, so
one token can enrol a few machines. After enrolment an agent logs in with its
own key and needs no token again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from controller.store import Store

_PREFIX = "jointoken:"
DEFAULT_TTL = 24 * 3600


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_join_token(store: Store, ttl: float = DEFAULT_TTL) -> tuple[str, float]:
    """A new join token and its expiry (epoch seconds)."""
    token = "gujt1_" + secrets.token_urlsafe(24)
    expires = time.time() + ttl
    store.put_meta(_PREFIX + _digest(token), str(expires))
    for key, value in store.meta_items(_PREFIX):  # forget expired ones
        if float(value) < time.time():
            store.delete_meta(key)
    return token, expires


def check_join_token(store: Store, token: str) -> bool:
    """Is ``token`` a join token of this hub that has not expired?"""
    if not token.startswith("gujt1_") or len(token) > 100:
        return False
    want = _PREFIX + _digest(token)
    for key, value in store.meta_items(_PREFIX):
        if hmac.compare_digest(key, want):
            return float(value) >= time.time()
    return False
