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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.reconcilers.placement import (
    is_active,
    is_preempted,
    priority_of,
    resources_of,
)
from controller.scheduler import Allowed, NodeView, Query, RankedNodes, rank_key
from specs.kinds import Session

Obj = dict[str, Any]


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


def _created(placement: Obj) -> float:
    stamp = placement["metadata"].get("creationTimestamp")
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return 0.0


def candidates_on(placements: Sequence[Obj], priority: int) -> list[Victim]:
    """The placements of ``placements`` that a Session at ``priority`` may preempt, in the
    order they are taken: lowest priority first, then newest first."""
    out = []
    for p in placements:
        spec = p["spec"]
        if (
            not is_active(p)
            or is_preempted(p)
            or spec.get("desiredState") == "Stopped"
            or p["metadata"].get("deletionTimestamp")
            or priority_of(p) >= priority
        ):
            continue
        cpu, memory = resources_of(p)
        action = "Stop" if spec.get("onPreempted") == "Stop" else "Suspend"
        out.append(
            Victim(p, priority_of(p), action, cpu, memory if action == "Stop" else 0.0, _created(p))
        )
    out.sort(key=lambda v: (v.priority, -v.created, v.name))
    return out


def victims_for(query: Query, view: NodeView, candidates: list[Victim]) -> list[Victim] | None:
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
    placements_on: Callable[[str], Sequence[Obj]],
    allowed: Allowed | None = None,
    exclude: AbstractSet[str] = frozenset(),
) -> list[NodeChoice]:
    """Up to ``want`` distinct nodes where preempting lower-priority work makes room for
    ``session`` (at ``priority``), best first (see the module docstring)."""
    if want <= 0:
        return []
    query = Query.of(session)
    listed = session.spec.providers.nodes
    views: list[NodeView] = (
        [v for v in (nodes.get(n) for n in set(listed)) if v is not None and v.ready]
        if listed is not None
        else list(nodes.ranked_ready())
    )
    choices: list[tuple[tuple[int, int, float, tuple[bool, float, float, str]], NodeChoice]] = []
    for view in views:
        refused, why = query.static_refusal(view, exclude, allowed)
        if refused is not None or why:
            continue
        candidates = candidates_on(placements_on(view.node_id), priority)
        if not candidates:
            continue
        victims = victims_for(query, view, candidates)
        if victims:
            choice = NodeChoice(view.node_id, victims)
            choices.append((choice.key(view), choice))
    choices.sort(key=lambda item: item[0])
    return [choice for _, choice in choices[:want]]


__all__ = ["NodeChoice", "Victim", "candidates_on", "find_preemptions", "victims_for"]
