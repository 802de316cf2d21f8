"""Planning one pass over a Session: what it should write (pure, no I/O).

``plan_session`` compares what a live Session wants with its placements and
the providers — node loss, template changes, slots, suspend, scheduling (see
the package docstring) — and returns a :class:`SessionPlan`, the writes in
the order they are applied; ``plan_deletion`` does the same for a Session
being deleted; ``attach_admissions`` gives every bound, active placement the
hub-signed admission for its node. Testable without a store or a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.liveness import iso
from controller.policy import Admit
from controller.reconcilers.placement import (
    NODE_LOST_ANNOTATION,
    TERMINAL_STATES,
    is_lost,
    new_placement,
    placement_name,
    resources_of,
    state_of,
)
from controller.reconcilers.preemption import NodeChoice
from controller.reconcilers.session.queue import Ahead
from controller.reconcilers.session.status import (
    DELETED,
    NODE_LOST,
    POLICY_VIOLATION,
    PREEMPTED,
    PREEMPTING,
    RECONCILING,
    REPLACING,
    RESUMED,
    SCHEDULED,
    SESSION_FINALIZER,
    UNSCHEDULABLE,
    conditions_of,
    count_states,
    placement_summary,
    running_or_starting,
    session_status,
)
from controller.reconcilers.vnet import Allocator
from controller.scheduler import Allowed, Decision, RankedNodes, schedule
from specs.kinds import Session
from specs.meta import set_condition

Obj = dict[str, Any]

_TEMPLATE_FIELDS = ("app", "workload", "restartPolicy", "network")
_EVENT_ITEMS = 10
_REQUEUE_SLACK = 0.05  # wake just after a deadline, not just before it
_EPSILON = 1e-9
#: unbound placements a Session keeps while its slots wait for providers: one, whatever
#: its count (``count: 10000`` on three providers is three placements and one waiting,
#: and the Session's reason says how many slots wait), so an unfillable count costs
#: neither rows nor retries per slot
MAX_UNBOUND = 1
#: a pass that yielded to a Session ahead of it looks again this soon (the one ahead is
#: queued at once and has placed by then)
YIELD_RETRY = 0.2

#: ``preempt(want, exclude)``: up to ``want`` nodes where preempting lower-priority work
#: makes room (``controller.reconcilers.preemption.find_preemptions`` bound to the pass)
Preempt = Callable[[int, AbstractSet[str]], list[NodeChoice]]


@dataclass(frozen=True)
class ResolvedPriority:
    """A Session's priority: its class (None: no Priority applies) and what it may do."""

    name: str | None = None
    value: int = 0
    preemption_policy: str = "PreemptLowerPriority"
    on_preempted: str = "Suspend"

    @property
    def label(self) -> str:
        """``urgent=1000``, or ``0`` without a class."""
        return f"{self.name}={self.value}" if self.name else str(self.value)


NO_PRIORITY = ResolvedPriority()


@dataclass
class SessionPlan:
    """The writes one pass wants, in the order they are applied."""

    placement_status: dict[str, tuple[Obj, Obj]] = field(default_factory=dict)
    placement_spec: dict[str, Obj] = field(default_factory=dict)
    create: list[Obj] = field(default_factory=list)
    delete: dict[str, Obj] = field(default_factory=dict)
    status: Obj | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    ensure_finalizer: bool = False
    remove_finalizer: bool = False
    requeue_after: float | None = None
    #: events on other Sessions (the victims of a preemption): (session, reason, message, type)
    other_events: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: after this pass the Session waits for capacity: unbound placements, and preempted
    #: ones that wait for room on their node to resume ((node, cpu) each)
    unbound: int = 0
    to_resume: list[tuple[str, float]] = field(default_factory=list)
    #: whether it looked for room and found none (False: it yielded to a Session ahead)
    unfit: bool = False
    #: where it stood in the wait queue, if the pass had to ask
    ahead: Ahead | None = None
    #: slots this pass bound or resumed (it took capacity: the next waiter may fit too)
    took: int = 0

    def edit(self, placement: Obj) -> Obj:
        """A copy of ``placement`` to change spec/annotations on (one per placement)."""
        name = placement["metadata"]["name"]
        if name not in self.placement_spec:
            meta = dict(placement["metadata"])
            meta["annotations"] = dict(meta.get("annotations") or {})
            self.placement_spec[name] = {
                **placement,
                "metadata": meta,
                "spec": dict(placement["spec"]),
            }
        return self.placement_spec[name]

    def set_status(self, placement: Obj, status: Obj) -> None:
        """Write ``status`` on ``placement`` (guarded by the resourceVersion we read)."""
        if status != placement.get("status"):
            self.placement_status[placement["metadata"]["name"]] = (placement, status)

    def current(self, placement: Obj) -> Obj:
        """``placement`` as it will be once the plan is applied."""
        name = placement["metadata"]["name"]
        out = self.placement_spec.get(name, placement)
        if name in self.placement_status:
            out = {**out, "status": self.placement_status[name][1]}
        return out

    def wake_at(self, seconds: float) -> None:
        """Ask for a requeue no later than ``seconds`` from now."""
        seconds = max(seconds, 0.0) + _REQUEUE_SLACK
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds


def node_lost(
    node: str, nodes: RankedNodes, now: datetime, grace: float
) -> tuple[str | None, float | None]:
    """(why the placement's node counts as lost, or None; seconds until it would be)."""
    view = nodes.get(node)
    if view is None:
        return f"provider {node} is gone", None
    if view.ready:
        return None, None
    if view.not_ready_since is None:
        return None, grace
    elapsed = (now - view.not_ready_since).total_seconds()
    if elapsed >= grace:
        return f"provider {node} NotReady for {elapsed:.0f}s (grace {grace:g}s)", None
    return None, grace - elapsed


def summarize(items: list[str]) -> str:
    shown = ", ".join(items[:_EVENT_ITEMS])
    more = len(items) - _EVENT_ITEMS
    return shown + (f" and {more} more" if more > 0 else "")


def _template(session: Session) -> Obj:
    spec = session.spec
    return {
        "app": spec.app,
        "workload": spec.workload.model_dump(mode="json"),
        "restartPolicy": spec.restartPolicy,
        "network": spec.network,
    }


def plan_session(
    obj: Obj,
    session: Session,
    placements: list[Obj],
    nodes: RankedNodes,
    *,
    now: datetime,
    node_grace: float,
    retry_unschedulable: float,
    problems: list[str],
    taken: Callable[[str], bool],
    allowed: Allowed | None = None,
    violation: str | None = None,
    priority: ResolvedPriority = NO_PRIORITY,
    ahead: Callable[[], Ahead] | None = None,
    preempt: Preempt | None = None,
    interfaces: Allocator | None = None,
) -> SessionPlan:
    """What one pass over a live Session should write (pure; see the module docstring).

    ``obj`` is the stored Session, ``session`` its parsed form, ``placements``
    its placements by name, ``taken(name)`` whether a placement name is in use.
    ``ahead()`` says where it stands in the wait queue (asked only by a pass that
    would bind, resume or preempt; kept in ``plan.ahead``): while a Session ahead
    of it could use what is free (``ready``) it does none of these.
    ``preempt`` (None: ``preemptionPolicy: Never``) finds victims. ``interfaces``
    (a Session on a VirtualNetwork) gives each placement it binds its address and MAC;
    with none free the placement stays unbound, saying so.
    """

    def where() -> Ahead:
        if plan.ahead is None:
            plan.ahead = ahead() if ahead is not None else Ahead()
        return plan.ahead

    plan = SessionPlan()
    spec = session.spec
    name = session.metadata.name
    policy = spec.restartPolicy
    want = len(spec.providers.nodes) if spec.providers.nodes is not None else spec.providers.count
    template = _template(session)
    target = "Suspended" if spec.suspend else "Running"
    gone: set[str] = set()
    retiring: set[str] = set()
    lost_msgs: list[str] = []
    replaced: list[str] = []
    violations: list[str] = []

    # 1. node loss, retirements in progress, template changes
    for p in placements:
        pname = p["metadata"]["name"]
        pspec = p["spec"]
        state = state_of(p)
        node = pspec.get("node")
        retired = pspec.get("desiredState") == "Stopped" and not is_lost(p)
        if node and state not in TERMINAL_STATES and not is_lost(p):
            why, deadline = node_lost(node, nodes, now, node_grace)
            if why is not None:
                lost_msgs.append(f"{pname}: {why}")
                failed = {**p["status"], "state": "Failed", "reason": NODE_LOST, "message": why}
                plan.set_status(p, failed)
                if retired or policy != "Never":
                    plan.delete[pname] = p
                    gone.add(pname)
                else:
                    edited = plan.edit(p)
                    edited["metadata"]["annotations"][NODE_LOST_ANNOTATION] = why
                    edited["spec"]["desiredState"] = "Stopped"
                continue
            if deadline is not None:
                plan.wake_at(deadline)
        if node and not retired and running_or_starting(p):
            # ImagePolicy at reconcile time: a policy tightened after admission stops
            # what it no longer allows
            bound_view = nodes.get(node)
            why = violation or (allowed(bound_view) if allowed and bound_view else None)
            if why:
                violations.append(f"{pname}: {why}")
                plan.edit(p)["spec"]["desiredState"] = "Stopped"
                plan.set_status(p, {**p["status"], "reason": POLICY_VIOLATION, "message": why})
                retiring.add(pname)
                continue
        if retired:
            if state in TERMINAL_STATES or not node:
                plan.delete[pname] = p
                gone.add(pname)
            else:
                retiring.add(pname)
            continue
        if running_or_starting(p) and any(pspec.get(k) != template[k] for k in _TEMPLATE_FIELDS):
            replaced.append(pname)
            if not node:
                plan.delete[pname] = p
                gone.add(pname)
            else:
                plan.edit(p)["spec"]["desiredState"] = "Stopped"
                retiring.add(pname)

    # 2. slots: everything not gone or retiring fills one; retire what is too much
    view = {p["metadata"]["name"]: plan.current(p) for p in placements}
    kept = [view[n] for n in sorted(view) if n not in gone and n not in retiring]
    surplus = len(kept) - want
    if surplus > 0:
        active = [p for p in kept if running_or_starting(p)]
        # bound and running first, so the unbound and the not-yet-running are retired first
        active.sort(key=lambda p: (p["spec"].get("node") is None, state_of(p) != "Running"))
        for p in active[-surplus:]:
            pname = p["metadata"]["name"]
            if p["spec"].get("node"):
                plan.edit(p)["spec"]["desiredState"] = "Stopped"
                retiring.add(pname)
            else:
                plan.delete[pname] = p
                gone.add(pname)
        kept = [p for p in kept if p["metadata"]["name"] not in gone | retiring]
    need = max(0, want - len(kept))

    # 3. desired state of what stays; a preempted placement resumes (same provider)
    # once its node has room for its cpu again
    resumed: list[str] = []
    for p in kept:
        if not running_or_starting(p):
            continue
        pspec = p["spec"]
        if (pspec.get("priority") or 0) != priority.value or (
            pspec.get("onPreempted") or "Suspend"
        ) != priority.on_preempted:
            edited = plan.edit(p)
            edited["spec"]["priority"] = priority.value
            edited["spec"]["onPreempted"] = priority.on_preempted
        preemption = pspec.get("preemption")
        if preemption:
            node = pspec.get("node") or ""
            cpu, _ = resources_of(p)
            if room_to_resume(nodes, node, cpu) and not spec.suspend and not where().ready:
                edited = plan.edit(p)
                edited["spec"].pop("preemption", None)
                edited["spec"]["desiredState"] = target
                plan.took += 1
                resumed.append(
                    f"{p['metadata']['name']} on {node} after {_since(preemption, now)} "
                    f"(preempted by Session {preemption.get('session')})"
                )
            else:
                plan.to_resume.append((node, cpu))
            continue
        if pspec.get("desiredState") != target:
            plan.edit(p)["spec"]["desiredState"] = target

    # 4. scheduling
    unbound = [p for p in kept if not p["spec"].get("node") and running_or_starting(p)]
    scheduled: list[str] = []
    preempting: list[str] = []
    unschedulable = ""
    created: list[Obj] = []
    if (unbound or need) and not problems and not violation and not spec.suspend:
        exclude = {
            p["spec"]["node"] for p in kept if p["spec"].get("node") and running_or_starting(p)
        }
        wanted = len(unbound) + need
        standing = where()
        blocked = bool(standing.ready)
        if blocked:
            decision = Decision([], standing.message)
        elif interfaces is not None and not interfaces.has_room():
            decision = Decision([], interfaces.full_reason())  # (and nothing is preempted)
        else:
            decision = schedule(session, nodes, wanted, allowed, exclude)
        chosen = list(decision.nodes)
        room = interfaces is None or interfaces.has_room()
        if len(chosen) < wanted and preempt is not None and not blocked and room:
            for choice in preempt(wanted - len(chosen), exclude | set(chosen)):
                chosen.append(choice.node)
                preempting += _mark_victims(plan, choice, name, priority, now)
        unschedulable = decision.reason
        if standing.message and not blocked:
            unschedulable = f"{unschedulable}; {standing.message}" if unschedulable else ""
        plan.unfit = len(chosen) < wanted and not blocked
        plan.took += len(chosen)
        waiting = wanted - len(chosen)  # slots no provider takes now
        if waiting > MAX_UNBOUND and unschedulable:
            unschedulable = f"{waiting} of {want} slots waiting: {unschedulable}"
        left_unbound = 0
        for p in unbound:
            iface = None
            if chosen and interfaces is not None and not p["spec"].get("networkInterface"):
                iface = interfaces.assign(p["metadata"]["name"])
                if iface is None:
                    unschedulable = interfaces.full_reason()
                    chosen = []  # nothing binds without an address
            if chosen:
                node = chosen.pop(0)
                edited = plan.edit(p)
                edited["spec"]["node"] = node
                if iface is not None:
                    edited["spec"]["networkInterface"] = iface
                plan.set_status(p, {"state": "Pending"})
                scheduled.append(f"{p['metadata']['name']} → {node}")
            elif left_unbound >= MAX_UNBOUND:  # a slot marker too many: the Session says it
                plan.delete[p["metadata"]["name"]] = p
                gone.add(p["metadata"]["name"])
            else:
                left_unbound += 1
                plan.set_status(
                    p, {"state": "Pending", "reason": UNSCHEDULABLE, "message": unschedulable}
                )
        copied = {k: template[k] for k in _TEMPLATE_FIELDS}
        for _ in range(need):
            node = chosen.pop(0) if chosen else None
            pname = placement_name(name)
            while taken(pname) or any(c["metadata"]["name"] == pname for c in created):
                pname = placement_name(name)
            iface = None
            if node is not None and interfaces is not None:
                iface = interfaces.assign(pname)
                if iface is None:
                    unschedulable = interfaces.full_reason()
                    node, chosen = None, []  # nothing binds without an address
            if node is None:
                if left_unbound >= MAX_UNBOUND:
                    break  # waits as a count in the Session's reason, not as a placement
                left_unbound += 1
            created.append(
                new_placement(
                    pname,
                    name,
                    {**copied, "priority": priority.value, "onPreempted": priority.on_preempted},
                    node,
                    target,
                    unschedulable,
                )
            )
            if iface is not None:
                created[-1]["spec"]["networkInterface"] = iface
            if node is not None:
                scheduled.append(f"{pname} → {node}")
        plan.create = created
        if created and SESSION_FINALIZER not in (obj["metadata"].get("finalizers") or []):
            plan.ensure_finalizer = True
    elif unbound:
        unschedulable = str(unbound[0]["status"].get("message") or "")

    # 5. status
    final = [plan.current(p) for p in placements if p["metadata"]["name"] not in gone]
    final += created
    still_unbound = [
        p
        for p in final
        if not p["spec"].get("node")
        and p["metadata"]["name"] not in retiring
        and state_of(p) not in TERMINAL_STATES
    ]
    blocked = plan.ahead is not None and bool(plan.ahead.ready)
    if still_unbound and not problems and not violation and not spec.suspend:
        plan.wake_at(YIELD_RETRY if blocked else retry_unschedulable)
        plan.unbound = len(still_unbound)
    if plan.to_resume:
        plan.wake_at(YIELD_RETRY if blocked else retry_unschedulable)
        plan.unfit = plan.unfit or not blocked
    plan.status = session_status(
        obj,
        session,
        final,
        retiring,
        want=want,
        problems=problems,
        unschedulable=unschedulable if still_unbound and not spec.suspend else "",
        now=now,
        violation=violation or (violations[0] if violations else ""),
    )

    # 6. events
    if violations:
        plan.events.append((POLICY_VIOLATION, "stopping " + summarize(violations), "Warning"))
    if lost_msgs:
        plan.events.append((NODE_LOST, summarize(lost_msgs), "Warning"))
    if replaced:
        plan.events.append(
            (REPLACING, "spec changed, replacing " + summarize(sorted(replaced)), "Normal")
        )
    if preempting:
        plan.events.append(
            (PREEMPTING, f"at priority {priority.label}: " + summarize(preempting), "Normal")
        )
    if resumed:
        plan.events.append((RESUMED, summarize(resumed), "Normal"))
    if scheduled:
        plan.events.append((SCHEDULED, summarize(scheduled), "Normal"))
    if still_unbound and unschedulable and not problems and not spec.suspend:
        plan.events.append(
            (UNSCHEDULABLE, f"{len(still_unbound)} placement(s): {unschedulable}", "Warning")
        )
    return plan


def room_to_resume(nodes: RankedNodes, node: str, cpu: float) -> bool:
    """Whether a preempted placement needing ``cpu`` may resume on ``node`` (Ready, with
    that much cpu free: it holds its memory still)."""
    home = nodes.get(node)
    return home is not None and home.ready and cpu <= home.free_cpu + _EPSILON


def _since(preemption: Obj, now: datetime) -> str:
    try:
        at = datetime.fromisoformat(str(preemption.get("at")))
    except ValueError:
        return "a while"
    return f"{max(0.0, (now - at).total_seconds()):.1f}s"


def _mark_victims(
    plan: SessionPlan, choice: NodeChoice, name: str, priority: ResolvedPriority, now: datetime
) -> list[str]:
    """Suspend or stop ``choice``'s victims for Session ``name``; what to say about each."""
    said = []
    for victim in choice.victims:
        edited = plan.edit(victim.placement)
        edited["spec"]["desiredState"] = "Suspended" if victim.action == "Suspend" else "Stopped"
        edited["spec"]["preemption"] = {
            "session": name,
            "priority": priority.value,
            "action": victim.action,
            "at": iso(now),
        }
        verb = "suspended" if victim.action == "Suspend" else "stopped"
        said.append(
            f"{victim.name} of Session {victim.session} (priority {victim.priority}) "
            f"on {choice.node} {verb}"
        )
        plan.other_events.append(
            (
                victim.session,
                PREEMPTED,
                f"placement {victim.name} {verb} on {choice.node} for Session {name} "
                f"(priority {priority.label})",
                "Warning",
            )
        )
    return said


def attach_admissions(
    plan: SessionPlan, placements: list[Obj], admit: Admit, nodes: RankedNodes
) -> None:
    """Give every bound, active placement the hub-signed admission for its node.

    The agent refuses to start a placement without a valid one, so this runs
    over what the plan leaves (created, re-bound, and untouched placements whose
    admission is missing or stale, e.g. signed for another node or policy).
    A node's labels come from ``nodes``, the scheduler's view: no store read.
    """

    def labels(node: str) -> Mapping[str, str]:
        view = nodes.get(node)
        return view.labels if view is not None else {}

    for new in plan.create:
        node = new["spec"].get("node")
        admission = admit(new["metadata"]["name"], node, labels(node)) if node else None
        if admission is not None:
            new["spec"]["admission"] = admission
    for p in placements:
        pname = p["metadata"]["name"]
        if pname in plan.delete:
            continue
        current = plan.current(p)
        node = current["spec"].get("node")
        if not node or not running_or_starting(current):
            continue
        if current["spec"].get("desiredState") == "Stopped":
            continue
        want = admit(pname, node, labels(node))
        if want is None:
            continue
        have = current["spec"].get("admission") or {}
        if {k: v for k, v in have.items() if k != "hubSignature"} != {
            k: v for k, v in want.items() if k != "hubSignature"
        }:
            plan.edit(p)["spec"]["admission"] = want


def plan_deletion(
    obj: Obj, placements: list[Obj], nodes: RankedNodes, *, now: datetime, node_grace: float
) -> SessionPlan:
    """What one pass over a Session being deleted should write (pure).

    Stop everything, delete what has stopped (or cannot report any more), and
    drop the finalizer once nothing is left.
    """
    plan = SessionPlan()
    waiting: list[Obj] = []
    lost_msgs: list[str] = []
    for p in placements:
        pname = p["metadata"]["name"]
        node = p["spec"].get("node")
        if not node or state_of(p) in TERMINAL_STATES or is_lost(p):
            plan.delete[pname] = p
            continue
        why, deadline = node_lost(node, nodes, now, node_grace)
        if why is not None:
            lost_msgs.append(f"{pname}: {why}")
            plan.delete[pname] = p
            continue
        if p["spec"].get("desiredState") != "Stopped":
            plan.edit(p)["spec"]["desiredState"] = "Stopped"
        waiting.append(p)
        plan.wake_at(deadline if deadline is not None else node_grace)
    if lost_msgs:
        plan.events.append((NODE_LOST, summarize(lost_msgs), "Warning"))
    if not waiting:
        plan.remove_finalizer = True
        plan.events.append(
            (
                DELETED,
                f"{len(placements)} placement(s) stopped and deleted; session released",
                "Normal",
            )
        )
        return plan
    status = dict(obj.get("status") or {})
    final = [plan.current(p) for p in waiting]
    status["placements"] = [placement_summary(p) for p in final]
    status["counts"] = count_states(final, set())
    conditions = set_condition(
        conditions_of(status),
        RECONCILING,
        "True",
        "Deleting",
        f"waiting for {len(waiting)} placement(s) to stop",
        now,
    )
    status["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    plan.status = status
    return plan
