"""The queue of Sessions waiting for capacity: highest priority first, then oldest.

Every Session pass runs under the ``ClusterState`` lock, so passes are already
serial; what the queue adds is *order*. A Session that waits (an unbound
placement, or a preempted one waiting to resume) leaves a :class:`Waiter` here
with its key ``(-priority, creationTimestamp, name)`` and a ``fits(nodes)``
test. Before a pass binds, resumes or preempts anything it asks :meth:`ahead`:
if a Session ahead of it could use the capacity now, the pass yields (it
waits with ``waiting: N sessions of higher priority ahead`` and the one ahead
is queued at once), so capacity freed by a finished placement goes to the most
important, then the oldest, waiting Session — no starvation among equals.

Cost: a Session ahead that cannot fit is remembered as such for the current
``capacity_epoch`` (the ``ClusterState`` counter that moves only when capacity
is given back), so each waiting Session is tested at most once per freeing,
not once per pass of every Session behind it; and it leaves the epoch's list of
*candidates* (the waiters not yet seen not to fit), so a pass walks only those
ahead of it, not every waiting Session again (10,000 Sessions waiting for
providers made each pass walk all that were ahead: O(waiting) a pass). Usage-only
heartbeats do not move the epoch: a Session that fits only because a provider's
free memory grew is found by its own periodic retry.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.scheduler import RankedNodes

Key = tuple[int, str, str]  # (-priority, creationTimestamp, name)


def queue_key(priority: int, created: str, name: str) -> Key:
    """The order Sessions are served in: highest priority, then oldest, then by name."""
    return (-priority, created, name)


@dataclass
class Waiter:
    """One waiting Session: where it stands and whether it could use what is free."""

    key: Key
    fits: Callable[[RankedNodes], bool]
    unfit_epoch: int = -1  # the capacity epoch at which it was seen not to fit


@dataclass(frozen=True)
class Ahead:
    """What stands before a Session in the queue."""

    higher: int = 0  # waiting Sessions of a higher priority
    older: int = 0  # of the same priority, applied earlier
    ready: list[str] = field(default_factory=list)  # ahead and able to use what is free now

    @property
    def message(self) -> str:
        """``waiting: 3 sessions of higher priority ahead`` (empty when none is ahead)."""
        parts = []
        if self.higher:
            parts.append(f"{self.higher} session{'s' * (self.higher != 1)} of higher priority")
        if self.older:
            parts.append(f"{self.older} older of the same priority")
        return f"waiting: {' and '.join(parts)} ahead" if parts else ""


class WaitQueue:
    """Waiting Sessions in serving order (callers hold the ``ClusterState`` lock)."""

    def __init__(self) -> None:
        self._keys: list[Key] = []
        self._waiters: dict[str, Waiter] = {}
        # the waiters not known to be unfit at ``_epoch``, in serving order
        self._candidates: list[Key] = []
        self._epoch: int | None = None
        self.walked = 0
        """Waiters ``ahead`` has looked at, in all (its cost; for tests and profiles)."""
        # woken by ``fitting`` and not passed since (a pass puts or removes its entry)
        self._woken: set[str] = set()

    def put(self, name: str, waiter: Waiter) -> None:
        """Add ``name`` or replace its entry (its pass ran: it may be woken again)."""
        self.remove(name)
        self._waiters[name] = waiter
        bisect.insort(self._keys, waiter.key)
        if waiter.unfit_epoch != self._epoch:
            bisect.insort(self._candidates, waiter.key)

    def remove(self, name: str) -> None:
        """Forget ``name`` (nothing if it does not wait)."""
        self._woken.discard(name)
        old = self._waiters.pop(name, None)
        if old is not None:
            del self._keys[bisect.bisect_left(self._keys, old.key)]
            at = bisect.bisect_left(self._candidates, old.key)
            if at < len(self._candidates) and self._candidates[at] == old.key:
                del self._candidates[at]

    def __contains__(self, name: object) -> bool:
        return name in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)

    def head(self) -> str | None:
        """The Session served first, if any waits."""
        return self._keys[0][2] if self._keys else None

    def fitting(self, nodes: RankedNodes, epoch: int, limit: int) -> list[str]:
        """Up to ``limit`` waiting Sessions, in serving order, that fit ``nodes`` now and
        were not woken already since their last pass (they are now): whom a change of
        capacity wakes. Each is tested on its own, as if it were the only one."""
        return self._walk(None, nodes, epoch, limit, self._woken)

    def ahead(self, key: Key, nodes: RankedNodes, epoch: int, limit: int = 1) -> Ahead:
        """Who waits before ``key``, and up to ``limit`` of them that fit ``nodes`` now."""
        end = bisect.bisect_left(self._keys, key)
        higher = bisect.bisect_left(self._keys, (key[0],), 0, end)
        ready = self._walk(key, nodes, epoch, limit, None)
        return Ahead(higher=higher, older=end - higher, ready=ready)

    def _walk(
        self, key: Key | None, nodes: RankedNodes, epoch: int, limit: int, skip: set[str] | None
    ) -> list[str]:
        """The first ``limit`` candidates before ``key`` (None: all) that fit, not in
        ``skip`` (and added to it); those seen unfit leave the epoch's candidates."""
        if epoch != self._epoch:  # capacity was given back: every waiter may fit again
            self._epoch = epoch
            self._candidates = [k for k in self._keys if self._waiters[k[2]].unfit_epoch != epoch]
        candidates = self._candidates
        stop = len(candidates) if key is None else bisect.bisect_left(candidates, key)
        ready: list[str] = []
        kept: list[Key] = []  # the candidates walked that stay candidates
        walked = 0
        for k in itertools.islice(candidates, stop):  # (no copy: a pass walks few)
            walked += 1
            if skip is not None and k[2] in skip:
                kept.append(k)
                continue
            waiter = self._waiters[k[2]]
            if waiter.fits(nodes):
                kept.append(k)
                ready.append(k[2])
                if len(ready) >= limit:
                    break
            else:
                waiter.unfit_epoch = epoch
        self.walked += walked
        if len(kept) < walked:
            candidates[:walked] = kept
        if skip is not None:
            skip.update(ready)
        return ready


__all__ = ["Ahead", "Key", "WaitQueue", "Waiter", "queue_key"]
