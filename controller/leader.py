"""Who runs the reconcilers: one hub at a time, elected through the shared store.

Any hub serves the whole API; the reconcile engine (and the sweeps that go with it)
runs on one of them, the leader, as kube-controller-manager and Nomad's leader do.
On the embedded store there is one hub, and it leads for as long as it runs. On a
shared store (PostgreSQL) the hubs hold an election through a lease row
(``PostgresStore.lease_*``): no consensus protocol of our own, PostgreSQL decides.

- A hub that is not leading tries to take the lease every ``RETRY_SECONDS``; it gets
  it once the holder's lease ran out (``TTL_SECONDS`` after its last renewal), or at
  once if the holder gave it up at a clean stop. Taking it moves the lease's epoch.
- The leader renews every ``RENEW_SECONDS``. It counts its lease as its own only until
  ``TTL_SECONDS - MARGIN_SECONDS`` after the renewal it last *sent* (its own monotonic
  clock: a hub that was paused or cut off knows, when it wakes, that its time is up), and
  stops its term then, or when a renewal is refused.
- Every write the term's reconcilers make carries the term's epoch (``FENCE``); the
  store refuses it once the epoch has moved (``Fenced``). So a leader that was paused
  past its lease and wakes in the middle of a reconcile pass cannot write its result
  over its successor's: the fence, not its clock, is what makes that safe.

Failover takes at most ``TTL_SECONDS + RETRY_SECONDS`` (6 s) after the leader's last
renewal, then the new leader's first resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

from controller.store import Store, StoreError
from specs.logfmt import kv

log = logging.getLogger("gu.hub.leader")

TTL_SECONDS = 5.0
RENEW_SECONDS = 1.0
RETRY_SECONDS = 1.0
MARGIN_SECONDS = 1.0
"""Stop a term this long before the lease would run out by the leader's own clock."""

Term = Callable[[int | None, asyncio.Event], Coroutine[Any, Any, None]]
"""``term(epoch, ended)``: lead (epoch None: no election) until ``ended`` is set."""


@runtime_checkable
class LeaseStore(Protocol):
    """A store that can hold an election (``controller.store.postgres.PostgresStore``)."""

    def lease_acquire(self, holder: str, ttl: float) -> int | None: ...

    def lease_renew(self, holder: str, epoch: int, ttl: float) -> bool: ...

    def lease_release(self, holder: str, epoch: int) -> None: ...


class Leadership:
    """This hub's part in the election (see the module doc)."""

    def __init__(self, store: Store, holder: str) -> None:
        self.store = store
        self.holder = holder
        self.epoch: int | None = None
        """The epoch of the term this hub leads now (None: not leading, or no election)."""
        self.leading = False
        self.terms = 0

    @property
    def elected(self) -> bool:
        """Whether this store holds elections (several hubs may share it)."""
        return isinstance(self.store, LeaseStore)

    async def run(self, term: Term, stop: asyncio.Event) -> None:
        """Lead whenever this hub may, running ``term`` for each term, until ``stop``."""
        if not self.elected:
            while not stop.is_set():
                self.leading = True
                self.terms += 1
                try:
                    await term(None, stop)
                finally:
                    self.leading = False
                if not stop.is_set():  # the engine failed: a new one, after a breath
                    log.error(kv("term_ended", action="starting the reconcilers again in 1 s"))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
            return
        assert isinstance(self.store, LeaseStore)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                epoch = await asyncio.to_thread(self.store.lease_acquire, self.holder, TTL_SECONDS)
            except StoreError as exc:
                log.warning(kv("leader_campaign_failed", error=exc))
                epoch = None
            if epoch is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
                continue
            await self._lead(term, epoch, sent, stop)

    async def _lead(self, term: Term, epoch: int, sent: float, stop: asyncio.Event) -> None:
        assert isinstance(self.store, LeaseStore)
        self.epoch, self.leading = epoch, True
        self.terms += 1
        log.info(kv("leader_elected", holder=self.holder, epoch=epoch))
        ended = asyncio.Event()
        running = asyncio.create_task(term(epoch, ended), name=f"gu-term-{epoch}")
        why = "stopping"
        try:
            valid_until = sent + TTL_SECONDS - MARGIN_SECONDS
            while not stop.is_set() and not running.done():
                wait = max(0.0, min(RENEW_SECONDS, valid_until - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    break
                if time.monotonic() >= valid_until:
                    why = "lease ran out before a renewal came back"
                    break
                sent = time.monotonic()
                try:
                    kept = await asyncio.to_thread(
                        self.store.lease_renew, self.holder, epoch, TTL_SECONDS
                    )
                except StoreError as exc:
                    log.warning(kv("leader_renew_failed", epoch=epoch, error=exc))
                    continue  # try again while the lease lasts
                if not kept:
                    why = "another hub holds the lease"
                    break
                valid_until = sent + TTL_SECONDS - MARGIN_SECONDS
        finally:
            ended.set()
            self.leading = False
            with contextlib.suppress(Exception):
                await running
            self.epoch = None
            if stop.is_set():
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(self.store.lease_release, self.holder, epoch)
                log.info(kv("leader_released", holder=self.holder, epoch=epoch))
            else:
                log.warning(kv("leader_lost", holder=self.holder, epoch=epoch, reason=why))


__all__ = ["TTL_SECONDS", "Leadership", "LeaseStore", "Term"]
