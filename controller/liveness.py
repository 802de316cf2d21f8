"""Provider liveness in memory: what a heartbeat brings that decides nothing.

A heartbeat carries two sorts of fields. Those that can change a placement
decision (``DECISION_FIELDS``: the inventory with its capacity and runtimes,
the endpoints, the agent's heartbeat period; labels are the Provider's spec
and change only through enrolment or an apply) are written to the Provider's
status, and that write wakes the Provider and Session reconcilers as any
change does. The rest, the usage figures and the time the hub last heard from
the agent, change with every beat: at 1,000 agents every 5 s that would be 200
change rows a second, each waking reconciles that then find nothing to do.
Those live here instead, like Kubernetes' node Leases: a table in memory
that the heartbeat route updates, that the API overlays onto every Provider
it serves (``overlay``), that the scheduler reads usage from, and that the
hub checkpoints to the store's meta table every ``CHECKPOINT_SECONDS`` (no
change row, no wake-up), so a restarted hub still knows when each provider
was last seen.

Readiness is judged from this table too. A provider is Ready while the hub
has heard from it within ``MISSED_BEATS`` of its periods. Nothing is written
while that holds; ``expired`` finds the leases whose time ran out, and the hub
queues only those Providers for a reconcile, which writes ``Ready=False``.
A beat from a provider that is not Ready is written to the store (see
``controller/api/agents.py``), which wakes its reconcile to flip it back.

A lease known only from the store (the hub has restarted) counts as seen no
earlier than the hub's start, as Kubernetes' node controller measures a
node's silence from when it first observed the lease: the hub could not hear
anyone while it was down, so nobody is declared gone, and nobody's Sessions
are woken, merely because the hub restarted.

Thread-safe: the API's handlers, the reconcile workers and the checkpoint
run in different threads; every method holds the lock for a few dict
operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.store import Change, Store

log = logging.getLogger("gu.hub.liveness")

Obj = dict[str, Any]

DECISION_FIELDS = ("inventory", "endpoints", "heartbeatSeconds")
"""Heartbeat fields that can change a placement decision: a change of any of them
(or a beat from a provider that is not Ready) is written to the store."""

LIVE_FIELDS = ("usage", "lastHeartbeat")
"""Heartbeat fields kept in memory only (served live by ``overlay``)."""

MISSED_BEATS = 3
"""How many heartbeat periods of silence make a provider NotReady."""

SWEEP_SECONDS = 0.5
"""How often the hub looks for leases that ran out (NotReady within this of the deadline)."""
CHECKPOINT_SECONDS = 60.0
CHECKPOINT_CHUNK = 200
"""Leases written per store transaction by ``checkpoint`` (keeps each one short)."""

LEASE_PREFIX = "lease/"

HISTORY_SAMPLES = 120
HISTORY_SPACING = 5.0
"""The usage history kept per provider for the web UI's charts: a sample at most every
``HISTORY_SPACING`` seconds, the newest ``HISTORY_SAMPLES`` of them (10 minutes; about
17 KiB per provider, 17 MiB at 1,000). In memory only: a restarted hub starts it anew."""

Sample = tuple[float, float, int]
"""(unix time, cpuPercent, memoryAvailableBytes) of one heartbeat."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Lease:
    """What the hub knows of one provider between store writes."""

    last: datetime
    """When the hub last heard from the agent (its own clock): shown as lastHeartbeat."""
    observed: datetime
    """What readiness measures silence from: ``last``, or the hub's start if later."""
    period: float
    usage: Obj | None = None
    expired: bool = False
    """``expired`` has reported it since its last beat (reported once per silence)."""
    dirty: bool = field(default=False)
    """Beaten since the last checkpoint."""

    @property
    def deadline(self) -> datetime:
        return self.observed + timedelta(seconds=MISSED_BEATS * self.period)


class Liveness:
    """The lease table (see the module doc)."""

    def __init__(self, default_period: float = 5.0, clock: Callable[[], datetime] = utcnow):
        self.default_period = default_period
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._usage_changed: set[str] = set()
        self._history: dict[str, deque[Sample]] = {}

    # ---------------------------------------------------------------- writes

    def beat(self, node: str, usage: Obj, period: float | None = None) -> datetime:
        """Record a heartbeat received now; the time stamped on it."""
        now = self.clock()
        with self._lock:
            lease = Lease(now, now, period or self.default_period, usage, dirty=True)
            self._leases[node] = lease
            self._usage_changed.add(node)
            self._sample(node, now.timestamp(), usage)
        return now

    def _sample(self, node: str, when: float, usage: Obj) -> None:
        history = self._history.get(node)
        if history is None:
            history = self._history[node] = deque(maxlen=HISTORY_SAMPLES)
        elif history and when - history[-1][0] < HISTORY_SPACING:
            return
        try:
            sample = (
                round(when, 1),
                round(float(usage.get("cpuPercent") or 0.0), 1),
                int(usage.get("memoryAvailableBytes") or 0),
            )
        except (TypeError, ValueError):
            return
        history.append(sample)

    def forget(self, node: str) -> None:
        """Drop a deleted provider's lease."""
        with self._lock:
            self._leases.pop(node, None)
            self._usage_changed.discard(node)
            self._history.pop(node, None)

    # ----------------------------------------------------------------- reads

    def lease(self, node: str, status: Obj | None = None) -> Lease | None:
        """``node``'s lease; from ``status`` (its stored Provider status) if the table has
        none or an older one (a beat written to the store, or a hub restart)."""
        stored = parse_time((status or {}).get("lastHeartbeat"))
        with self._lock:
            lease = self._leases.get(node)
            if stored is not None and (lease is None or stored > lease.last):
                period = _period((status or {}).get("heartbeatSeconds"), self.default_period)
                usage = (status or {}).get("usage")
                if lease is not None and usage is None:
                    usage = lease.usage
                lease = Lease(stored, max(stored, self.started), period, usage)
                self._leases[node] = lease
            return lease

    def overlay(self, obj: Obj) -> Obj:
        """A Provider object with its live usage and lastHeartbeat (a copy; others as is)."""
        if obj.get("kind") != "Provider":
            return obj
        with self._lock:
            lease = self._leases.get(obj["metadata"]["name"])
        if lease is None:
            return obj
        status = dict(obj.get("status") or {})
        stored = parse_time(status.get("lastHeartbeat"))
        if stored is not None and stored >= lease.last:
            return obj
        status["lastHeartbeat"] = iso(lease.last)
        if lease.usage is not None:
            status["usage"] = lease.usage
        return {**obj, "status": status}

    def take_usage_changes(self) -> dict[str, Obj]:
        """Usage reported since the last call, per node (the scheduler's one consumer)."""
        with self._lock:
            names, self._usage_changed = self._usage_changed, set()
            out: dict[str, Obj] = {}
            for name in names:
                lease = self._leases.get(name)
                if lease is not None and lease.usage is not None:
                    out[name] = lease.usage
            return out

    def usage(self, node: str) -> Obj | None:
        with self._lock:
            lease = self._leases.get(node)
            return lease.usage if lease is not None else None

    def leases(self) -> dict[str, Lease]:
        """Every lease, as of now (a copy of the table; the leases themselves are replaced,
        never changed, by a beat)."""
        with self._lock:
            return dict(self._leases)

    def history(self, node: str, last: int | None = None) -> list[Sample]:
        """``node``'s usage samples, oldest first (the newest ``last`` of them if given)."""
        with self._lock:
            samples = self._history.get(node)
            if not samples:
                return []
            if last is None or last >= len(samples):
                return list(samples)
            return [samples[i] for i in range(len(samples) - last, len(samples))]

    def expired(self, now: datetime | None = None) -> list[str]:
        """Providers whose lease ran out since their last beat, each reported once."""
        now = now or self.clock()
        out = []
        with self._lock:
            for name, lease in self._leases.items():
                if not lease.expired and lease.deadline <= now:
                    lease.expired = True
                    out.append(name)
        return out

    def due(self, now: datetime | None = None) -> bool:
        """Whether a lease would be reported by ``expired`` now."""
        now = now or self.clock()
        with self._lock:
            return any(not ls.expired and ls.deadline <= now for ls in self._leases.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    # ------------------------------------------------------------ checkpoint

    def checkpoint(self, store: Store, chunk: int = CHECKPOINT_CHUNK) -> int:
        """Write the leases beaten since the last checkpoint to the store's meta table,
        ``chunk`` per transaction; how many were written."""
        with self._lock:
            todo = []
            for name, lease in self._leases.items():
                if lease.dirty:
                    lease.dirty = False
                    todo.append((name, _encode(lease)))
        for i in range(0, len(todo), chunk):
            with store.transaction():
                for name, value in todo[i : i + chunk]:
                    store.put_meta(LEASE_PREFIX + name, value)
        return len(todo)

    def load(self, store: Store, providers: Iterable[str] | None = None) -> int:
        """Read the checkpointed leases (after a restart); those of ``providers`` only, if
        given, and the others are deleted. How many were loaded."""
        keep = set(providers) if providers is not None else None
        loaded = 0
        for key, value in store.meta_items(LEASE_PREFIX):
            name = key[len(LEASE_PREFIX) :]
            if keep is not None and name not in keep:
                store.delete_meta(key)
                continue
            lease = _decode(value, self.default_period, self.started)
            if lease is None:
                continue
            with self._lock:
                current = self._leases.get(name)
                if current is None or current.last < lease.last:
                    self._leases[name] = lease
                    if lease.usage is not None:
                        self._usage_changed.add(name)
                    loaded += 1
        return loaded


MAX_HEARTBEATS_PER_SECOND = 200.0
"""The heartbeat rate a hub asks its pool to stay under (``gu hub
--max-heartbeats-per-second``): a larger pool is asked to beat less often (Nomad's
``max_heartbeats_per_second``, Kubernetes' node leases). At ~1 ms of hub CPU a beat,
5,000 agents every 5 s took more than the hub's interpreter has."""

MAX_ASKED_PERIOD = 300.0
"""The longest period a hub asks for (and an agent accepts)."""


def asked_period(base: float, providers: int, max_rate: float) -> float:
    """The heartbeat period a hub asks of an agent that would beat every ``base`` seconds:
    ``base``, or the next multiple of it that keeps ``providers`` such agents under
    ``max_rate`` beats a second (multiples, so that a pool growing by one does not change
    every agent's period, a decision field). The agent keeps reporting ``base``: when the
    pool shrinks, it is asked for less again."""
    if max_rate <= 0 or providers <= base * max_rate:
        return base
    return min(MAX_ASKED_PERIOD, base * math.ceil(providers / (base * max_rate)))


class ProviderDecisions:
    """For each Provider, its stored readiness and decision fields (``DECISION_FIELDS``)
    at the newest resourceVersion seen: from the change feed's batches (on the API's
    loop) and from the Providers the heartbeat route reads (in its worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, Obj | None]] = {}  # name → (rv, decision)

    def note(self, name: str, rv: int, obj: Obj | None) -> None:
        """``obj`` (None: deleted) is ``name``'s Provider as of ``rv``; kept if newer."""
        decision: Obj | None = None
        if obj is not None:
            status = obj.get("status") or {}
            if is_ready(status):
                decision = {k: status.get(k) for k in DECISION_FIELDS}
        with self._lock:
            known = self._known.get(name)
            if known is None or known[0] < rv:
                self._known[name] = (rv, decision)

    def on_batch(self, batch: list[Change] | None) -> None:
        """A ``ChangeFeed`` listener: each Provider change; None (the feed started afresh)
        forgets everything."""
        if batch is None:
            with self._lock:
                self._known.clear()
            return
        for change in batch:
            if change.kind == "Provider":
                obj = None if change.type == "DELETED" else change.object
                self.note(change.name, change.rv, obj)

    def unchanged(self, name: str, decision: Obj) -> bool:
        """Whether ``name`` is known Ready with exactly ``decision`` stored."""
        with self._lock:
            known = self._known.get(name)
        return known is not None and known[1] is not None and known[1] == decision


async def keep(
    liveness: Liveness,
    store: Store,
    on_expired: Callable[[str], None],
    stop: asyncio.Event,
    *,
    sweep: float = SWEEP_SECONDS,
    checkpoint_every: float = CHECKPOINT_SECONDS,
    load_every: float | None = None,
) -> None:
    """The hub's liveness task: every ``sweep`` seconds hand each lease that ran out to
    ``on_expired`` (the hub queues that Provider's reconcile); every
    ``checkpoint_every`` seconds, and once more on ``stop``, checkpoint the leases.

    Several hubs on one store (``load_every`` set) each hear only the agents connected
    to them: each checkpoints often and reads the others' checkpoints every
    ``load_every`` seconds, and a lease that seems to have run out is first looked up
    in the store, where another hub may have heard from that agent since."""
    loop = asyncio.get_running_loop()
    next_checkpoint = loop.time() + checkpoint_every
    next_load = loop.time()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), sweep)
        if load_every is not None and (loop.time() >= next_load or liveness.due()):
            next_load = loop.time() + load_every
            try:
                await asyncio.to_thread(liveness.load, store)
            except Exception:  # the store is away: judge from what this hub heard
                log.warning("event=lease_load_failed")
        for node in liveness.expired():
            on_expired(node)
        if loop.time() >= next_checkpoint or stop.is_set():
            next_checkpoint = loop.time() + checkpoint_every
            try:
                await asyncio.to_thread(liveness.checkpoint, store)
            except Exception:  # the next checkpoint writes them: log and go on
                log.exception("event=lease_checkpoint_failed")


def is_ready(status: Obj) -> bool:
    """Whether a Provider's stored status says Ready (its ``Ready`` condition is True)."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _period(value: Any, default: float) -> float:
    try:
        period = float(value)
    except (TypeError, ValueError):
        return default
    return period if period > 0 else default


def _encode(lease: Lease) -> str:
    return json.dumps({"last": iso(lease.last), "period": lease.period, "usage": lease.usage})


def _decode(value: str, default_period: float, started: datetime) -> Lease | None:
    try:
        raw = json.loads(value)
        last = parse_time(raw["last"])
    except (ValueError, KeyError, TypeError):
        log.warning("event=lease_unreadable")
        return None
    if last is None:
        return None
    usage = raw.get("usage")
    return Lease(
        last,
        max(last, started),
        _period(raw.get("period"), default_period),
        usage if isinstance(usage, dict) else None,
    )


__all__ = [
    "CHECKPOINT_SECONDS",
    "DECISION_FIELDS",
    "HISTORY_SAMPLES",
    "LIVE_FIELDS",
    "MAX_ASKED_PERIOD",
    "MAX_HEARTBEATS_PER_SECOND",
    "MISSED_BEATS",
    "Lease",
    "Liveness",
    "ProviderDecisions",
    "asked_period",
    "is_ready",
    "keep",
]
