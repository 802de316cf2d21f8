"""Heartbeats written in batches: one store transaction (one fsync) per flush, not per beat.

A heartbeat carries the agent's inventory, usage and period, and the hub's
time of receipt. Writing each one in its own transaction costs an fsync per
beat: 200 beats/s for 1,000 agents at the default period, which is what the
hub's disk and CPU did most under that load. Instead the heartbeat route
``record``s the fields (the newest per provider wins) and answers at once; a
flusher writes everything pending every ``interval`` seconds (0.2 s) in one
transaction, merged into each Provider's current status, so the hub's own
writes there (its conditions) are kept.

What this trades: a heartbeat is visible in the store up to ``interval``
later, and a hub that crashes loses at most that much of them — both harmless
next to the readiness threshold of three missed periods. The last pending
beats are flushed when the hub stops. A Provider deleted meanwhile is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from controller.store import Store

log = logging.getLogger("gu.hub.heartbeats")

FLUSH_INTERVAL = 0.2


class HeartbeatBatcher:
    """Pending heartbeat fields per provider, written by ``flush`` (see the module doc)."""

    def __init__(self, store: Store, interval: float = FLUSH_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}

    def record(self, node: str, fields: dict[str, Any]) -> None:
        """Remember ``fields`` for Provider ``node``'s status until the next flush."""
        with self._lock:
            self._pending[node] = fields

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write everything pending in one transaction; the number of Providers written."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        written = 0
        with self.store.transaction():
            for node, fields in batch.items():
                cur = self.store.try_get("Provider", node)
                if cur is None:
                    continue  # deleted since the beat
                self.store.update_status("Provider", node, {**cur["status"], **fields})
                written += 1
        return written

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``interval`` until ``stop``, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            await self._flush_logged()
        # beats recorded while the last flush ran (stop was set meanwhile) are written here
        await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await asyncio.to_thread(self.flush)
        except Exception:  # the next beats bring fresh values: log and go on
            log.exception("event=heartbeat_flush_failed")
