"""The public API client of the hub, used by the CLI, the agent and scripts.

It logs in by challenge–response with an Ed25519 key: ask the hub for a
single-use nonce, sign ``(hub id, nonce, purpose, expiry)``, trade the
signature for a short-lived bearer token. The token is kept in memory only and
renewed before it expires (or once after a 401, e.g. when the hub restarted).

Routes (all JSON; every one but ``/healthz`` needs the token)::

    POST /v1/auth/challenge            {publicKey, purpose} -> {nonce, hubId, expiresAt}
    POST /v1/auth/token                {publicKey, nonce, purpose, expiry, signature}
    GET  /v1/{plural}?labelSelector=   -> {items, resourceVersion}
    GET  /v1/{plural}/{name}           -> object
    DELETE /v1/{plural}/{name}
    PUT  /v1/{plural}/{name}/status    {status, resourceVersion?}
    GET  /v1/{plural}/{name}/events    -> {items}
    POST /v1/apply                     {objects, applySet, prune, dryRun}
    GET  /v1/watch?resourceVersion=N   -> NDJSON stream of {type, object, resourceVersion}
"""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.config import load_config
from specs.identity import LOGIN_PAYLOAD_TYPE, load_private_key, login_body, public_key_str, sign
from specs.kinds import plural, resolve_kind

WATCH_READ_TIMEOUT: Final = 35.0
"""Seconds of silence after which a watch counts the hub as gone (it sends a BOOKMARK every 10 s)."""


class ApiError(Exception):
    """The hub refused a request; ``status`` is the HTTP status, ``details`` any field errors."""

    def __init__(
        self, status: int, message: str, details: builtins.list[dict[str, Any]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


class HubUnreachable(ApiError):
    """No answer from the hub at all."""


def error_from(resp: httpx.Response) -> ApiError:
    """The ApiError an error answer of the hub stands for (its message and details)."""
    return _error_from(resp)


def _error_from(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
        err = body.get("error") or {}
        message = err.get("message") or body.get("detail") or resp.text
        details = err.get("details") or []
    except (ValueError, AttributeError):
        message, details = resp.text or resp.reason_phrase, []
    if not isinstance(message, str):
        message = json.dumps(message)
    return ApiError(resp.status_code, message, details)


def path_for(kind: str, name: str | None = None) -> str:
    """``/v1/sessions`` or ``/v1/sessions/NAME`` for any spelling of a kind."""
    base = "/v1/" + plural(resolve_kind(kind)).lower()
    return f"{base}/{name}" if name else base


def hub_urls(hub: str | Iterable[str]) -> builtins.list[str]:
    """The hub URLs of ``hub``: one URL, several separated by commas, or a list of them."""
    parts = hub.split(",") if isinstance(hub, str) else [u for h in hub for u in h.split(",")]
    urls = [u.strip().rstrip("/") for u in parts if u.strip()]
    if not urls:
        raise ValueError("no hub URL given")
    return urls


class Client:
    """A logged-in connection to a hub (thread-safe).

    Several hubs of one cluster (``hub`` a list, or URLs separated by commas) are tried
    in turn: a request that cannot reach the current one goes to the next, which stays
    current. Their tokens are interchangeable (the hubs share their key); a log-in
    whose challenge went to another hub is simply done again."""

    def __init__(
        self,
        hub: str | Iterable[str],
        key: Ed25519PrivateKey,
        *,
        purpose: str = "api",
        timeout: float = 30.0,
        token_ttl: int | None = None,
    ) -> None:
        self.hubs = hub_urls(hub)
        self._current = 0
        self.key = key
        self.public_key = public_key_str(key)
        self.purpose = purpose
        self.token_ttl = token_ttl
        self._token: str | None = None
        self._token_exp = 0.0
        self._lock = threading.Lock()
        self.http = httpx.Client(base_url=self.hubs[0], timeout=timeout)

    @property
    def hub(self) -> str:
        """The hub URL requests go to now."""
        return self.hubs[self._current]

    def _next_hub(self, failed: str) -> None:
        """The hub at ``failed`` did not answer: use the next one (once per failure)."""
        with self._lock:
            if self.hubs[self._current] != failed:
                return  # another thread moved on already
            self._current = (self._current + 1) % len(self.hubs)
            self.http.base_url = httpx.URL(self.hubs[self._current])

    def _send(
        self, method: str, path: str, body: Callable[[], Any] | None = None, **kw: Any
    ) -> httpx.Response:
        """One request to the current hub, then each other hub in turn while none can be
        reached (``body()`` makes a streamed body anew for each try)."""
        last: Exception | None = None
        for _ in range(len(self.hubs)):
            at = self.hub
            try:
                if body is not None:
                    kw["content"] = body()
                return self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                last = exc
                if len(self.hubs) > 1:
                    self._next_hub(at)
        where = self.hub if len(self.hubs) == 1 else "any of " + ", ".join(self.hubs)
        raise HubUnreachable(0, f"cannot reach the hub at {where}: {last}")

    @classmethod
    def from_config(cls, config: str | Path | None = None, context: str | None = None) -> Client:
        """A client for the current (or named) context of the client config."""
        ctx = load_config(config).context(context)
        return cls(ctx.hub, load_private_key(Path(ctx.key).expanduser()))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ auth

    def login(self) -> str:
        """Challenge–response log-in; returns a fresh bearer token."""
        for attempt in range(2):
            try:
                return self._login()
            except ApiError as exc:
                # (the challenge and the answer went to two hubs, one failing over)
                if attempt or exc.status != 401 or len(self.hubs) == 1:
                    raise
        raise AssertionError("unreachable")

    def _login(self) -> str:
        chal = self._raw(
            "POST",
            "/v1/auth/challenge",
            json={"publicKey": self.public_key, "purpose": self.purpose},
        )
        expiry = int(time.time()) + 60
        body = login_body(chal["hubId"], chal["nonce"], self.purpose, expiry)
        req: dict[str, Any] = {
            "publicKey": self.public_key,
            "nonce": chal["nonce"],
            "purpose": self.purpose,
            "expiry": expiry,
            "signature": sign(self.key, LOGIN_PAYLOAD_TYPE, body),
        }
        if self.token_ttl:
            req["ttl"] = self.token_ttl
        tok = self._raw("POST", "/v1/auth/token", json=req)
        self._token = tok["token"]
        self._token_exp = time.time() + float(tok["expiresIn"])
        return str(tok["token"])

    def token(self) -> str:
        """A valid token, logging in again when the current one is near its end."""
        with self._lock:
            if self._token is None or time.time() > self._token_exp - 30:
                return self.login()
            return self._token

    def _raw(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._send(method, path, **kw)
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp.json()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """An authenticated request; logs in again once on 401. Raises ApiError on ≥ 400.
        (A streamed body cannot be sent twice: ``upload`` makes it anew for the retry.)"""
        extra = dict(kw.pop("headers", None) or {})
        for attempt in range(2):
            headers = {**extra, "Authorization": f"Bearer {self.token()}"}
            resp = self._send(method, path, headers=headers, **kw)
            if resp.status_code == 401 and attempt == 0:
                with self._lock:
                    self._token = None
                continue
            if resp.status_code >= 400:
                raise _error_from(resp)
            return resp
        raise AssertionError("unreachable")

    def upload(self, method: str, path: str, body: Callable[[], Iterable[bytes]], **kw: Any) -> Any:
        """An authenticated upload of a streamed body made by ``body()`` — made again for
        the retry after a 401, so the hub never gets a body cut short; the JSON answer."""
        extra = dict(kw.pop("headers", None) or {})
        for attempt in range(2):
            headers = {**extra, "Authorization": f"Bearer {self.token()}"}
            resp = self._send(method, path, body=body, headers=headers, **kw)
            if resp.status_code == 401 and attempt == 0:
                with self._lock:
                    self._token = None
                continue
            if resp.status_code >= 400:
                raise _error_from(resp)
            return resp.json()
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """``request`` and decode the JSON answer."""
        return self.request(method, path, **kw).json()

    # --------------------------------------------------------------- objects

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(self.call("GET", path_for(kind, name)))

    def list(self, kind: str, selector: str | None = None) -> builtins.list[dict[str, Any]]:
        """Objects of ``kind`` (``selector``: ``k=v,k2`` labels)."""
        return self.list_at(kind, selector)[0]

    def list_at(
        self, kind: str, selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """Objects of ``kind`` and the resourceVersion the list was taken at (to watch from)."""
        params = {"labelSelector": selector} if selector else None
        answer = self.call("GET", path_for(kind), params=params)
        return list(answer["items"]), int(answer.get("resourceVersion") or 0)

    def apply(
        self,
        objects: builtins.list[dict[str, Any]],
        *,
        apply_set: str | None = None,
        prune: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Atomic batch apply; ``{"results": [{kind, name, action, ...}], "resourceVersion"}``."""
        body = {"objects": objects, "applySet": apply_set, "prune": prune, "dryRun": dry_run}
        return dict(self.call("POST", "/v1/apply", json=body))

    def delete(self, kind: str, name: str) -> dict[str, Any]:
        return dict(self.call("DELETE", path_for(kind, name)))

    def update_status(
        self, kind: str, name: str, status: dict[str, Any], resource_version: int | None = None
    ) -> dict[str, Any]:
        body = {"status": status, "resourceVersion": resource_version}
        return dict(self.call("PUT", path_for(kind, name) + "/status", json=body))

    def events(self, kind: str, name: str) -> builtins.list[dict[str, Any]]:
        return list(self.call("GET", path_for(kind, name) + "/events")["items"])

    def watch(
        self,
        resource_version: int = 0,
        *,
        kinds: builtins.list[str] | None = None,
        timeout: float | None = None,
        read_timeout: float = WATCH_READ_TIMEOUT,
    ) -> Iterator[dict[str, Any]]:
        """Stream change events after ``resource_version`` (``{type, object, resourceVersion}``).

        ``timeout`` ends the stream server-side after that many seconds; BOOKMARK
        events (``object`` None) carry the rv reached while nothing changed. A
        hub silent for ``read_timeout`` seconds (no event, no bookmark) raises
        ``HubUnreachable``, so a dead connection never hangs the caller.
        """
        params: dict[str, Any] = {"resourceVersion": resource_version}
        if kinds:
            params["kind"] = ",".join(resolve_kind(k) for k in kinds)
        if timeout is not None:
            params["timeout"] = timeout
        headers = {"Authorization": f"Bearer {self.token()}"}
        try:
            with self.http.stream(
                "GET",
                "/v1/watch",
                params=params,
                headers=headers,
                timeout=httpx.Timeout(30.0, read=read_timeout),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_from(resp)
                for line in resp.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            at = self.hub
            if len(self.hubs) > 1:  # the caller watches again: on the next hub
                self._next_hub(at)
            raise HubUnreachable(0, f"watch: lost the hub at {at}: {exc}") from None
