"""Placement logic: which providers should run a Session's workloads (pure, no I/O).

Flow: the Session reconciler keeps one ``RankedNodes`` (a view of every
Provider plus what its active Placements already allocate) and, for a Session
that lacks placements, calls ``schedule(session, nodes, want, allowed, exclude)``.
``schedule`` walks the Ready nodes *in rank order* and keeps the first ``want``
that pass every predicate; the caller writes the placements, and the
allocation they add reaches the pool before the next call, so resources
accumulate across the Sessions of one pass.

Predicates, in the fixed order used to explain a refusal (each node is counted
once, by the first one it fails — the way Kubernetes says
``0/3 nodes are available: 2 Insufficient memory, 1 node(s) were not ready``):

1. not Ready (its Provider's ``Ready`` condition is not True);
2. already runs this session (``exclude``: the placements must be on distinct nodes);
3. not in ``providers.nodes`` (when the Session lists explicit node ids);
4. runtime (``workload.runtime`` among the provider's ``inventory.runtimes``:
   ``lack runtime docker``);
5. os (``selector.os``, case-insensitive);
6. cores (``selector.minCores`` ≤ inventory cores);
7. labels (every ``selector.labels`` pair equal);
8. idle (``selector.idle: true`` = no active placement on the node);
9. policy (``allowed(node)`` returns a reason to refuse; ImagePolicy plugs in here);
10. cpu (``resources.cpu`` ≤ cores − allocated cpu);
11. memory (``resources.memoryMiB`` ≤ min(total − allocated, available) memory,
    and ``selector.minMemoryMiB`` ≤ available memory).

The refusal lists the most frequent cause first, ties in that order:
``0/3 providers: 2 lack memory, 1 not Ready``.

Ranking: idle nodes first, then the least loaded (allocated cpu fraction, then
memory fraction), ties by node id, so the same world always gives the same
answer.

Why ``RankedNodes``: the hub must place thousands of workloads a second over
a thousand providers. Sorting or scanning every node for every placement is
O(providers) Python work each time; instead the pool keeps Ready nodes in a
sorted list that is updated incrementally (one bisect per allocation change),
and ``schedule`` stops as soon as it has ``want`` nodes — usually after
looking at ``want`` nodes. Only a refusal walks every node (to explain itself).
A plain sequence of ``NodeView`` works too (sorted on the fly), for tests and
one-off callers.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import overload

from specs.kinds import Inventory, Session, Usage

MIB = 1024 * 1024

Allowed = Callable[["NodeView"], str | None]
"""``allowed(node)``: None if the node may run the workload, else why not."""

# refusal categories, in the order a node is tested (and the reason lists them)
NOT_READY = "not Ready"
ALREADY_USED = "already run this session"
NOT_LISTED = "not in providers.nodes"
LACK_RUNTIME = "lack runtime"  # followed by the runtime's name: "2 lack runtime docker"
WRONG_OS = "run another os"
FEW_CORES = "have too few cores"
LABELS = "do not match the labels"
NOT_IDLE = "not idle"
LACK_CPU = "lack cpu"
LACK_MEMORY = "lack memory"
_ORDER_BEFORE_POLICY = (NOT_READY, ALREADY_USED, NOT_LISTED, WRONG_OS, FEW_CORES, LABELS, NOT_IDLE)
_ORDER_AFTER_POLICY = (LACK_CPU, LACK_MEMORY)
_EPSILON = 1e-9


@dataclass
class NodeView:
    """What the scheduler knows of one provider.

    ``allocated_*`` and ``active`` sum the active (non-terminal) placements
    bound to the node; ``RankedNodes.allocate`` keeps them current. The
    derived figures (``cores``, ``memory_mib``, ``available_mib``, ``os``) are
    computed once, when the view is built from an inventory.
    """

    node_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    inventory: Inventory | None = None
    usage: Usage | None = None
    ready: bool = False
    not_ready_since: datetime | None = None
    allocated_cpu: float = 0.0
    allocated_memory_mib: float = 0.0
    active: int = 0
    cores: int = field(init=False, default=0)
    memory_mib: float = field(init=False, default=0.0)
    available_mib: float = field(init=False, default=0.0)
    os: str = field(init=False, default="")
    runtimes: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        inv = self.inventory
        if inv is not None:
            self.cores = inv.cpu.cores
            self.memory_mib = inv.memoryBytes / MIB
            self.os = inv.os.name.lower()
            self.runtimes = frozenset(inv.runtimes)
        # without a usage report, trust the inventory minus what we allocated
        self.available_mib = (
            self.usage.memoryAvailableBytes / MIB if self.usage is not None else self.memory_mib
        )

    def set_usage(self, usage: Mapping[str, object]) -> None:
        """Take a newer usage report (a heartbeat's ``usage``, as JSON)."""
        try:
            self.usage = Usage.model_validate(usage)
        except ValueError:
            return  # nonsense: keep the last good figures
        self.available_mib = self.usage.memoryAvailableBytes / MIB

    @property
    def free_cpu(self) -> float:
        """Cores not yet allocated to placements."""
        return self.cores - self.allocated_cpu

    @property
    def free_memory_mib(self) -> float:
        """Memory a new placement may take: unallocated, and actually available now."""
        return min(self.memory_mib - self.allocated_memory_mib, self.available_mib)


def rank_key(node: NodeView) -> tuple[bool, float, float, str]:
    """Sort key: idle first, then allocated cpu fraction, memory fraction, node id."""
    cpu = node.allocated_cpu / node.cores if node.cores else float("inf")
    mem = node.allocated_memory_mib / node.memory_mib if node.memory_mib else float("inf")
    return (node.active > 0, cpu, mem, node.node_id)


class RankedNodes(Sequence[NodeView]):
    """Every node, the Ready ones kept in ``rank_key`` order as allocations change.

    As a sequence it yields the Ready nodes in rank order, then the others by
    node id. ``schedule`` recognises it and skips sorting.
    """

    def __init__(self, nodes: Iterable[NodeView] = ()) -> None:
        self._nodes: dict[str, NodeView] = {}
        self._keys: dict[str, tuple[bool, float, float, str]] = {}
        self._ranked: list[tuple[bool, float, float, str]] = []
        self._not_ready: list[str] = []
        for node in nodes:
            self.upsert(node)

    # ------------------------------------------------------------- updates

    def upsert(self, node: NodeView) -> None:
        """Add ``node`` or replace the view of the same node id."""
        self.remove(node.node_id)
        self._nodes[node.node_id] = node
        if node.ready:
            key = rank_key(node)
            self._keys[node.node_id] = key
            bisect.insort(self._ranked, key)
        else:
            bisect.insort(self._not_ready, node.node_id)

    def remove(self, node_id: str) -> None:
        """Forget ``node_id`` (nothing if unknown)."""
        node = self._nodes.pop(node_id, None)
        if node is None:
            return
        key = self._keys.pop(node_id, None)
        if key is not None:
            del self._ranked[bisect.bisect_left(self._ranked, key)]
        else:
            del self._not_ready[bisect.bisect_left(self._not_ready, node_id)]

    def allocate(self, node_id: str, cpu: float, memory_mib: float, count: int = 1) -> None:
        """Add (or, with negative figures, release) an allocation on ``node_id``; re-rank it."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        old = self._keys.get(node_id)
        node.allocated_cpu += cpu
        node.allocated_memory_mib += memory_mib
        node.active += count
        if old is not None:
            del self._ranked[bisect.bisect_left(self._ranked, old)]
            key = rank_key(node)
            self._keys[node_id] = key
            bisect.insort(self._ranked, key)

    # --------------------------------------------------------------- reads

    def get(self, node_id: str) -> NodeView | None:
        """The view of ``node_id``, or None."""
        return self._nodes.get(node_id)

    def ranked_ready(self) -> Iterator[NodeView]:
        """The Ready nodes, best first."""
        nodes = self._nodes
        for key in self._ranked:
            yield nodes[key[3]]

    @property
    def ready_count(self) -> int:
        """How many nodes are Ready."""
        return len(self._ranked)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, NodeView):
            return self._nodes.get(item.node_id) is item
        return isinstance(item, str) and item in self._nodes

    def __iter__(self) -> Iterator[NodeView]:
        yield from self.ranked_ready()
        for node_id in self._not_ready:
            yield self._nodes[node_id]

    @overload
    def __getitem__(self, index: int) -> NodeView: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[NodeView]: ...

    def __getitem__(self, index: int | slice) -> NodeView | Sequence[NodeView]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("RankedNodes index out of range")
        if index < len(self._ranked):
            return self._nodes[self._ranked[index][3]]
        return self._nodes[self._not_ready[index - len(self._ranked)]]


@dataclass(frozen=True)
class Decision:
    """The nodes chosen (best first) and, when fewer than wanted, why."""

    nodes: list[str]
    reason: str = ""


@dataclass(frozen=True)
class Query:
    """What a Session asks of a node, read once per ``schedule`` (or preemption) call."""

    runtime: str
    os: str | None
    min_cores: int | None
    min_memory_mib: int | None
    labels: tuple[tuple[str, str], ...]
    idle_only: bool
    cpu: float
    memory_mib: float

    @classmethod
    def of(cls, session: Session) -> Query:
        spec = session.spec
        selector = spec.providers.selector
        resources = spec.workload.resources
        return cls(
            runtime=spec.workload.runtime,
            os=selector.os.lower() if selector is not None and selector.os else None,
            min_cores=selector.minCores if selector is not None else None,
            min_memory_mib=selector.minMemoryMiB if selector is not None else None,
            labels=tuple(selector.labels.items()) if selector is not None else (),
            idle_only=bool(selector is not None and selector.idle),
            cpu=resources.cpu,
            memory_mib=resources.memoryMiB,
        )

    def static_refusal(
        self, node: NodeView, exclude: Set[str], allowed: Allowed | None
    ) -> tuple[str | None, str | None]:
        """(the predicate ``node`` fails before resources, or None; the policy's reason, or
        None): what no preemption can change."""
        if node.node_id in exclude:
            return ALREADY_USED, None
        if node.inventory is not None and self.runtime not in node.runtimes:
            return f"{LACK_RUNTIME} {self.runtime}", None  # no inventory: lacks cpu below
        if self.os is not None and node.os != self.os:
            return WRONG_OS, None
        if self.min_cores is not None and node.cores < self.min_cores:
            return FEW_CORES, None
        if self.labels and any(node.labels.get(k) != v for k, v in self.labels):
            return LABELS, None
        if self.idle_only and node.active:
            return NOT_IDLE, None
        why = allowed(node) if allowed is not None else None
        return None, why or None

    def resource_refusal(self, node: NodeView, free_cpu: float, free_mib: float) -> str | None:
        """``LACK_CPU``/``LACK_MEMORY`` if the workload does not fit in what is free."""
        if self.cpu > free_cpu + _EPSILON:
            return LACK_CPU
        if self.memory_mib > free_mib + _EPSILON or (
            self.min_memory_mib is not None and node.available_mib < self.min_memory_mib
        ):
            return LACK_MEMORY
        return None


def schedule(
    session: Session,
    nodes: Sequence[NodeView],
    want: int,
    allowed: Allowed | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> Decision:
    """Pick up to ``want`` distinct nodes for ``session`` (see the module docstring).

    ``exclude`` holds the nodes that already run an active placement of this
    session. The result is deterministic for a given world. ``reason`` is
    empty when ``want`` nodes were found, else e.g.
    ``0/3 providers: 2 lack memory, 1 not Ready``.
    """
    if want <= 0:
        return Decision([])
    listed = session.spec.providers.nodes

    total = len(nodes)
    counts: dict[str, int] = {}
    if isinstance(nodes, RankedNodes):
        ready_total = nodes.ready_count
        lookup: Callable[[str], NodeView | None] = nodes.get
        ranked: Iterable[NodeView] = nodes.ranked_ready()
    else:
        by_id = {n.node_id: n for n in nodes}
        lookup = by_id.get
        ready_nodes = sorted((n for n in nodes if n.ready), key=rank_key)
        ready_total = len(ready_nodes)
        ranked = ready_nodes
    if total - ready_total:
        counts[NOT_READY] = total - ready_total

    if listed is not None:
        # only the listed nodes can be chosen; the other Ready ones are refused as unlisted
        candidates = [n for n in (lookup(i) for i in set(listed)) if n is not None and n.ready]
        candidates.sort(key=rank_key)
        if ready_total - len(candidates):
            counts[NOT_LISTED] = ready_total - len(candidates)
        ranked = candidates

    query = Query.of(session)
    chosen: list[str] = []
    policy: dict[str, int] = {}
    for node in ranked:
        refused, why = query.static_refusal(node, exclude, allowed)
        if why:
            policy[why] = policy.get(why, 0) + 1
            continue
        if refused is None:
            refused = query.resource_refusal(node, node.free_cpu, node.free_memory_mib)
        if refused is None:
            chosen.append(node.node_id)
            if len(chosen) == want:
                return Decision(chosen)
        else:
            counts[refused] = counts.get(refused, 0) + 1
    return Decision(chosen, _explain(len(chosen), total, counts, policy))


def _explain(chosen: int, total: int, counts: dict[str, int], policy: dict[str, int]) -> str:
    """``chosen/total providers: …``, the most frequent refusal first (ties in test order)."""
    ordered = [(c, counts[c]) for c in _ORDER_BEFORE_POLICY if counts.get(c)]
    ordered += [(c, n) for c, n in counts.items() if c.startswith(LACK_RUNTIME)]
    ordered += sorted(policy.items())
    ordered += [(c, counts[c]) for c in _ORDER_AFTER_POLICY if counts.get(c)]
    ranked = sorted(enumerate(ordered), key=lambda item: (-item[1][1], item[0]))
    parts = [f"{n} {why}" for _, (why, n) in ranked]
    if total == 0:
        parts = ["none registered"]
    elif not parts:
        parts = [f"{chosen} suitable, one placement each"]  # the count wants more
    return f"{chosen}/{total} providers: " + ", ".join(parts)


__all__ = [
    "LACK_CPU",
    "LACK_MEMORY",
    "Allowed",
    "Decision",
    "NodeView",
    "Query",
    "RankedNodes",
    "rank_key",
    "schedule",
]
