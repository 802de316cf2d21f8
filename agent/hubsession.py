"""Talking to the hub: heartbeats, the Placement informer, status, logs and image pulls.

The agent starts every connection (it may sit behind NAT), over one logged-in
``controller.client.Client`` shared by all threads (httpx pools connections;
the client renews its token itself).

- ``HubSession`` wraps the agent's routes: heartbeat, list/watch/get own
  Placements, write a placement's status, upload its log tail, stream an image.
- ``heartbeat_loop``: every period, inventory + usage → ``POST
  /v1/agents/heartbeat``. An unreachable hub is logged and retried with capped
  backoff; the loop never dies of it.
- ``PlacementInformer``: list this node's Placements, then watch from the
  list's resourceVersion; every event goes to a ``PlacementSink`` (the local
  reconcile). Errors reconnect with capped backoff; a 410 (the change log no
  longer reaches back) relists at once. A relist hands the sink the complete
  set, which is how the sink notices placements deleted while it was away.

Why the watch stream is read here and not with ``Client.watch``: that one has
no read timeout, and a half-open TCP connection (a hub host that vanished
from the network) would block it forever. The hub sends a BOOKMARK every
10 s of quiet, so a 35 s read timeout detects a dead stream and reconnects.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol

import httpx

from controller.client import WATCH_READ_TIMEOUT, ApiError, Client, HubUnreachable
from controller.client.workqueue import Backoff
from specs.kinds import Inventory, Usage
from specs.logfmt import kv

log = logging.getLogger("gu.agent.hub")

WATCH_SERVER_TIMEOUT: Final = 300.0
IMAGE_READ_TIMEOUT: Final = 60.0


def _error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
        message = (body.get("error") or {}).get("message") or resp.text
    except (ValueError, AttributeError):
        message = resp.text or resp.reason_phrase
    return ApiError(resp.status_code, message if isinstance(message, str) else json.dumps(message))


HTTP_READ_BYTES: Final = 256 << 10


def tune_http_reads(size: int = HTTP_READ_BYTES) -> None:
    """Have httpcore read responses ``size`` bytes per ``recv`` instead of 64 KiB.

    With 64 KiB reads, receiving was what kept an image pull from hashing
    speed (``bench_security`` image_pull_verify, 512 MiB: 0.87 of hashlib
    with 64 KiB reads, 0.98 with 256 KiB, in one session); small API answers
    cost the same either way (1,000 GET /v1/whoami: 1.1–1.4 s both ways).
    httpcore has no per-client setting for it: this sets its class attribute,
    for every client of this process, and does nothing if that is gone.
    """
    try:
        from httpcore._sync.http11 import HTTP11Connection
    except ImportError:
        return
    if getattr(HTTP11Connection, "READ_NUM_BYTES", size) < size:
        HTTP11Connection.READ_NUM_BYTES = size


class HubSession:
    """The agent's side of the hub API, over one shared, logged-in ``Client``."""

    def __init__(self, client: Client, node_id: str) -> None:
        tune_http_reads()
        self.client = client
        self.node_id = node_id
        self._streams: set[httpx.Response] = set()
        self._streams_lock = threading.Lock()

    def close(self) -> None:
        """Close every connection; open streams first, so a blocked watch or pull ends now."""
        with self._streams_lock:
            streams = list(self._streams)
        for resp in streams:
            # Closing the response does not wake a thread blocked in recv();
            # shutting the socket down does.
            try:
                stream = resp.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception as exc:  # closing under a reader: whatever it says, we are done
                log.debug(kv("stream_close", error=exc))
        self.client.close()

    def _open(self, resp: httpx.Response) -> None:
        with self._streams_lock:
            self._streams.add(resp)

    def _closed(self, resp: httpx.Response) -> None:
        with self._streams_lock:
            self._streams.discard(resp)

    # ------------------------------------------------------------- provider

    def heartbeat(
        self,
        inventory: Inventory,
        usage: Usage,
        period: float | None = None,
        endpoints: list[str] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/agents/heartbeat``; the hub stamps the time itself.

        ``period`` tells the hub how often to expect the next one: it marks the
        provider NotReady after three periods of silence.
        """
        body: dict[str, Any] = {
            "inventory": inventory.model_dump(mode="json"),
            "usage": usage.model_dump(mode="json"),
            "endpoints": endpoints or [],
        }
        if period is not None:
            body["period"] = period
        return dict(self.client.call("POST", "/v1/agents/heartbeat", json=body))

    def vnet_membership(self, network: str) -> dict[str, Any]:
        """A network's keys and members (only to an agent hosting one of them)."""
        return dict(self.client.call("GET", f"/v1/vnet/{network}/membership"))

    def relay_send(self, to: str, datagrams: list[bytes]) -> None:
        """Sealed datagrams for member node ``to``, through the hub's relay."""
        body = {"to": to, "datagrams": [base64.b64encode(d).decode() for d in datagrams]}
        self.client.call("POST", "/v1/vnet/relay", json=body)

    def relay_poll(self, timeout: float) -> list[bytes]:
        """What the hub relays to this agent (waits up to ``timeout`` seconds)."""
        got = self.client.call(
            "GET", "/v1/vnet/relay", params={"timeout": timeout},
            timeout=httpx.Timeout(10.0, read=timeout + 10),
        )  # fmt: skip
        return [base64.b64decode(d) for d in got.get("datagrams") or []]

    # ----------------------------------------------------------- placements

    def list_placements(self) -> tuple[list[dict[str, Any]], int]:
        """This node's Placements (the hub shows an agent only its own) and the list's rv."""
        return self.client.list_at("Placement")

    def get_placement(self, name: str) -> dict[str, Any] | None:
        """One Placement as the hub has it now, or None when it is gone."""
        try:
            return self.client.get("Placement", name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def watch_placements(
        self, resource_version: int, server_timeout: float = WATCH_SERVER_TIMEOUT
    ) -> Iterator[dict[str, Any]]:
        """NDJSON watch of Placements after ``resource_version`` (see the module doc).

        Raises ApiError (410: relist) or HubUnreachable (also on a silent stream).
        """
        params: dict[str, str | int | float] = {
            "resourceVersion": resource_version,
            "kind": "Placement",
            "timeout": server_timeout,
        }
        headers = {"Authorization": f"Bearer {self.client.token()}"}
        timeout = httpx.Timeout(30.0, read=WATCH_READ_TIMEOUT)
        try:
            with self.client.http.stream(
                "GET", "/v1/watch", params=params, headers=headers, timeout=timeout
            ) as resp:
                self._open(resp)
                try:
                    if resp.status_code >= 400:
                        resp.read()
                        raise _error(resp)
                    for line in resp.iter_lines():
                        if line:
                            yield json.loads(line)
                finally:
                    self._closed(resp)
        except httpx.TransportError as exc:
            raise HubUnreachable(0, f"watch: lost the hub at {self.client.hub}: {exc}") from None

    def put_status(
        self, name: str, status: dict[str, Any], resource_version: int | None
    ) -> dict[str, Any]:
        """Replace a placement's status (409 when it changed since ``resource_version``)."""
        return self.client.update_status("Placement", name, status, resource_version)

    def put_logs(self, name: str, data: bytes, run: int = 0) -> None:
        """Upload the tail of a workload's output (the hub keeps the last 1 MiB).

        ``run`` counts restarts in place; the hub keeps the previous run's copy.
        """
        self.client.request("PUT", f"/v1/placements/{name}/logs", content=data, params={"run": run})

    # --------------------------------------------------------------- images

    def fetch_image(self, image_hash: str) -> Iterator[bytes]:
        """Stream ``GET /v1/images/{hash}`` as it arrives (the image cache hashes and batches it)."""
        return self._fetch(f"/v1/images/{image_hash}", "image pull")

    def fetch_blob(self, blob_hash: str) -> Iterator[bytes]:
        """Stream ``GET /v1/blobs/{hash}`` (a placement's input) into the cache."""
        return self._fetch(f"/v1/blobs/{blob_hash}", "input pull")

    def put_outputs(
        self, name: str, files: int, body: Callable[[], Iterable[bytes]]
    ) -> dict[str, Any]:
        """Upload a finished placement's outputs, packed while sent (``body()`` makes the
        stream, again for a retry); the hub's answer ``{hash, size, files}``."""
        answer: dict[str, Any] = self.client.upload(
            "PUT",
            f"/v1/placements/{name}/outputs",
            body,
            params={"files": files},
            headers={"Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(30.0, write=IMAGE_READ_TIMEOUT),
        )
        return answer

    def _fetch(self, path: str, what: str) -> Iterator[bytes]:
        headers = {"Authorization": f"Bearer {self.client.token()}"}
        timeout = httpx.Timeout(30.0, read=IMAGE_READ_TIMEOUT)
        try:
            with self.client.http.stream("GET", path, headers=headers, timeout=timeout) as resp:
                self._open(resp)
                try:
                    if resp.status_code >= 400:
                        resp.read()
                        raise _error(resp)
                    yield from resp.iter_bytes()  # as received: no re-chunking copy
                finally:
                    self._closed(resp)
        except httpx.TransportError as exc:
            raise HubUnreachable(0, f"{what}: lost the hub at {self.client.hub}: {exc}") from None


# ------------------------------------------------------------------ heartbeat


MAX_HEARTBEAT_PERIOD: Final = 300.0
"""The longest heartbeat period an agent takes from its hub (the hub asks at most this)."""


def heartbeat_loop(
    session: HubSession,
    stop: threading.Event,
    period: float,
    inventory: Callable[[], Inventory],
    usage: Callable[[], Usage],
    endpoints: Callable[[], list[str]] | None = None,
) -> None:
    """Heartbeat every ``period`` seconds until ``stop``; failures back off (cap 30 s).

    A hub with a large pool asks for a longer period in its answer (``heartbeat``): the
    agent then beats that often (still reporting ``period``, so that the hub asks for
    less once the pool is smaller)."""
    backoff = Backoff(1.0, 30.0)
    failing = False
    beats = 0
    current = period
    while not stop.is_set():
        try:
            answer = session.heartbeat(
                inventory(), usage(), period, endpoints() if endpoints else None
            )
        except Exception as exc:  # the loop must outlive anything the hub or psutil does
            delay = backoff.next()
            log.warning(kv("heartbeat_failed", retry_in=f"{delay:g}s", error=_short(exc)))
            failing = True
            stop.wait(delay)
            continue
        beats += 1
        if failing or beats == 1:
            log.info(kv("heartbeat_ok", beats=beats))
        failing = False
        backoff.reset()
        asked = answer.get("heartbeat")
        if isinstance(asked, int | float) and not isinstance(asked, bool):
            wanted = max(period, min(float(asked), MAX_HEARTBEAT_PERIOD))
            if wanted != current:
                log.info(kv("heartbeat_period", seconds=f"{wanted:g}", asked_by="hub"))
                current = wanted
        stop.wait(current)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


# ------------------------------------------------------------------ informer


class PlacementSink(Protocol):
    """What the informer feeds: the complete set after a (re)list, then each change."""

    def replace_all(self, placements: list[dict[str, Any]]) -> None:
        """The hub's complete set of this node's placements (after a list)."""
        ...

    def apply_event(self, event_type: str, placement: dict[str, Any]) -> None:
        """One ADDED, MODIFIED or DELETED placement."""
        ...


class PlacementInformer:
    """List + watch of this node's Placements into a ``PlacementSink`` (see the module doc)."""

    def __init__(self, session: HubSession, sink: PlacementSink) -> None:
        self.session = session
        self.sink = sink
        self.relists = 0

    def run(self, stop: threading.Event) -> None:
        """List, then watch, until ``stop``; reconnect with backoff (cap 30 s)."""
        backoff = Backoff(1.0, 30.0)
        rv: int | None = None
        while not stop.is_set():
            try:
                if rv is None:
                    items, rv = self.session.list_placements()
                    self.relists += 1
                    self.sink.replace_all(items)
                    log.info(kv("placements_listed", count=len(items), rv=rv))
                rv = self._follow(rv, stop, backoff)
            except ApiError as exc:
                if stop.is_set():
                    break
                if exc.status == 410:
                    log.info(kv("watch_expired", rv=rv, action="relist"))
                    rv = None
                    continue
                delay = backoff.next()
                log.warning(
                    kv("watch_failed", status=exc.status, retry_in=f"{delay:g}s", error=_short(exc))
                )
                if exc.status != 0:
                    rv = None  # a refusal, not a lost connection: start over from a list
                stop.wait(delay)
            except Exception as exc:  # a bad line, a client closed under us: never die
                if stop.is_set():
                    break
                delay = backoff.next()
                log.warning(kv("watch_failed", retry_in=f"{delay:g}s", error=_short(exc)))
                rv = None
                stop.wait(delay)

    def _follow(self, rv: int, stop: threading.Event, backoff: Backoff) -> int:
        """Apply watch events from ``rv`` until the stream ends; return the rv reached."""
        for event in self.session.watch_placements(rv):
            if stop.is_set():
                break
            backoff.reset()
            etype = event.get("type")
            rv = int(event.get("resourceVersion") or rv)
            if etype == "BOOKMARK":
                continue
            if etype == "ERROR":
                # The log was compacted past us mid-stream: same as a 410.
                raise ApiError(410, str(event.get("message") or "watch expired"))
            obj = event.get("object")
            if isinstance(obj, dict) and etype in ("ADDED", "MODIFIED", "DELETED"):
                self.sink.apply_event(etype, obj)
        return rv


__all__ = [
    "HubSession",
    "PlacementInformer",
    "PlacementSink",
    "heartbeat_loop",
]
