"""The pool at a glance, in memory: what the web UI's pages and ``/metrics`` read.

The providers page shows every provider with its running tasks and the free
capacity left after what its placements hold; ``/metrics`` counts providers by
readiness and placements by state and runtime. Reading that from the store on
every poll would decode every Provider and Placement each time (10,000
placements at 1,000 providers, several pages open, one poll a second each).
Instead a ``PoolView`` follows the hub's change feed (``ChangeFeed.listen``):
each change costs one dict update, and a page's poll reads memory. The live
usage (CPU %, memory, disk, last seen) comes from the lease table
(``controller.liveness``), which heartbeats update without any store write.

The rows a page polls are built at most once per ``ROWS_TTL`` per caller scope
(admin, or one app) and shared by every page of that scope as encoded JSON, so
five open pages cost about what one does.

Thread-safe: the feed applies changes on the API's event loop; the UI routes
run in the thread pool and take a snapshot of the dicts under the lock (a few
dict copies), then build outside it, so the loop never waits behind a page.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.auth import Principal
from controller.liveness import Lease, Liveness, is_ready, parse_time
from controller.policy import policies_for, provider_reason
from controller.reconcilers.placement import holds_of, provider_labels
from controller.store import Change, Store
from specs.kinds import ImagePolicy

log = logging.getLogger("gu.hub.poolview")

Obj = dict[str, Any]

ACTIVE = frozenset(("Pending", "Pulling", "Starting", "Running", "Suspended"))
"""Placement states that occupy their provider (a task on the providers page)."""

ROWS_TTL = 0.5
"""How long the index of every provider is used again for the same scope (seconds)."""

PAGE_ROWS = 100
"""Rows per page of the providers table."""

SORT_KEYS = ("name", "cores", "cpu", "mem", "disk", "tasks", "ready", "seen")

SPARK_SAMPLES = 36
"""CPU samples sent with each row for its sparkline (3 minutes at one per 5 s)."""


@dataclass(frozen=True, slots=True)
class PlacementRow:
    """What the pool view keeps of one Placement."""

    name: str
    session: str
    app: str
    node: str | None
    state: str
    runtime: str
    cpu: float
    memory_mib: float

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def placement_row(obj: Obj) -> PlacementRow:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    cpu, mem = holds_of(obj)
    return PlacementRow(
        name=obj["metadata"]["name"],
        session=str(spec.get("session") or ""),
        app=str(spec.get("app") or ""),
        node=spec.get("node") or None,
        state=str(status.get("state") or "Pending"),
        runtime=str((spec.get("workload") or {}).get("runtime") or ""),
        cpu=cpu,
        memory_mib=mem,
    )


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What filtering and sorting the providers table needs of one provider."""

    node: str
    name: str
    cores: int
    cpu: float
    mem_used: float
    disk_free: int
    tasks: int
    ready: bool
    seen: float
    free_cpu: float
    free_memory_mib: float
    labels: dict[str, str]
    obj: Obj


@dataclass(frozen=True)
class TableQuery:
    """Which providers the table shows, in which order, which page of them."""

    sort: str = "name"
    descending: bool = False
    labels: tuple[tuple[str, str | None], ...] = ()
    """``key=value`` pairs a provider's labels must have (value None: the key at all)."""
    min_cpu: float = 0.0
    min_memory_mib: float = 0.0
    page: int = 0
    size: int = PAGE_ROWS

    @staticmethod
    def parse_labels(text: str) -> tuple[tuple[str, str | None], ...]:
        """``zone=lab,gpu`` → ``(("zone", "lab"), ("gpu", None))``."""
        out: list[tuple[str, str | None]] = []
        for part in text.split(","):
            key, eq, value = part.strip().partition("=")
            if key.strip():
                out.append((key.strip(), value.strip() if eq else None))
        return tuple(out)

    def selects(self, e: IndexEntry) -> bool:
        if e.free_cpu < self.min_cpu or e.free_memory_mib < self.min_memory_mib:
            return False
        return all((k in e.labels) if v is None else e.labels.get(k) == v for k, v in self.labels)

    def sort_key(self, e: IndexEntry) -> Any:
        return {
            "name": (e.name or e.node).lower(),
            "cores": e.cores,
            "cpu": e.cpu,
            "mem": e.mem_used,
            "disk": e.disk_free,
            "tasks": e.tasks,
            "ready": e.ready,
            "seen": e.seen,
        }.get(self.sort, e.node)


def index_entry(snap: Snapshot, obj: Obj, lease: Lease | None) -> IndexEntry:
    """``obj``'s entry, its usage and last-seen from ``lease`` when newer than stored."""
    name = obj["metadata"]["name"]
    status = obj.get("status") or {}
    inv = status.get("inventory") or {}
    usage = status.get("usage") or {}
    seen = parse_time(status.get("lastHeartbeat"))
    if lease is not None and (seen is None or lease.last > seen):
        seen = lease.last
        usage = lease.usage or usage
    cores = int((inv.get("cpu") or {}).get("cores") or 0)
    memory = int(inv.get("memoryBytes") or 0)
    active = snap.active_on(name)
    available = usage.get("memoryAvailableBytes")
    free_cpu, free_memory = free_of(cores, memory, active)
    return IndexEntry(
        node=name,
        name=str((obj.get("spec") or {}).get("displayName") or ""),
        cores=cores,
        cpu=float(usage.get("cpuPercent") or 0.0),
        mem_used=1.0 - available / memory if memory and available is not None else 0.0,
        disk_free=int(usage.get("storageFreeBytes") or 0),
        tasks=len(active),
        ready=is_ready(status),
        seen=seen.timestamp() if seen is not None else 0.0,
        free_cpu=free_cpu,
        free_memory_mib=free_memory,
        labels=provider_labels(obj),
        obj=obj,
    )


@dataclass(frozen=True)
class Snapshot:
    providers: dict[str, Obj]
    placements: dict[str, PlacementRow]
    by_node: dict[str, tuple[str, ...]]
    policies: list[ImagePolicy]

    def active_on(self, node: str) -> list[PlacementRow]:
        """The placements that occupy ``node`` now."""
        found = (self.placements.get(n) for n in self.by_node.get(node, ()))
        return [p for p in found if p is not None and p.active]


def free_of(cores: int, memory_bytes: int, active: list[PlacementRow]) -> tuple[float, float]:
    """(cores, MiB) a provider has left after what its active placements hold."""
    return (
        round(cores - sum(p.cpu for p in active), 3),
        round(memory_bytes / (1 << 20) - sum(p.memory_mib for p in active)),
    )


class PoolView:
    """Providers, placements and image policies, following the change feed (module doc)."""

    KINDS = ("Provider", "Placement", "ImagePolicy")

    def __init__(self, store: Store, liveness: Liveness) -> None:
        self.store = store
        self.liveness = liveness
        self._lock = threading.Lock()
        self._providers: dict[str, Obj] = {}
        self._placements: dict[str, PlacementRow] = {}
        self._by_node: dict[str, tuple[str, ...]] = {}
        self._policies: dict[str, ImagePolicy] = {}
        self._indexes: dict[tuple[str, str], tuple[float, Snapshot, list[IndexEntry]]] = {}
        self.version = 0
        """Bumped with every change applied (a page's rows are rebuilt after one)."""

    # ------------------------------------------------------------- filling

    def load(self) -> None:
        """Read the three kinds from the store (at start, and when the feed starts afresh)."""
        providers = {o["metadata"]["name"]: o for o in self.store.list("Provider")}
        placements = [placement_row(o) for o in self.store.list("Placement")]
        policies = {}
        for o in self.store.list("ImagePolicy"):
            parsed = _policy(o)
            if parsed is not None:
                policies[o["metadata"]["name"]] = parsed
        with self._lock:
            self._providers = providers
            self._placements = {p.name: p for p in placements}
            self._by_node = {}
            for p in placements:
                if p.node:
                    self._by_node[p.node] = (*self._by_node.get(p.node, ()), p.name)
            self._policies = policies
            self._indexes.clear()
            self.version += 1

    def on_changes(self, batch: list[Change] | None) -> None:
        """The feed's listener: apply a batch of changes (None: reload everything)."""
        if batch is None:
            self.load()
            return
        with self._lock:
            for change in batch:
                if change.kind in self.KINDS:
                    self._apply(change)
            self.version += 1

    def _apply(self, change: Change) -> None:
        name = change.name
        gone = change.type == "DELETED"
        if change.kind == "Provider":
            if gone:
                self._providers.pop(name, None)
            else:
                self._providers[name] = change.object
        elif change.kind == "ImagePolicy":
            parsed = None if gone else _policy(change.object)
            if parsed is None:
                self._policies.pop(name, None)
            else:
                self._policies[name] = parsed
        else:
            old = self._placements.pop(name, None)
            new = None if gone else placement_row(change.object)
            if old is not None and old.node and (new is None or new.node != old.node):
                left = tuple(n for n in self._by_node.get(old.node, ()) if n != name)
                if left:
                    self._by_node[old.node] = left
                else:
                    self._by_node.pop(old.node, None)
            if new is not None:
                self._placements[name] = new
                if new.node and (old is None or old.node != new.node):
                    self._by_node[new.node] = (*self._by_node.get(new.node, ()), name)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                dict(self._providers),
                dict(self._placements),
                dict(self._by_node),
                list(self._policies.values()),
            )

    # --------------------------------------------------------------- reads

    def provider_table(self, who: Principal, query: TableQuery | None = None) -> bytes:
        """One page of the providers table for ``who`` as JSON: the providers ``query``
        selects, sorted, and only its page's rows built in full (the page draws 100 rows
        of 1,000 providers; filtering and sorting happen here, on a light index of every
        provider that is rebuilt at most every ``ROWS_TTL`` per scope)."""
        q = query or TableQuery()
        snap, index = self._index(who)
        matched = [e for e in index if q.selects(e)]
        matched.sort(key=lambda e: e.node)
        matched.sort(key=q.sort_key, reverse=q.descending)  # stable: ties stay by node id
        pages = max(1, -(-len(matched) // q.size))
        page = min(q.page, pages - 1)
        rows = [
            self.provider_row(snap, e.obj, who)
            for e in matched[page * q.size : (page + 1) * q.size]
        ]
        return json.dumps(
            {
                "now": time.time(),
                "total": len(index),
                "ready": sum(1 for e in index if e.ready),
                "matched": len(matched),
                "page": page,
                "pages": pages,
                "providers": rows,
            },
            separators=(",", ":"),
        ).encode()

    def _index(self, who: Principal) -> tuple[Snapshot, list[IndexEntry]]:
        scope = ("admin", "") if who.role == "admin" else (who.role, who.name)
        now = time.monotonic()
        with self._lock:
            cached = self._indexes.get(scope)
        if cached is not None and now - cached[0] < ROWS_TTL:
            return cached[1], cached[2]
        snap = self.snapshot()
        leases = self.liveness.leases()
        index = [
            index_entry(snap, obj, leases.get(name))
            for name, obj in snap.providers.items()
            if may_use(who, obj, snap.policies)
        ]
        with self._lock:
            self._indexes[scope] = (now, snap, index)
        return snap, index

    def provider_row(
        self, snap: Snapshot, obj: Obj, who: Principal, spark: int = SPARK_SAMPLES
    ) -> Obj:
        """One provider as the UI shows it (live usage overlaid; tasks ``who`` may see)."""
        obj = self.liveness.overlay(obj)
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        inv = status.get("inventory") or {}
        usage = status.get("usage") or {}
        cpu_info = inv.get("cpu") or {}
        os_info = inv.get("os") or {}
        active = snap.active_on(name)
        cores = int(cpu_info.get("cores") or 0)
        memory = int(inv.get("memoryBytes") or 0)
        infos = {r.get("name"): r for r in inv.get("runtimeInfo") or []}
        free_cpu, free_memory = free_of(cores, memory, active)
        return {
            "node": name,
            "name": spec.get("displayName") or "",
            "labels": provider_labels(obj),
            "os": " ".join(x for x in (os_info.get("name"), os_info.get("version")) if x),
            "arch": cpu_info.get("architecture") or "",
            "cores": cores,
            "threads": int(cpu_info.get("threads") or 0),
            "cpu": usage.get("cpuPercent"),
            "memTotal": memory,
            "memAvailable": usage.get("memoryAvailableBytes"),
            "diskTotal": int(inv.get("storageBytes") or 0),
            "diskFree": usage.get("storageFreeBytes"),
            "freeCpu": free_cpu,
            "freeMemoryMiB": free_memory,
            "taskCount": len(active),
            "tasks": [
                {"placement": p.name, "session": p.session, "state": p.state}
                for p in active
                if who.role == "admin" or p.app == who.name
            ],
            "runtimes": [
                {"name": r, "accel": (infos.get(r) or {}).get("accel")}
                for r in inv.get("runtimes") or []
            ],
            "ready": is_ready(status),
            "lastSeen": status.get("lastHeartbeat"),
            "spark": [s[1] for s in self.liveness.history(name, spark)],
        }

    def provider_detail(self, who: Principal, node: str) -> Obj | None:
        """One provider with its full usage history and its placements (None: not visible)."""
        snap = self.snapshot()
        obj = snap.providers.get(node)
        if obj is None or not may_use(who, obj, snap.policies):
            return None
        row = self.provider_row(snap, obj, who)
        row["history"] = [
            {"t": t, "cpu": cpu, "memAvailable": mem} for t, cpu, mem in self.liveness.history(node)
        ]
        row["placements"] = [
            {"placement": p.name, "session": p.session, "app": p.app, "state": p.state,
             "runtime": p.runtime}
            for p in (snap.placements.get(n) for n in snap.by_node.get(node, ()))
            if p is not None and (who.role == "admin" or p.app == who.name)
        ]  # fmt: skip
        return row

    def counts(self) -> tuple[Counter[bool], Counter[tuple[str, str]]]:
        """(providers by readiness, placements by (state, runtime)) for ``/metrics``."""
        snap = self.snapshot()
        ready: Counter[bool] = Counter()
        for obj in snap.providers.values():
            ready[is_ready(obj.get("status") or {})] += 1
        states: Counter[tuple[str, str]] = Counter(
            (p.state, p.runtime) for p in snap.placements.values()
        )
        return ready, states


def may_use(who: Principal, provider: Obj, policies: Sequence[ImagePolicy]) -> bool:
    """Whether ``who`` sees ``provider`` on the UI: the admin every one, an app those some
    ImagePolicy of its lets it run on (none without a policy: default deny)."""
    if who.role == "admin":
        return True
    if who.role != "app":
        return False
    node = provider["metadata"]["name"]
    labels = provider_labels(provider)
    return any(provider_reason(p, node, labels) is None for p in policies_for(who.name, policies))


def _policy(obj: Obj) -> ImagePolicy | None:
    try:
        return ImagePolicy.model_validate(obj)
    except ValueError:
        log.warning("event=poolview_policy_unreadable name=%s", obj["metadata"]["name"])
        return None


__all__ = ["ACTIVE", "PAGE_ROWS", "SORT_KEYS", "PlacementRow", "PoolView", "TableQuery", "may_use"]
