"""The hub's relay of the virtual networks' sealed datagrams (``controller.api.vnet``):
in-memory mailboxes per recipient agent, filled by ``POST /v1/vnet/relay`` and emptied by
the recipient's long-polled ``GET``. Used on the API's event loop only. ``close`` wakes
every waiting poll when the hub stops (as the change feed ends its watch streams), so a
shutdown never waits out a poll's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

RELAY_QUEUE = 2048
"""Datagrams the hub holds per recipient agent (the oldest dropped past it)."""


class Relay:
    """Mailboxes of sealed datagrams, per recipient node (see the module doc)."""

    def __init__(self) -> None:
        self.boxes: dict[str, deque[str]] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.closed = False

    def put(self, node: str, datagrams: list[str]) -> None:
        box = self.boxes.setdefault(node, deque(maxlen=RELAY_QUEUE))
        box.extend(datagrams)
        event = self.events.pop(node, None)
        if event is not None:
            event.set()

    async def take(self, node: str, timeout: float) -> list[str]:
        """What waits for ``node``, or what comes within ``timeout`` seconds."""
        box = self.boxes.get(node)
        if not box and not self.closed:
            event = self.events.setdefault(node, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            box = self.boxes.get(node)
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


__all__ = ["RELAY_QUEUE", "Relay"]
