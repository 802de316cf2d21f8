"""The hub's relay of the virtual networks' sealed datagrams (``controller.api.vnet``):
in-memory mailboxes per recipient agent, filled by ``POST /v1/vnet/relay`` and emptied by
the recipient's long-polled ``GET``. Used on the API's event loop only. ``close`` wakes
every waiting poll when the hub stops (as the change feed ends its watch streams), so a
shutdown never waits out a poll's timeout.

Hubs sharing a store (``SharedRelay``) pass what they relay on to each other through
PostgreSQL's ``NOTIFY`` (the recipient may poll another hub than the sender posts to);
a hub keeps a datagram from another hub only for an agent that polled it in the last
minute. Still best effort, as UDP is: what the guests send over TCP is sent again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gu.hub.relay")

RELAY_QUEUE = 2048
"""Datagrams the hub holds per recipient agent (the oldest dropped past it)."""
POLLED_RECENTLY = 60.0
CHANNEL = "gu_relay"
NOTIFY_BYTES = 7000
"""What one notification carries at most (PostgreSQL's limit is 8,000 bytes)."""


class Relay:
    """Mailboxes of sealed datagrams, per recipient node (see the module doc)."""

    def __init__(self) -> None:
        self.boxes: dict[str, deque[str]] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.polled: dict[str, float] = {}
        self.closed = False
        self.publish: Callable[[str, list[str]], None] | None = None
        """Set on a shared store: hands a local put on to the other hubs (from a thread)."""

    def put(self, node: str, datagrams: list[str], from_peer: bool = False) -> None:
        if from_peer and time.monotonic() - self.polled.get(node, -POLLED_RECENTLY) >= (
            POLLED_RECENTLY
        ):
            return  # that agent polls another hub
        box = self.boxes.setdefault(node, deque(maxlen=RELAY_QUEUE))
        box.extend(datagrams)
        event = self.events.pop(node, None)
        if event is not None:
            event.set()
        if self.publish is not None and not from_peer:
            asyncio.get_running_loop().run_in_executor(None, self.publish, node, datagrams)

    async def take(self, node: str, timeout: float) -> list[str]:
        """What waits for ``node``, or what comes within ``timeout`` seconds."""
        self.polled[node] = time.monotonic()
        box = self.boxes.get(node)
        if not box and not self.closed:
            event = self.events.setdefault(node, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            box = self.boxes.get(node)
        self.polled[node] = time.monotonic()
        out = list(box or ())
        if box:
            box.clear()
        return out

    def close(self) -> None:
        """The hub is stopping: every waiting poll answers now."""
        self.closed = True
        for event in self.events.values():
            event.set()
        self.events.clear()


class SharedRelay:
    """The relay between the hubs of one PostgreSQL store (see the module doc)."""

    def __init__(self, url: str, instance: str, relay: Relay) -> None:
        self.url = url
        self.instance = instance
        self.relay = relay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._sender: Any = None  # (a psycopg connection, made on the first publish)
        self._thread = threading.Thread(target=self._listen, name="gu-relay-listen", daemon=True)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.relay.publish = self.publish
        self._thread.start()

    def publish(self, node: str, datagrams: list[str]) -> None:
        """Tell the other hubs (one notification per ≤ 7,000 bytes of datagrams)."""
        import psycopg

        batches: list[list[str]] = [[]]
        size = 0
        for d in datagrams:
            if batches[-1] and size + len(d) > NOTIFY_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(d)
            size += len(d)
        with self._send_lock:
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                for batch in batches:
                    payload = json.dumps({"from": self.instance, "to": node, "d": batch})
                    self._sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except psycopg.Error as exc:
                log.debug("event=relay_publish_failed error=%s", exc)
                with contextlib.suppress(Exception):
                    if self._sender is not None:
                        self._sender.close()
                self._sender = None

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._deliver(note.payload)
            except psycopg.Error:
                self._stop.wait(0.5)

    def _deliver(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
            if msg.get("from") == self.instance:
                return
            node, datagrams = str(msg["to"]), [str(d) for d in msg["d"]]
            for d in datagrams:
                base64.b64decode(d, validate=True)  # (what a hub relays is base64)
        except (ValueError, KeyError, TypeError):
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.relay.put, node, datagrams, True)

    def close(self) -> None:
        self._stop.set()
        with self._send_lock:
            if self._sender is not None:
                with contextlib.suppress(Exception):
                    self._sender.close()
        if self._thread.is_alive():
            self._thread.join(2)


__all__ = ["RELAY_QUEUE", "Relay", "SharedRelay"]
