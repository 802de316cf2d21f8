"""The reconcile engine: change feed → work queue → level-triggered handlers.

Flow:

1. ``Controller.run`` subscribes to the store. The store calls back on the
   writer's thread after each commit; the callback only pokes the loop
   (``call_soon_threadsafe``), coalesced so a burst of commits is one wake-up.
2. The feed task reads ``store.change_texts(since)`` in batches and turns each
   change into keys: ``Kind/name`` of the changed object if its kind has a
   reconciler, plus whatever the *mappers* of reconcilers watching that kind
   return (a Priority changed → the Sessions naming it). Only a change of a
   watched kind is decoded (for its mappers): the rest need only kind and name.
   If the change log was compacted past ``since`` (``Gone``) it relists every
   object of every registered kind.
   A poll every ``poll_interval`` is the safety net for a missed wake-up.
3. The ``WorkQueue`` (``controller.client.workqueue``, the one queue the agent
   uses too) dedupes keys and never hands one key to two workers.
4. ``workers`` threads take keys and run the handler (the store is
   synchronous and thread-safe), so no reconcile runs on the event loop that
   serves the API. The handler gets the object *as it is in the store now*,
   never the event that woke it: handlers are level-triggered and idempotent,
   so collapsing ten wake-ups into one loses nothing.
5. A handler returns ``Result(requeue_after=…)`` or None; an exception means
   "retry with backoff" (per-key exponential plus a global rate limit), a
   success resets the backoff. Nobody sleeps inside a handler.
6. Every ``resync_period`` (± ``jitter``, so many hubs or kinds do not line up)
   every object of every registered kind is queued again to correct drift,
   spread over half a period a slice at a time (a burst of thousands of passes
   would hold the GIL, and so the API's loop, for seconds). A resync of
   converged objects writes nothing: handlers compute the same status and the
   store skips equal writes, so cost follows changes, not objects.

Stopping: set the ``stop`` event; the queue shuts down, workers finish the key
they hold, and ``run`` waits at most ``stop_timeout`` for them (a handler
stuck in a thread cannot be killed; it is abandoned and logged).

kopf (``kopf/_core/reactor/queueing.py``) and controller-runtime are the models;
this is deliberately smaller: one handler per kind, string keys, one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.client.workqueue import QueueShutDown, WorkQueue
from controller.store import ChangeText, Conflict, Gone, Store
from controller.store.types import FENCE
from specs.logfmt import logfmt

log = logging.getLogger("gu.reconcile")

_MAX_OWN_WRITES = 100_000
"""Notes of a handler's own writes kept at most (``Controller.note_write``)."""

Obj = dict[str, Any]

_ERROR_MAX_CHARS = 300


_RESYNC_TICK = 0.1  # seconds between the slices of a periodic resync

COMMIT_WINDOW = 0.01
"""Seconds a worker groups ready passes into one commit at most (``Controller._work``)."""

COMMIT_MAX = 64
"""Passes grouped into one commit at most."""

CAREFUL_SECONDS = 10.0
"""After a pass failed in a group and rolled it back, passes run each in a savepoint of
its own for this long (``Controller._group``): a wave of failing keys costs one rollback
of a group, not one each."""


class _RolledBack(Exception):
    """A pass without a savepoint of its own failed: its group is rolled back."""


class KeyValueLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that appends its fields (e.g. kind, name) as ``key=value``."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Append the adapter's fields to the message."""
        return f"{msg} {logfmt(**dict(self.extra or {}))}", kwargs


@dataclass(frozen=True)
class Result:
    """What a handler asks for besides its writes: ``requeue_after`` seconds, or nothing."""

    requeue_after: float | None = None


@dataclass
class Context:
    """What a handler gets next to the object: the store, its controller and helpers."""

    store: Store
    controller: Controller
    log: logging.LoggerAdapter[logging.Logger]
    kind: str
    name: str

    def now(self) -> datetime:
        """The current time, timezone-aware UTC (use one ``now()`` per pass)."""
        return datetime.now(UTC)

    def event(self, obj: Obj, reason: str, message: str, type_: str = "Normal") -> bool:
        """Record an event on ``obj`` unless its newest event has the same reason and message.

        Returns whether an event was written. The check is what keeps a resync
        from repeating the same event every period.
        """
        return self.controller.record_event(obj, reason, message, type_)

    def wrote(self, obj: Obj) -> Obj:
        """Say that this pass wrote ``obj`` (as the store returned it): the change it
        makes does not wake this key again — the pass that wrote it knew it already
        (controller-runtime's "expectations"). Other keys it concerns are woken as ever."""
        self.controller.note_write(f"{self.kind}/{self.name}", obj)
        return obj

    def update_status(self, obj: Obj, status: Obj) -> Obj:
        """Write ``status`` of ``obj`` if it differs from what ``obj`` has.

        Guarded by the resourceVersion the handler read: if the object changed
        since, ``Conflict`` is raised and the key is retried with a fresh read.
        """
        if status == obj.get("status"):
            return obj
        meta = obj["metadata"]
        return self.wrote(
            self.store.update_status(
                obj["kind"], meta["name"], status, expected_rv=meta["resourceVersion"]
            )
        )

    def ensure_finalizer(self, obj: Obj, finalizer: str) -> Obj:
        """Add ``finalizer`` to ``obj`` if missing (not on an object already being deleted)."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if finalizer in finalizers or meta.get("deletionTimestamp"):
            return obj
        return self.wrote(
            self.store.set_finalizers(
                obj["kind"],
                meta["name"],
                [*finalizers, finalizer],
                expected_rv=meta["resourceVersion"],
            )
        )

    def remove_finalizer(self, obj: Obj, finalizer: str) -> Obj:
        """Remove ``finalizer`` from ``obj``; the store deletes it once none are left."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if finalizer not in finalizers:
            return obj
        return self.wrote(
            self.store.set_finalizers(
                obj["kind"],
                meta["name"],
                [f for f in finalizers if f != finalizer],
                expected_rv=meta["resourceVersion"],
            )
        )


Handler = Callable[[Obj, Context], Result | None]
"""``handler(obj, ctx)``: converge ``obj`` (the current stored object); raise to retry."""

Mapper = Callable[[Obj, Store], Iterable[str]]
"""``mapper(changed_obj, store)``: names of objects of the reconciled kind to queue."""


class Controller:
    """Runs the registered reconcilers against a store (see module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        workers: int = 4,
        resync_period: float = 30.0,
        jitter: float = 0.2,
        poll_interval: float = 5.0,
        stop_timeout: float = 5.0,
        batch_size: int = 500,
        queue: WorkQueue | None = None,
        observe: Callable[[str, float, str], None] | None = None,
        fence: int | None = None,
        commit_window: float = COMMIT_WINDOW,
        commit_max: int = COMMIT_MAX,
    ) -> None:
        """``observe(kind, seconds, outcome)`` is called after each reconcile, outcome
        ``ok``, ``error`` or ``conflict`` (the hub's metrics). ``fence``: the leadership
        epoch every write of the handlers carries (``controller.leader``; a shared store
        refuses them once another hub leads). ``commit_window``/``commit_max``: how long
        and how many passes a worker groups into one commit (0: a commit per pass)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if resync_period <= 0 or not 0 <= jitter < 1:
            raise ValueError("resync_period must be > 0 and jitter in [0, 1)")
        self.store = store
        self.workers = workers
        self.resync_period = resync_period
        self.jitter = jitter
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.batch_size = batch_size
        self.commit_window = commit_window
        self.commit_max = commit_max
        self._lost: list[Callable[[], None]] = []
        self._queue = queue if queue is not None else WorkQueue()
        self._observe = observe
        self.fence = fence
        self._handlers: dict[str, Handler] = {}
        self._watches: dict[str, list[tuple[str, Mapper]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._counters_lock = threading.Lock()
        self._own: dict[tuple[str, str, int], str] = {}  # (kind, name, rv) → writer key
        self._own_lock = threading.Lock()
        self._pass = threading.local()  # the notes of the pass a worker is running
        self._wake = asyncio.Event()
        self._wake_scheduled = False
        self._executor: ThreadPoolExecutor | None = None
        self._since = 0
        self._reconciles = 0
        self._errors = 0
        self._conflicts = 0
        self._lost_commits = 0
        self._rolled_back = 0
        self._careful_until = 0.0  # monotonic: passes run in savepoints until then
        self._in_flight = 0
        self._relists = 0
        self._last_resync: datetime | None = None

    # ---------------------------------------------------------- registration

    def reconciler(
        self, kind: str, *, watches: Mapping[str, Mapper] | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: register ``handler(obj, ctx)`` for ``kind``.

        ``watches`` maps another kind to a mapper: when an object of that kind
        changes, the names the mapper returns (objects of ``kind``) are queued.
        """

        def register(handler: Handler) -> Handler:
            if self._started:
                raise RuntimeError("register reconcilers before Controller.run starts")
            if kind in self._handlers:
                raise ValueError(f"a reconciler for {kind} is already registered")
            self._handlers[kind] = handler
            for watched, mapper in (watches or {}).items():
                self._watches.setdefault(watched, []).append((kind, mapper))
            return handler

        return register

    def on_lost_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on a worker thread) when writes that passes may have read
        back from the store in memory are gone: a grouped commit failed, a group was
        rolled back, or a pass in a savepoint of its own failed after writing (see
        ``_work``)."""
        self._lost.append(callback)

    @property
    def kinds(self) -> list[str]:
        """The kinds that have a reconciler."""
        return list(self._handlers)

    # -------------------------------------------------------------- queueing

    def enqueue(self, kind: str, name: str) -> None:
        """Queue ``kind/name`` for a reconcile; safe from any thread, before or during ``run``."""
        self._queue.add(f"{kind}/{name}")

    def enqueue_after(self, kind: str, name: str, delay: float) -> None:
        """Queue ``kind/name`` after ``delay`` seconds (one pending deadline per key)."""
        self._queue.add_after(f"{kind}/{name}", delay)

    async def resync(self) -> None:
        """Queue every object of every registered kind now (the periodic resync does this)."""
        keys = await self._in_thread(self._all_keys)
        for key in keys:
            self._queue.add(key)
        self._last_resync = datetime.now(UTC)
        log.debug(logfmt(event="resync", keys=len(keys)))

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics: reconciles, errors, queue length, last resync, …"""
        return {
            "reconciles": self._reconciles,
            "errors": self._errors,
            "conflicts": self._conflicts,
            "lost_commits": self._lost_commits,
            "rolled_back_groups": self._rolled_back,
            "in_flight": self._in_flight,
            "queue_length": len(self._queue),
            "queue_waiting": self._queue.waiting(),
            "relists": self._relists,
            "feed_resource_version": self._since,
            # (0 while it does not run: a hub that follows another reads nothing)
            "feed_behind": (max(0, self.store.resource_version - self._since) if self._loop else 0),
            "last_resync": (
                self._last_resync.isoformat().replace("+00:00", "Z") if self._last_resync else None
            ),
        }

    # ------------------------------------------------------------- reconcile

    def reconcile(self, kind: str, name: str) -> Result | None:
        """Run the handler of ``kind`` once on the current ``kind/name`` (synchronous).

        Does nothing if the object does not exist. Workers call this in a
        thread; tests and tools may call it directly. Exceptions propagate.
        """
        handler = self._handlers.get(kind)
        if handler is None:
            raise ValueError(f"no reconciler registered for {kind}")
        obj = self.store.try_get(kind, name)
        if obj is None:
            return None
        ctx = Context(
            store=self.store,
            controller=self,
            log=KeyValueLogAdapter(log, {"kind": kind, "name": name}),
            kind=kind,
            name=name,
        )
        return handler(obj, ctx)

    def record_event(self, obj: Obj, reason: str, message: str, type_: str = "Normal") -> bool:
        """``Context.event``: record unless the newest event of ``obj`` says the same."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        # the store's own lock, through a transaction: one lock order everywhere (a
        # separate lock here deadlocked against reconcilers that record events
        # while holding the store inside their own transaction)
        with self.store.transaction():
            return self.store.record_event(kind, name, reason, message, type_, unless_repeated=True)

    # ------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set; then stop within about ``stop_timeout``.

        A controller runs once: build a new one to run again.
        """
        if self._started:
            raise RuntimeError("a Controller runs once; create a new one to run again")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gu-reconcile-feed")
        workers: list[threading.Thread] = []
        feed: asyncio.Task[None] | None = None
        # subscribe before reading the rv: a commit in between wakes the feed, none is missed
        self.store.subscribe(self._on_commit)
        log.info(
            logfmt(event="controller_start", kinds=",".join(self._handlers), workers=self.workers)
        )
        try:
            self._since = self.store.resource_version
            await self.resync()  # the initial list
            workers = [
                threading.Thread(target=self._work, name=f"gu-reconcile-worker-{i}", daemon=True)
                for i in range(self.workers)
            ]
            for worker in workers:
                worker.start()
            feed = asyncio.create_task(self._follow(stop), name="gu-reconcile-feed")
            await self._resync_until(stop)
        finally:
            await self._shutdown(workers, feed)

    async def _shutdown(
        self, workers: list[threading.Thread], feed: asyncio.Task[None] | None
    ) -> None:
        """Stop taking keys, let workers finish the key they hold (bounded), release threads."""
        self.store.unsubscribe(self._on_commit)
        self._queue.shutdown()
        if feed is not None:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(feed, timeout=self.stop_timeout)
        deadline = self._loop.time() + self.stop_timeout if self._loop else 0.0
        for worker in workers:
            # joined off the loop in small steps: the loop keeps serving meanwhile
            while worker.is_alive() and self._loop is not None and self._loop.time() < deadline:
                await asyncio.sleep(0.01)
            if worker.is_alive():
                # a handler stuck in a thread cannot be killed; it is left to finish
                log.warning(logfmt(event="controller_stop_abandoned", task=worker.name))
        if self._executor is not None:
            # a handler thread that is still running cannot be killed; it is left to finish
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = None
        log.info(logfmt(event="controller_stop", reconciles=self._reconciles, errors=self._errors))

    async def _resync_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            period = self.resync_period * random.uniform(1 - self.jitter, 1 + self.jitter)
            try:
                await asyncio.wait_for(stop.wait(), timeout=period)
            except TimeoutError:
                await self._trickle_resync(stop, spread=period / 2)

    async def _trickle_resync(self, stop: asyncio.Event, spread: float) -> None:
        """The periodic resync, its keys queued a slice at a time over ``spread`` seconds:
        a steady trickle of converged passes instead of a burst of thousands that would
        hold the GIL (and so the API's loop) for seconds, and keys changes queue do not
        wait behind all of them."""
        keys = await self._in_thread(self._all_keys)
        if not keys:  # (an empty store: nothing to queue)
            self._last_resync = datetime.now(UTC)
            return
        steps = max(1, min(len(keys), int(spread / _RESYNC_TICK)))
        size = -(-len(keys) // steps)
        for i in range(0, len(keys), size):
            for key in keys[i : i + size]:
                self._queue.add(key)
            if i + size < len(keys):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=spread / steps)
                if stop.is_set():
                    return
        self._last_resync = datetime.now(UTC)
        log.debug(logfmt(event="resync", keys=len(keys), spread=f"{spread:.1f}"))

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ feed

    def _on_commit(self, rv: int) -> None:
        """Store listener (writer's thread): wake the feed, once per burst of commits."""
        loop = self._loop
        if loop is None or self._wake_scheduled:
            return
        self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # loop closed: the controller is stopping
            loop.call_soon_threadsafe(self._wake.set)

    async def _follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # the poll: a safety net for lost wake-ups
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            # clear before reading: a commit from now on schedules a new wake-up
            self._wake.clear()
            self._wake_scheduled = False
            try:
                since, keys, more = await self._in_thread(self._collect, self._since)
            except Exception as exc:
                log.error(logfmt(event="feed_failed", since=self._since, error=_describe(exc)))
                continue  # the next wake-up or poll retries; no tight loop
            self._since = since
            for key in keys:
                self._queue.add(key)
            if more:
                self._wake.set()

    def _collect(self, since: int) -> tuple[int, list[str], bool]:
        """Read up to a few batches of changes after ``since`` (in a thread): the keys they touch."""
        keys: dict[str, None] = {}  # ordered set
        for _ in range(8):
            try:
                # undecoded: only a kind somebody watches is decoded, for its mappers
                batch = self.store.change_texts(since, limit=self.batch_size)
            except Gone:
                fresh = self.store.resource_version
                log.warning(logfmt(event="feed_gone", since=since, relist_at=fresh))
                self._relists += 1
                keys.update(dict.fromkeys(self._all_keys()))
                return fresh, list(keys), False
            for change in batch:
                keys.update(dict.fromkeys(self._keys_for(change)))
                since = change.rv
            if len(batch) < self.batch_size:
                return since, list(keys), False
        return since, list(keys), True

    def note_write(self, writer: str, obj: Obj) -> None:
        """Key ``writer``'s pass wrote ``obj``: the change with its rv wakes ``writer`` no
        more (``Context.wrote``). Forgotten if the pass fails (its writes rolled back)."""
        meta = obj.get("metadata") or {}
        note = (str(obj.get("kind")), str(meta.get("name")), int(meta.get("resourceVersion") or 0))
        with self._own_lock:
            if len(self._own) >= _MAX_OWN_WRITES:  # (notes of changes never read: a relist)
                self._own.clear()
            self._own[note] = writer
        pending = getattr(self._pass, "notes", None)
        if pending is not None:
            pending.append(note)

    def _keys_for(self, change: ChangeText) -> list[str]:
        """The keys a change wakes: its own (if its kind has a reconciler) and the mappers'
        (the change decoded only if its kind has any), less the key whose pass wrote it."""
        keys: list[str] = []
        with self._own_lock:
            writer = self._own.pop((change.kind, change.name, change.rv), None)
        if change.kind in self._handlers:
            keys.append(f"{change.kind}/{change.name}")
        watches = self._watches.get(change.kind, ())
        obj: Obj = {}
        if watches:
            obj = change.decoded().object
        for target, mapper in watches:
            try:
                keys.extend(f"{target}/{name}" for name in mapper(obj, self.store))
            except Exception as exc:  # the resync will catch what this misses
                log.error(
                    logfmt(
                        event="mapper_failed",
                        watched=f"{change.kind}/{change.name}",
                        target=target,
                        error=_describe(exc),
                    )
                )
        if writer is not None:
            keys = [k for k in keys if k != writer]
        return keys

    def _all_keys(self) -> list[str]:
        # names only: a resync need not decode every object to learn what to queue
        return [f"{kind}/{name}" for kind in self._handlers for name in self.store.names(kind)]

    # --------------------------------------------------------------- workers

    def _work(self) -> None:
        """One worker thread: take keys until the queue shuts down.

        Group commit: while more keys are ready, a worker runs them inside one store
        transaction for at most ``commit_window`` seconds or ``commit_max`` passes, and
        commits once. A pass costs its writes' statements; the commit (the fsync, the
        largest single cost of a small pass) is shared. The window bounds how long the
        store's write lock is held for others (the API's writes wait at most about that
        long); a group also ends as soon as another process waits for the lock
        (``Store.writer_waiting``). Keys of a group are released only once it has
        committed. If the commit itself fails, every pass of the group is retried and
        the ``on_lost_commit`` callbacks drop what they kept in memory of its writes.

        A pass runs without a savepoint of its own: a savepoint costs every pass about
        a tenth of its time (SQLite copies each page the pass first touches), and passes
        seldom fail. When one does, it cannot undo only its own writes, so the whole
        group is rolled back, as a failed commit is: its failing key is retried after
        its backoff, the others at once, and the ``on_lost_commit`` callbacks run. A key
        that has failed before (it is in backoff), and every key for
        ``CAREFUL_SECONDS`` after a rollback, runs in a savepoint (a failing pass then
        undoes only its own writes), so a key that keeps failing, or many failing at
        once, rolls back one group and not one each.
        """
        FENCE.set(self.fence)  # (a thread starts with no context of its creator's)
        while True:
            try:
                key = self._queue.get(timeout=1.0)
            except QueueShutDown:
                return
            if key is None:
                continue
            if self.commit_window <= 0:
                try:
                    self._process(key)
                finally:
                    self._queue.done(key)
                continue
            self._group(key)

    def _group(self, first: str) -> None:
        """Passes for ``first`` and the keys ready after it, under one commit."""
        keys = [first]
        notes: list[tuple[str, str, int]] = []
        try:
            with self.store.transaction():
                end = time.perf_counter() + self.commit_window  # (from when it holds the lock)
                self._grouped(first, notes)
                while (
                    len(keys) < self.commit_max
                    and time.perf_counter() < end
                    and not self.store.writer_waiting()
                ):
                    try:
                        key = self._queue.get(timeout=0)
                    except QueueShutDown:  # (stopping: the group commits, no more keys)
                        break
                    if key is None:
                        break
                    keys.append(key)
                    self._grouped(key, notes)
        except _RolledBack:  # (its key is in backoff already; the others run again now)
            with self._counters_lock:
                self._rolled_back += 1
            self._careful_until = time.monotonic() + CAREFUL_SECONDS
            self._lose(notes)
            for key in keys[:-1]:
                self._queue.add(key)
            log.info(logfmt(event="group_rolled_back", passes=len(keys), failed=keys[-1]))
        except Exception as exc:  # BEGIN or COMMIT failed: every pass of it is lost
            with self._counters_lock:
                self._lost_commits += 1
            self._lose(notes)
            for key in keys:
                self._queue.add_rate_limited(key)
            log.error(logfmt(event="commit_failed", passes=len(keys), error=_describe(exc)))
        finally:
            for key in keys:
                self._queue.done(key)

    def _grouped(self, key: str, notes: list[tuple[str, str, int]]) -> None:
        """One pass inside a group: in a savepoint of its own if it failed before or the
        engine is careful (see ``_work``); raises ``_RolledBack`` if it failed without."""
        own = time.monotonic() < self._careful_until or self._queue.num_requeues(key) > 0
        if not self._process(key, notes, savepoint=own) and not own:
            raise _RolledBack(key)

    def _lose(self, notes: list[tuple[str, str, int]]) -> None:
        """A group's writes are gone: forget the notes of its writes, tell ``on_lost_commit``."""
        with self._own_lock:
            for note in notes:
                self._own.pop(note, None)
        for callback in self._lost:
            callback()

    def _process(
        self, key: str, group: list[tuple[str, str, int]] | None = None, savepoint: bool = False
    ) -> bool:
        """One pass of ``key``; inside a group (``group``: the notes of its writes so
        far) it adds its notes, in a savepoint of its own with ``savepoint``. Whether
        it succeeded."""
        try:
            return self._pass_of(key, group, savepoint)
        except Exception as exc:  # an engine bug must not kill the worker
            log.error(logfmt(event="worker_failed", key=key, error=_describe(exc)))
            self._queue.add_rate_limited(key)
            return False

    def _pass_of(self, key: str, group: list[tuple[str, str, int]] | None, savepoint: bool) -> bool:
        kind, _, name = key.partition("/")
        with self._counters_lock:
            self._in_flight += 1
        began = time.perf_counter()
        outcome = "ok"
        self._pass.notes = []
        undone = self.store.undone_writes() if savepoint else 0
        try:
            if savepoint:
                with self.store.transaction(savepoint=True):
                    result = self.reconcile(kind, name)
            else:
                result = self.reconcile(kind, name)
        except Conflict as exc:
            # normal under concurrency: somebody wrote first; read again soon
            outcome = "conflict"
            with self._counters_lock:
                self._conflicts += 1
            delay = self._queue.add_rate_limited(key)
            log.info(
                logfmt(
                    event="reconcile_conflict",
                    kind=kind,
                    name=name,
                    retry_in=f"{delay:.3f}",
                    error=_describe(exc),
                )
            )
        except Exception as exc:
            outcome = "error"
            with self._counters_lock:
                self._errors += 1
            delay = self._queue.add_rate_limited(key)
            log.error(
                logfmt(
                    event="reconcile_failed",
                    kind=kind,
                    name=name,
                    attempt=self._queue.num_requeues(key),
                    retry_in=f"{delay:.3f}",
                    error=_describe(exc),
                )
            )
        else:
            self._queue.forget(key)
            if isinstance(result, Result) and result.requeue_after is not None:
                self._queue.add_after(key, result.requeue_after)
        finally:
            if outcome != "ok":  # its writes were rolled back: their rvs may come again
                with self._own_lock:
                    for note in self._pass.notes:
                        self._own.pop(note, None)
                if savepoint and self.store.undone_writes() != undone:
                    for callback in self._lost:  # (what it read back of them is gone too)
                        callback()
            elif group is not None:
                group.extend(self._pass.notes)
            self._pass.notes = None
            with self._counters_lock:
                self._reconciles += 1
                self._in_flight -= 1
            if self._observe is not None:
                self._observe(kind, time.perf_counter() - began, outcome)
        return outcome == "ok"


def _describe(exc: BaseException) -> str:
    """One line naming the exception, bounded in length (messages are not ours to trust)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_MAX_CHARS else text[: _ERROR_MAX_CHARS - 1] + "…"
