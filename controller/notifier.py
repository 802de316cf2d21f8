"""Wakes the asyncio waiters of the API (watch streams) when the store commits.

The store calls back on the writer's thread after a commit; the notifier hops
onto the loop and swaps in a fresh ``asyncio.Event``, so every waiter wakes
once per commit batch and then reads the change log itself (the log, not the
wake-up, is the truth: a missed wake-up costs at most one wait timeout).
"""

from __future__ import annotations

import asyncio
import contextlib

from controller.store import Store


class ChangeNotifier:
    """One wake-up per store commit for every waiting watch stream."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rv = 0
        self.closed = False

    def attach(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        """Follow ``store``'s commits, waking waiters on ``loop``."""
        self._loop = loop
        self.rv = store.resource_version
        store.subscribe(self._from_thread)

    def _from_thread(self, rv: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fire, rv)

    def _fire(self, rv: int) -> None:
        self.rv = max(self.rv, rv)
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """The hub is stopping: wake every waiter now; watch streams see ``closed`` and end."""
        self.closed = True
        self._fire(self.rv)

    async def wait(self, after: int, timeout: float) -> int:
        """Wait until the store's rv passes ``after`` or ``timeout``; returns the rv seen."""
        if self.rv > after or self.closed:
            return self.rv
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        return self.rv


__all__ = ["ChangeNotifier"]
