"""Recent changes in memory, read from the store once and shared by every watch stream.

Without it each watch stream read the change log itself after every commit,
in its own thread, decoded every change and only then dropped those of other
kinds or that its caller may not see: O(watchers × changes) reads and JSON
decodes, and a pool of 1,000 agents holds 1,000 watch streams. Instead the
``ChangeFeed`` reads each change once (one thread hop per commit batch, for
all streams), makes its NDJSON line once, and keeps the newest ``capacity``
of them with what visibility needs (kind, the Session's app, the node a
Placement is bound to or a Provider is). A stream then takes the lines after
its resource version: an agent's from an index by node (only its own
Placements and Provider, so its cost follows its own changes), anyone else's
from the ring filtered by kind and visibility (``controller.authz.visible``,
which this mirrors; ``tests/test_feed.py`` checks them against each other).

The feed also wakes the streams: after each batch it reads, every stream that
may see something new, and no other. An agent's stream waits on an event of its
own node, so a commit that touches one provider's Placements wakes that
provider's stream, not a thousand (one ``asyncio.Event`` for all, as before,
woke every stream on every commit).

A stream further behind than the ring reads the store as before (and gets
its ``Gone`` if the log was compacted past it).

The line is made from the log's JSON text as stored (``Store.change_texts``),
with no decode and re-encode: a JSON decode happens only for the kinds that an
in-memory view listening to the feed asked for (``listen``). Under scheduling
about half the changes are Session statuses that no stream of an agent wants;
they cost the hub a string concatenation each.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from controller.auth import Principal
from controller.store import Change, ChangeText, Gone, Store

log = logging.getLogger("gu.hub.feed")

CAPACITY = 10_000
"""Changes kept in memory (about 2 KiB each: 20 MiB at most)."""


@dataclass(frozen=True, slots=True)
class Entry:
    rv: int
    kind: str
    app: str | None
    node: str | None
    line: bytes


def line(value: dict[str, Any]) -> bytes:
    """One NDJSON line of a watch stream."""
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def entry_of(change: ChangeText) -> Entry:
    """The ring's entry of a change: its line is ``line`` of the decoded change (the
    same JSON), made from the stored text."""
    text = f'{{"type":"{change.type}","object":{change.text},"resourceVersion":{change.rv}}}\n'
    return Entry(change.rv, change.kind, change.app, change.node, text.encode())


def may_see(who: Principal, entry: Entry) -> bool:
    """``controller.authz.visible`` on the entry's indexed fields."""
    if who.role == "admin":
        return True
    if who.role == "app":
        return entry.kind == "Provider" or (entry.kind == "Session" and entry.app == who.name)
    if who.role == "agent":
        return entry.kind in ("Provider", "Placement") and entry.node == who.name
    return False


class ChangeFeed:
    """The shared ring of recent changes (see the module doc), and the wake-ups of the
    watch streams that read it. Used from the API's event loop (``attach``)."""

    def __init__(self, store: Store, capacity: int = CAPACITY) -> None:
        self.store = store
        self.capacity = capacity
        self._rv = store.resource_version  # the ring holds the changes in (_start, _rv]
        self._start = self._rv
        self._target = self._rv
        self._entries: list[Entry] = []
        self._rvs: list[int] = []
        self._by_node: dict[str, list[Entry]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._any = asyncio.Event()
        self._node_events: dict[str, asyncio.Event] = {}
        self._listeners: list[tuple[Callable[[list[Change] | None], None], frozenset[str]]] = []
        self._decode: frozenset[str] = frozenset()  # the kinds the listeners want decoded
        self.closed = False
        self.reads = 0
        """How many times the store's change log was read (for tests)."""
        self._latest = self._rv  # the newest rv a commit reported (under _latest_lock)
        self._wake_pending = False  # a wake-up of the loop is on its way
        self._latest_lock = threading.Lock()
        self.wakeups = 0
        """How many times a commit woke the loop (for tests)."""

    @property
    def rv(self) -> int:
        return self._rv

    @property
    def caught_up(self) -> bool:
        """Whether the ring holds every change this hub has been told is committed."""
        return self._rv >= self._target and self._loop is not None

    # ------------------------------------------------------------- filling

    def listen(
        self, callback: Callable[[list[Change] | None], None], kinds: Collection[str]
    ) -> None:
        """Call ``callback(batch)`` on the loop with the changes of ``kinds`` of every
        batch read into the ring, in order, decoded; ``callback(None)`` when the ring
        starts afresh (the log was compacted past it: reload). For in-memory views
        (``controller.poolview``) that follow changes without reading the store again."""
        self._listeners.append((callback, frozenset(kinds)))
        self._decode = self._decode | frozenset(kinds)

    def _tell(self, batch: list[Change] | None) -> None:
        for callback, kinds in self._listeners:
            try:
                callback(None if batch is None else [c for c in batch if c.kind in kinds])
            except Exception:  # a broken view must not stop the watch streams
                log.exception("event=feed_listener_failed")

    def _read_batch(self, since: int) -> tuple[list[ChangeText], list[Change]]:
        """(On a thread.) The next changes, and those of them the listeners want, decoded."""
        texts = self.store.change_texts(since, 1000)
        decode = self._decode
        return texts, [t.decoded() for t in texts if t.kind in decode]

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the store's commits, reading them on ``loop`` (the API's)."""
        self._loop = loop
        self.store.subscribe(self._from_thread)
        self._target = max(self._target, self.store.resource_version)
        loop.call_soon_threadsafe(self._committed, self._target)

    def _from_thread(self, rv: int) -> None:
        """(The committing thread.) Wake the loop, once for every commit since it last
        looked: a wake-up is a write to the loop's self-pipe and a trip round the loop,
        and the reconcile workers commit hundreds of times a second while scheduling."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._latest_lock:
            self._latest = max(self._latest, rv)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        with self._latest_lock:
            self._wake_pending = False
            rv = self._latest
        self.wakeups += 1
        self._committed(rv)

    def _committed(self, rv: int) -> None:
        self._target = max(self._target, rv)
        if self._target > self._rv and (self._pump_task is None or self._pump_task.done()):
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        """Read what was committed into the ring, one batch at a time, for every stream."""
        while self._target > self._rv and not self.closed:
            try:
                batch, decoded = await asyncio.to_thread(self._read_batch, self._rv)
            except Gone:  # the log was compacted past the ring: start afresh from now
                self._reset(self.store.resource_version)
                self._tell(None)
                self._wake(None)
                return
            except Exception:  # the store is closing: streams end or read it themselves
                log.exception("event=feed_read_failed")
                return
            self.reads += 1
            if not batch:  # (a committed rv always has its change: never, but no spin)
                self._rv = self._target
                return
            nodes = self._extend(batch)
            self._tell(decoded)
            self._wake(nodes)

    def _extend(self, batch: list[ChangeText]) -> set[str]:
        nodes: set[str] = set()
        for change in batch:
            entry = entry_of(change)
            self._entries.append(entry)
            self._rvs.append(entry.rv)
            if entry.node is not None:
                self._by_node.setdefault(entry.node, []).append(entry)
                nodes.add(entry.node)
            self._rv = entry.rv
        if len(self._entries) > self.capacity + self.capacity // 4:
            self._trim(len(self._entries) - self.capacity)
        return nodes

    def _trim(self, drop: int) -> None:
        self._start = self._entries[drop - 1].rv
        del self._entries[:drop]
        del self._rvs[:drop]
        for node in list(self._by_node):
            kept = [e for e in self._by_node[node] if e.rv > self._start]
            if kept:
                self._by_node[node] = kept
            else:
                del self._by_node[node]

    def _reset(self, rv: int) -> None:
        self._entries.clear()
        self._rvs.clear()
        self._by_node.clear()
        self._start = self._rv = self._target = rv

    # ------------------------------------------------------------ wake-ups

    def _wake(self, nodes: set[str] | None) -> None:
        """Wake the streams that may have something new: every non-agent stream, and the
        agents of ``nodes`` (every agent if None)."""
        self._any.set()
        self._any = asyncio.Event()
        names = list(self._node_events) if nodes is None else nodes
        for node in names:
            event = self._node_events.pop(node, None)
            if event is not None:
                event.set()

    async def wait(self, who: Principal, since: int, timeout: float) -> None:
        """Until the ring may hold something after ``since`` for ``who``, or ``timeout``.
        An agent's stream wakes only for changes of its own node."""
        if self.closed:
            return
        if who.role == "agent":
            mine = self._by_node.get(who.name)
            if mine and mine[-1].rv > since:
                return
            event = self._node_events.setdefault(who.name, asyncio.Event())
        else:
            if self._rv > since:
                return
            event = self._any
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def close(self) -> None:
        """The hub is stopping: wake every stream now; they see ``closed`` and end."""
        self.closed = True
        self._wake(None)

    def read(
        self, since: int, who: Principal, kinds: set[str] | None, limit: int = 500
    ) -> tuple[list[bytes], int] | None:
        """(the lines after ``since`` that ``who`` may see, the rv they reach), or None if
        ``since`` is older than the ring (read the store instead)."""
        if since < self._start:
            return None
        if since >= self._rv:
            return [], since
        if who.role == "agent":
            entries = self._by_node.get(who.name, [])
            i = bisect.bisect_right([e.rv for e in entries], since) if entries else 0
            out, upto = [], self._rv
            for entry in entries[i:]:
                if kinds is None or entry.kind in kinds:
                    out.append(entry.line)
                    if len(out) >= limit:
                        upto = entry.rv
                        break
            return out, upto
        i = bisect.bisect_right(self._rvs, since)
        out, upto = [], self._rv
        for entry in self._entries[i:]:
            if (kinds is None or entry.kind in kinds) and may_see(who, entry):
                out.append(entry.line)
                if len(out) >= limit:
                    upto = entry.rv
                    break
        return out, upto


__all__ = ["CAPACITY", "ChangeFeed", "line", "may_see"]
