"""The work queue between the change feed and the reconcile workers.

Flow: the change feed, the resync timer and failed reconciles put *keys*
(``Kind/name``) into the queue; workers ``get()`` a key, reconcile the object as
it is in the store *now*, and call ``done(key)``. Because the handler reads the
current object instead of an event payload, a key only says "look at this
again" — so ten changes to one object while it waits collapse into one
reconcile (dedupe), and nothing is lost by collapsing.

Invariants (client-go's rate-limited workqueue, which kopf's ``queueing.py``
also approximates per object):

- A key is queued at most once: ``add`` of a key that is already waiting does
  nothing.
- A key is never handed to two workers at once: a key added while a worker has
  it is marked *dirty* and goes back into the queue when that worker calls
  ``done``. Two workers writing the status of one object would otherwise race
  and conflict forever.
- Failures back off per key: ``add_rate_limited`` waits ``base * 2**failures``
  (5 ms, 10 ms, … capped at ``max_delay``), and a global token bucket (20/s,
  burst 100) keeps a storm of failing keys from hammering the store. The longer
  of the two delays wins. ``forget`` resets a key after a success.
- Delayed adds keep one deadline per key (the earliest) and one loop timer for
  the whole queue, so a key that keeps failing or asking to be requeued cannot
  pile up timers.

Everything here runs on one asyncio loop and is not thread-safe: callers on
other threads go through ``loop.call_soon_threadsafe`` (the controller does).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable


class QueueShutDown(Exception):
    """``get()`` was called on, or was waiting in, a queue that has been shut down."""


class TokenBucket:
    """A token bucket that hands out *reservations*: how long to wait for the next token.

    Like Go's ``rate.Limiter.Reserve().Delay()``: the count may go negative, so
    each caller is told its own place in line instead of everyone retrying at once.
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
    """A deduplicating, rate-limited asyncio work queue of string keys (see module docstring)."""

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
        self._bucket = TokenBucket(rate, burst, clock)
        self._ready: deque[str] = deque()  # keys to hand out, in order
        self._dirty: set[str] = set()  # keys that need processing (queued or re-queue on done)
        self._processing: set[str] = set()  # keys a worker holds right now
        self._failures: dict[str, int] = {}
        self._deadlines: dict[str, float] = {}  # key -> earliest pending add_after deadline
        self._heap: list[tuple[float, str]] = []  # may hold stale entries; _deadlines is truth
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._nonempty = asyncio.Event()
        self._shut_down = False

    # ---------------------------------------------------------------- adding

    def add(self, key: str) -> None:
        """Queue ``key`` now, unless it is already queued; if a worker holds it, mark it dirty."""
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # done() re-queues it
        self._ready.append(key)
        self._nonempty.set()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; one pending deadline per key, the earliest wins."""
        if self._shut_down:
            return
        if delay <= 0:
            self.add(key)
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
        self._arm_timer()

    def add_rate_limited(self, key: str) -> float:
        """Queue ``key`` after its backoff (per key and global); return the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        # cap the exponent too, so 2**failures cannot overflow after days of failing
        per_key = min(self.max_delay, self.base_delay * 2 ** min(failures, 62))
        delay = max(per_key, self._bucket.reserve())
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """Reset the backoff of ``key`` (call after it reconciled successfully)."""
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        """How many rate-limited re-adds ``key`` had since it was last forgotten."""
        return self._failures.get(key, 0)

    # ------------------------------------------------------------ processing

    async def get(self) -> str:
        """Wait for a key and hand it to the caller, who must call ``done(key)`` afterwards.

        Raises ``QueueShutDown`` once the queue is shut down (also while waiting).
        """
        while not self._ready:
            if self._shut_down:
                raise QueueShutDown("the work queue is shut down")
            self._nonempty.clear()
            await self._nonempty.wait()
        if self._shut_down:
            raise QueueShutDown("the work queue is shut down")
        key = self._ready.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        """Release ``key``; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty and not self._shut_down:
            self._ready.append(key)
            self._nonempty.set()

    def shutdown(self) -> None:
        """Stop handing out keys: waiting and future ``get()`` raise ``QueueShutDown``."""
        self._shut_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        self._nonempty.set()

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown()`` was called."""
        return self._shut_down

    def len(self) -> int:
        """Keys ready to be handed out (not those waiting for a deadline or being processed)."""
        return len(self._ready)

    def __len__(self) -> int:
        return len(self._ready)

    def waiting(self) -> int:
        """Keys waiting for an ``add_after`` deadline."""
        return len(self._deadlines)

    def processing(self) -> int:
        """Keys held by workers right now."""
        return len(self._processing)

    # ---------------------------------------------------------------- timers

    def _arm_timer(self) -> None:
        """Keep exactly one loop timer, set to the earliest live deadline."""
        while self._heap and self._deadlines.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded entry
        if not self._heap:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._timer_at = None
            return
        earliest = self._heap[0][0]
        if self._timer is not None and self._timer_at is not None and self._timer_at <= earliest:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        # the loop clock and ours may differ (tests pass their own): convert via "delay from now"
        delay = max(0.0, earliest - self._clock())
        self._timer = loop.call_at(loop.time() + delay, self._fire)
        self._timer_at = earliest

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._shut_down:
            return
        now = self._clock() + 0.001  # loop timers may fire a hair early; avoid re-arming for µs
        while self._heap and self._heap[0][0] <= now:
            deadline, key = heapq.heappop(self._heap)
            if self._deadlines.get(key) == deadline:
                del self._deadlines[key]
                self.add(key)
        self._arm_timer()
