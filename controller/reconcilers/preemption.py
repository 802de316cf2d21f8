"""Preemption: which lower-priority placements to suspend or stop so a Session fits (pure).

Called by the Session reconciler when ``schedule`` found fewer nodes than wanted
and the Session's Priority has ``preemptionPolicy: PreemptLowerPriority``. For
every Ready node that passes the Session's other predicates (runtime, os,
labels, policy, …: ``Query.static_refusal``), the candidates are the node's
active placements of a *strictly lower* priority that are not already
preempted or stopping. They are taken lowest priority first, then newest first,
until the workload fits; then any victim the fit does not need is given back
(highest priority first), so the set is minimal in that order.

Accounting is honest about what each kind of victim frees: a placement that
will be **suspended** (``onPreempted: Suspend``) gives back its cpu but keeps its
memory (its process, container or VM stays resident), so only victims that will
be **stopped** free memory. A node where even every candidate would not make
room is not a choice.

Among the nodes that can make room, the best are those whose victims have the
lowest highest priority, then the fewest victims, then the newest victims (the
least work lost), then the scheduler's rank; one node per wanted placement.
Nodes are tried lowest preemptible priority first, and the search stops after
``CANDIDATES_MIN`` (or ``CANDIDATES_SHARE`` of the pool) nodes that can make room:
in a pool of a thousand full providers a decision looks at a hundred.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from controller.reconcilers.placement import (
    created_of,
    is_preemptible,
    priority_of,
    resources_of,
)
from controller.scheduler import Allowed, NodeView, Query, RankedNodes, rank_key
from specs.kinds import Session

Obj = dict[str, Any]

#: how many nodes that can make room the search looks at before it chooses (Kubernetes'
#: defaults: minCandidateNodesAbsolute 100, minCandidateNodesPercentage 10)
CANDIDATES_MIN = 100
CANDIDATES_SHARE = 0.1


@dataclass(frozen=True)
class Victim:
    """One placement to preempt, with what preempting it frees."""

    placement: Obj
    priority: int
    action: str  # Suspend | Stop
    cpu: float
    memory_mib: float  # freed: 0 for a victim that is only suspended
    created: float

    @property
    def name(self) -> str:
        return str(self.placement["metadata"]["name"])

    @property
    def session(self) -> str:
        return str(self.placement["spec"].get("session") or "")


@dataclass(frozen=True)
class NodeChoice:
    """A node the Session fits on once ``victims`` are preempted."""

    node: str
    victims: list[Victim]

    def key(self, view: NodeView) -> tuple[int, int, float, tuple[bool, float, float, str]]:
        return (
            max(v.priority for v in self.victims),
            len(self.victims),
            -max(v.created for v in self.victims),
            rank_key(view),
        )


def candidates_on(placements: Iterable[Obj], priority: int) -> Iterator[Victim]:
    """The placements of ``placements`` (given lowest priority, then newest first) that a
    Session at ``priority`` may preempt, made as they are asked for."""
    for p in placements:
        if not is_preemptible(p) or priority_of(p) >= priority:
            continue
        cpu, memory = resources_of(p)
        action = "Stop" if p["spec"].get("onPreempted") == "Stop" else "Suspend"
        yield Victim(
            p, priority_of(p), action, cpu, memory if action == "Stop" else 0.0, created_of(p)
        )


def victims_for(query: Query, view: NodeView, candidates: Iterable[Victim]) -> list[Victim] | None:
    """The fewest of ``candidates`` (taken in order) whose preemption lets ``query`` fit on
    ``view``; None if even all of them would not."""
    free_cpu, free_mib = view.free_cpu, view.free_memory_mib
    chosen: list[Victim] = []
    for victim in candidates:
        if query.resource_refusal(view, free_cpu, free_mib) is None:
            break
        chosen.append(victim)
        free_cpu += victim.cpu
        free_mib += victim.memory_mib
    if not chosen or query.resource_refusal(view, free_cpu, free_mib) is not None:
        return None
    for victim in reversed(list(chosen)):  # give back what the fit does not need
        if query.resource_refusal(view, free_cpu - victim.cpu, free_mib - victim.memory_mib):
            continue
        chosen.remove(victim)
        free_cpu -= victim.cpu
        free_mib -= victim.memory_mib
    return chosen


def find_preemptions(
    session: Session,
    priority: int,
    nodes: RankedNodes,
    want: int,
    preemptible_on: Callable[[str, int], Sequence[Obj]],
    allowed: Allowed | None = None,
    exclude: AbstractSet[str] = frozenset(),
    order: Sequence[str] | None = None,
) -> list[NodeChoice]:
    """Up to ``want`` distinct nodes where preempting lower-priority work makes room for
    ``session`` (at ``priority``), best first (see the module docstring).

    ``preemptible_on(node, priority)`` gives a node's placements below ``priority``
    (``ClusterState.preemptible_on``, indexed). ``order`` (None: every Ready node) is
    the nodes to try, lowest preemptible priority first
    (``ClusterState.preemption_order``); the search stops once it has
    ``max(CANDIDATES_MIN, CANDIDATES_SHARE × Ready nodes, want)`` nodes that can make room,
    as Kubernetes' preemption does, so a decision costs what it examines, not the pool.
    """
    if want <= 0:
        return []
    query = Query.of(session)
    listed = session.spec.providers.nodes
    if listed is not None:
        names: Iterable[str] = sorted(set(listed))
    elif order is not None:
        names = order
    else:
        names = [v.node_id for v in nodes.ranked_ready()]
    enough = max(CANDIDATES_MIN, int(CANDIDATES_SHARE * nodes.ready_count), want)
    choices: list[tuple[tuple[int, int, float, tuple[bool, float, float, str]], NodeChoice]] = []
    for name in names:
        view = nodes.get(name)
        if view is None or not view.ready:
            continue
        refused, why = query.static_refusal(view, exclude, allowed)
        if refused is not None or why:
            continue
        victims = victims_for(query, view, candidates_on(preemptible_on(name, priority), priority))
        if victims:
            choice = NodeChoice(name, victims)
            choices.append((choice.key(view), choice))
            if len(choices) >= enough:
                break
    choices.sort(key=lambda item: item[0])
    return [choice for _, choice in choices[:want]]


__all__ = [
    "CANDIDATES_MIN",
    "CANDIDATES_SHARE",
    "NodeChoice",
    "Victim",
    "candidates_on",
    "find_preemptions",
    "victims_for",
]
