"""The one work queue of gu, and its backoff: used by the hub's reconcile engine and the agent.

Flow: producers (a change feed, a resync ticker, a watch, a failed pass) put
*keys* into the queue; worker threads ``get()`` a key, reconcile the object as
it is *now*, and call ``done(key)``. Because the worker reads the current
state instead of an event payload, a key only says "look at this again" — so
ten changes to one object while it waits collapse into one pass (dedupe), and
nothing is lost by collapsing.

Invariants (client-go's rate-limited workqueue, which kopf's ``queueing.py``
also approximates per object; it lives beside the API client as client-go's
``util/workqueue`` does, so the agent uses it too):

- A key is queued at most once: ``add`` of a key that is already waiting does
  nothing.
- A key is never handed to two workers at once: a key added while a worker has
  it is marked *dirty* and goes back into the queue when that worker calls
  ``done``. Two workers writing the status of one object would otherwise race
  and conflict forever.
- Failures back off per key: ``add_rate_limited`` waits ``base * 2**failures``
  (5 ms, 10 ms, … capped at ``max_delay``: :func:`exponential`, the same curve
  :class:`Backoff` gives a reconnect loop), and a global token bucket (20/s,
  burst 100) keeps a storm of failing keys from hammering the store. The
  longer of the two delays wins. ``forget`` resets a key after a success.
- Delayed adds keep one deadline per key (the earliest); a waiting ``get``
  wakes at the earliest deadline, so no timer thread is needed and a key that
  keeps failing or asking to be requeued cannot pile up timers.

Thread-safe: every method may be called from any thread (an asyncio loop
adds keys from its own thread; workers block in ``get``).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable


def exponential(base: float, cap: float, failures: int) -> float:
    """``base * 2**failures``, at most ``cap`` (the exponent is capped too, so it never overflows)."""
    return min(cap, base * 2 ** min(failures, 62))


class Backoff:
    """Capped exponential backoff for a retry loop: ``initial``, doubling, at most ``cap``."""

    def __init__(self, initial: float = 1.0, cap: float = 30.0) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        """The delay to wait now; the following one doubles (up to ``cap``)."""
        delay = exponential(self.initial, self.cap, self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Back to ``initial`` (after a success)."""
        self.failures = 0


class QueueShutDown(Exception):
    """``get()`` was called on, or was waiting in, a queue that has been shut down."""


class TokenBucket:
    """A token bucket that hands out *reservations*: how long to wait for the next token.

    Like Go's ``rate.Limiter.Reserve().Delay()``: the count may go negative, so
    each caller is told its own place in line instead of everyone retrying at once.
    Not thread-safe by itself (the queue calls it under its lock).
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before using it (0 if available)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class WorkQueue:
    """A deduplicating, rate-limited, thread-safe work queue of string keys (see module doc)."""

    def __init__(
        self,
        *,
        base_delay: float = 0.005,
        max_delay: float = 60.0,
        rate: float = 20.0,
        burst: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._cond = threading.Condition()
        self._bucket = TokenBucket(rate, burst, clock)
        self._ready: deque[str] = deque()  # keys to hand out, in order
        self._dirty: set[str] = set()  # keys that need processing (queued or re-queue on done)
        self._processing: set[str] = set()  # keys a worker holds right now
        self._failures: dict[str, int] = {}
        self._deadlines: dict[str, float] = {}  # key -> earliest pending add_after deadline
        self._heap: list[tuple[float, str]] = []  # may hold stale entries; _deadlines is truth
        self._shut_down = False

    # ---------------------------------------------------------------- adding

    def add(self, key: str) -> None:
        """Queue ``key`` now, unless it is already queued; if a worker holds it, mark it dirty."""
        with self._cond:
            self._add(key)

    def _add(self, key: str) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # done() re-queues it
        self._ready.append(key)
        self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; one pending deadline per key, the earliest wins."""
        with self._cond:
            self._add_after(key, delay)

    def _add_after(self, key: str, delay: float) -> None:
        if self._shut_down:
            return
        if delay <= 0:
            self._add(key)
            return
        deadline = self._clock() + delay
        current = self._deadlines.get(key)
        if current is not None and current <= deadline:
            return
        self._deadlines[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            # superseded entries are skipped lazily; rebuild so they cannot accumulate
            self._heap = [(d, k) for k, d in self._deadlines.items()]
            heapq.heapify(self._heap)
        self._cond.notify_all()  # a waiting get() may now have an earlier deadline to wake at

    def add_rate_limited(self, key: str) -> float:
        """Queue ``key`` after its backoff (per key and global); return the delay chosen."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = max(
                exponential(self.base_delay, self.max_delay, failures), self._bucket.reserve()
            )
            self._add_after(key, delay)
            return delay

    def forget(self, key: str) -> None:
        """Reset the backoff of ``key`` (call after it reconciled successfully)."""
        with self._cond:
            self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        """How many rate-limited re-adds ``key`` had since it was last forgotten."""
        with self._cond:
            return self._failures.get(key, 0)

    # ------------------------------------------------------------ processing

    def get(self, timeout: float | None = None) -> str | None:
        """Wait for a key and hand it to the caller, who must call ``done(key)`` afterwards.

        Returns None when ``timeout`` seconds pass without a key; raises
        ``QueueShutDown`` once the queue is shut down (also while waiting).
        """
        with self._cond:
            end = None if timeout is None else self._clock() + timeout
            while True:
                if self._shut_down:
                    raise QueueShutDown("the work queue is shut down")
                next_deadline = self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                now = self._clock()
                if end is not None and now >= end:
                    return None
                waits = [t - now for t in (next_deadline, end) if t is not None]
                self._cond.wait(max(0.0, min(waits)) if waits else None)

    def _promote_due(self) -> float | None:
        """Move keys whose deadline passed into the ready queue; the next deadline, if any."""
        now = self._clock() + 0.001  # a wait may end a hair early; avoid re-waiting for µs
        while self._heap:
            deadline, key = self._heap[0]
            if self._deadlines.get(key) != deadline:
                heapq.heappop(self._heap)  # superseded entry
                continue
            if deadline > now:
                return deadline
            heapq.heappop(self._heap)
            del self._deadlines[key]
            self._add(key)
        return None

    def done(self, key: str) -> None:
        """Release ``key``; if it was added meanwhile, queue it again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shut_down:
                self._ready.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        """Stop handing out keys: waiting and future ``get()`` raise ``QueueShutDown``."""
        with self._cond:
            self._shut_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown()`` was called."""
        return self._shut_down

    def len(self) -> int:
        """Keys ready to be handed out (not those waiting for a deadline or being processed)."""
        with self._cond:
            return len(self._ready)

    def __len__(self) -> int:
        return self.len()

    def waiting(self) -> int:
        """Keys waiting for an ``add_after`` deadline."""
        with self._cond:
            return len(self._deadlines)

    def processing(self) -> int:
        """Keys held by workers right now."""
        with self._cond:
            return len(self._processing)


__all__ = ["Backoff", "QueueShutDown", "TokenBucket", "WorkQueue", "exponential"]
