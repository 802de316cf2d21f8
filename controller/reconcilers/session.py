"""The Session reconciler: references, then scheduling a Session onto Placements.

One pass (level-triggered and idempotent; a converged pass writes nothing):

1. **References.** A Session names an App and maybe a Priority and a
   VirtualNetwork. While one is missing the Session is ``Stalled``/
   ``MissingReference`` (a message names each) and nothing new is scheduled;
   the watches on App, Priority and VirtualNetwork re-run it when they appear.
2. **Plan.** Under the ``ClusterState`` lock the view is refreshed from the
   change feed and ``plan_session`` (pure) compares what the Session wants with
   its placements and the providers:

   - *node loss*: an active placement whose provider has been NotReady longer
     than ``node_grace`` (from the ``Ready`` condition's transition time), or
     whose Provider is gone, is lost. With restartPolicy OnFailure/Always it is
     marked Failed/``NodeLost`` and deleted, and its slot is filled again
     elsewhere; with Never it is marked Failed/``NodeLost`` for good (the
     ``gu/node-lost`` annotation, so a returning agent cannot revive it; its
     desiredState becomes Stopped so that agent stops what it still runs) and
     the Session fails. Before the grace ends the pass asks to be requeued at
     the deadline, so loss is noticed without any new write.
   - *template changes*: ``app``, ``workload``, ``restartPolicy`` and
     ``network`` are copied into each placement. When the Session's change, an
     active placement with the old copy is replaced: desiredState Stopped, and
     deleted once the agent reports it terminal; new placements are created at
     once for the freed slots. Finished placements (Succeeded, Failed) are
     history and stay as they are. (Rejecting changes would be simpler to
     write, but a user editing a YAML file expects the edit to take effect.)
   - *slots*: want = ``providers.count`` (or ``len(providers.nodes)``). Every
     placement that is not being retired fills a slot, finished or not: the
     hub never re-runs a Succeeded or Failed placement (the agent restarts in
     place per restartPolicy; the hub replaces only what it lost with a node).
     Extra active placements (count lowered) are retired, unbound ones first.
   - *suspend*: desiredState Suspended on every active placement, Running
     again when ``suspend`` goes false; nothing new is scheduled meanwhile.
   - *scheduling*: unbound placements and missing slots go through
     ``controller.scheduler.schedule``. Chosen nodes bind the oldest unbound
     placements first (``spec.node`` set, status reason cleared), then new
     placements are created. A slot no provider can take becomes **one
     unbound placement per slot** (``node: null``, status reason
     ``Unschedulable`` and the scheduler's aggregated message), so each slot's
     fate is visible in ``gu get placements`` and binding later is a one-field
     change; they are retried on every Provider change that may help, when
     capacity is freed, and every ``2 × heartbeat`` seconds.
3. **Apply.** The writes of the plan (placement status, spec, creations,
   deletions, the Session's status and events) go in one store transaction —
   one fsync per pass, all or nothing; a ``Conflict`` (an agent wrote a status
   we were about to overwrite) rolls the pass back and the engine retries it.
   The lock is held until commit, so the next pass sees these placements.

Status: ``phase`` (Failed if a placement failed; Succeeded when want
placements succeeded; Suspended; Running when all wanted placements run or
have succeeded; else Pending), ``placements`` (name, node, state, exitCode,
reason; by name), ``counts`` (pending, running, succeeded, failed, suspended),
``observedGeneration`` and kstatus conditions: ``Ready`` (True when Running or
Succeeded), ``Reconciling`` (placements being created, started, suspended or
stopped), ``Stalled`` (``MissingReference``, ``Unschedulable`` with the
aggregated reason, or the failure — ``NodeLost``/``PlacementFailed`` — of a
Failed session, which will not progress by itself).

Deletion (``deletionTimestamp`` set; ``gu/placements`` holds the Session):
every placement gets desiredState Stopped; a placement is deleted once it is
terminal, unbound, or its node is lost; when none is left the finalizer is
removed and the store lets the Session go. A Session that reaches the hub
without the finalizer gets it before its first placement is created (in the
same transaction), so no placement can outlive its Session.

Watches: Placement → its Session (label ``gu/session``), plus the Sessions
waiting for capacity when a placement finishes; Provider → when its
readiness flips or it goes, the Sessions with placements on it, and when its
schedulable facts change (readiness, labels, inventory) the Sessions with
unbound placements. Heartbeats that change only usage wake nobody (the
periodic retry covers free memory), so a thousand providers beating every
five seconds do not keep the Session workers busy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from controller.policy import Admit, PolicyCheck, PolicyHook
from controller.reconcile import Context, Controller, Mapper, Result
from controller.reconcilers.placement import (
    NODE_LOST_ANNOTATION,
    SESSION_LABEL,
    STARTING_STATES,
    TERMINAL_STATES,
    ClusterState,
    is_lost,
    new_placement,
    placement_name,
    state_of,
)
from controller.reconcilers.refs import (
    MISSING_REFERENCE,
    READY,
    STALLED,
    being_deleted,
    missing_references,
)
from controller.scheduler import Allowed, RankedNodes, schedule
from controller.store import Store
from specs.kinds import Session
from specs.meta import Condition, get_condition, set_condition

log = logging.getLogger("gu.reconcile.session")

Obj = dict[str, Any]

SESSION_FINALIZER = "gu/placements"
"""Held by a Session until its placements have stopped on their providers."""

RECONCILING = "Reconciling"
UNSCHEDULABLE = "Unschedulable"
POLICY_VIOLATION = "PolicyViolation"
NODE_LOST = "NodeLost"
PLACEMENT_FAILED = "PlacementFailed"
INVALID_SPEC = "InvalidSpec"
REFERENCES_RESOLVED = "ReferencesResolved"
SCHEDULED = "Scheduled"
DELETED = "Deleted"
REPLACING = "Replacing"

_TEMPLATE_FIELDS = ("app", "workload", "restartPolicy", "network")
_EVENT_ITEMS = 10
_REQUEUE_SLACK = 0.05  # wake just after a deadline, not just before it


def session_problems(spec: Obj, store: Store) -> list[str]:
    """What the Session's spec names that does not exist, App first."""
    return [
        *missing_references(store, "App", [spec.get("app")]),
        *missing_references(store, "Priority", [spec.get("priority")]),
        *missing_references(store, "VirtualNetwork", [spec.get("network")]),
    ]


# ------------------------------------------------------------------- plan


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


def _summary(items: list[str]) -> str:
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
) -> SessionPlan:
    """What one pass over a live Session should write (pure; see the module docstring).

    ``obj`` is the stored Session, ``session`` its parsed form, ``placements``
    its placements by name, ``taken(name)`` whether a placement name is in use.
    """
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
        if node and not retired and _running_or_starting(p):
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
        if _running_or_starting(p) and any(pspec.get(k) != template[k] for k in _TEMPLATE_FIELDS):
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
        active = [p for p in kept if _running_or_starting(p)]
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

    # 3. desired state of what stays
    for p in kept:
        if _running_or_starting(p) and p["spec"].get("desiredState") != target:
            plan.edit(p)["spec"]["desiredState"] = target

    # 4. scheduling
    unbound = [p for p in kept if not p["spec"].get("node") and _running_or_starting(p)]
    scheduled: list[str] = []
    unschedulable = ""
    created: list[Obj] = []
    if (unbound or need) and not problems and not violation and not spec.suspend:
        exclude = {
            p["spec"]["node"] for p in kept if p["spec"].get("node") and _running_or_starting(p)
        }
        decision = schedule(session, nodes, len(unbound) + need, allowed, exclude)
        chosen = list(decision.nodes)
        unschedulable = decision.reason
        for p in unbound:
            if chosen:
                node = chosen.pop(0)
                plan.edit(p)["spec"]["node"] = node
                plan.set_status(p, {"state": "Pending"})
                scheduled.append(f"{p['metadata']['name']} → {node}")
            else:
                plan.set_status(
                    p, {"state": "Pending", "reason": UNSCHEDULABLE, "message": decision.reason}
                )
        copied = {k: template[k] for k in _TEMPLATE_FIELDS}
        for _ in range(need):
            pname = placement_name(name)
            while taken(pname) or any(c["metadata"]["name"] == pname for c in created):
                pname = placement_name(name)
            node = chosen.pop(0) if chosen else None
            created.append(new_placement(pname, name, copied, node, target, decision.reason))
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
    if still_unbound and not problems and not violation and not spec.suspend:
        plan.wake_at(retry_unschedulable)
    plan.status = _session_status(
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
        plan.events.append((POLICY_VIOLATION, "stopping " + _summary(violations), "Warning"))
    if lost_msgs:
        plan.events.append((NODE_LOST, _summary(lost_msgs), "Warning"))
    if replaced:
        plan.events.append(
            (REPLACING, "spec changed, replacing " + _summary(sorted(replaced)), "Normal")
        )
    if scheduled:
        plan.events.append((SCHEDULED, _summary(scheduled), "Normal"))
    if still_unbound and unschedulable and not problems and not spec.suspend:
        plan.events.append(
            (UNSCHEDULABLE, f"{len(still_unbound)} placement(s): {unschedulable}", "Warning")
        )
    return plan


def attach_admissions(plan: SessionPlan, placements: list[Obj], admit: Admit) -> None:
    """Give every bound, active placement the hub-signed admission for its node.

    The agent refuses to start a placement without a valid one, so this runs
    over what the plan leaves (created, re-bound, and untouched placements whose
    admission is missing or stale, e.g. signed for another node or policy).
    """
    for new in plan.create:
        node = new["spec"].get("node")
        admission = admit(new["metadata"]["name"], node) if node else None
        if admission is not None:
            new["spec"]["admission"] = admission
    for p in placements:
        pname = p["metadata"]["name"]
        if pname in plan.delete:
            continue
        current = plan.current(p)
        node = current["spec"].get("node")
        if not node or not _running_or_starting(current):
            continue
        if current["spec"].get("desiredState") == "Stopped":
            continue
        want = admit(pname, node)
        if want is None:
            continue
        have = current["spec"].get("admission") or {}
        if {k: v for k, v in have.items() if k != "hubSignature"} != {
            k: v for k, v in want.items() if k != "hubSignature"
        }:
            plan.edit(p)["spec"]["admission"] = want


def _running_or_starting(p: Obj) -> bool:
    """Active: not finished and not declared lost."""
    return state_of(p) not in TERMINAL_STATES and not is_lost(p)


def _counts(final: list[Obj], retiring: set[str]) -> dict[str, int]:
    counts = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "suspended": 0}
    for p in final:
        if p["metadata"]["name"] in retiring:
            continue
        state = "Failed" if is_lost(p) else state_of(p)
        if state in STARTING_STATES:
            counts["pending"] += 1
        elif state == "Running":
            counts["running"] += 1
        elif state == "Succeeded":
            counts["succeeded"] += 1
        elif state == "Suspended":
            counts["suspended"] += 1
        else:  # Failed, or Stopped without the hub asking: it ended without success
            counts["failed"] += 1
    return counts


def _placement_summary(p: Obj) -> Obj:
    status = p.get("status") or {}
    lost = is_lost(p)
    return {
        "name": p["metadata"]["name"],
        "node": p["spec"].get("node"),
        "state": "Failed" if lost else state_of(p),
        "exitCode": status.get("exitCode"),
        "reason": NODE_LOST if lost else str(status.get("reason") or ""),
    }


def _conditions(status: Obj) -> list[Condition]:
    return [Condition.model_validate(c) for c in status.get("conditions") or []]


def _session_status(
    obj: Obj,
    session: Session,
    final: list[Obj],
    retiring: set[str],
    *,
    want: int,
    problems: list[str],
    unschedulable: str,
    now: datetime,
    violation: str = "",
) -> Obj:
    """The Session's status given its placements as they will be after this pass."""
    spec = session.spec
    counts = _counts(final, retiring)
    failures = [
        p
        for p in sorted(final, key=lambda p: p["metadata"]["name"])
        if p["metadata"]["name"] not in retiring
        and (is_lost(p) or state_of(p) in ("Failed", "Stopped"))
    ]
    if failures:
        phase = "Failed"
    elif want and counts["succeeded"] >= want:
        phase = "Succeeded"
    elif spec.suspend:
        phase = "Suspended"
    elif counts["running"] and counts["running"] + counts["succeeded"] >= want:
        phase = "Running"
    else:
        phase = "Pending"

    stalled: tuple[str, str] | None = None
    if problems:
        stalled = (MISSING_REFERENCE, "; ".join(problems))
    elif violation:
        stalled = (POLICY_VIOLATION, violation)
    elif failures:
        first = failures[0]
        fstatus = first.get("status") or {}
        lost = is_lost(first) or fstatus.get("reason") == NODE_LOST
        detail = (
            first["metadata"]["annotations"].get(NODE_LOST_ANNOTATION)
            if is_lost(first)
            else fstatus.get("message") or fstatus.get("reason") or ""
        )
        exit_code = fstatus.get("exitCode")
        message = f"placement {first['metadata']['name']} {state_of(first).lower()}"
        if lost:
            message = f"placement {first['metadata']['name']} lost"
        if exit_code is not None:
            message += f" (exit code {exit_code})"
        if detail:
            message += f": {detail}"
        stalled = (NODE_LOST if lost else PLACEMENT_FAILED, message)
    elif unschedulable:
        stalled = (UNSCHEDULABLE, unschedulable)

    conditions = _conditions(obj.get("status") or {})
    if stalled is None and phase in ("Running", "Succeeded"):
        message = f"{counts['running']} running, {counts['succeeded']} succeeded of {want}"
        conditions = set_condition(conditions, READY, "True", phase, message, now)
    elif stalled is not None:
        conditions = set_condition(conditions, READY, "False", stalled[0], stalled[1], now)
    else:
        message = f"{counts['running']} running, {counts['pending']} pending of {want}"
        if phase == "Suspended":
            message = f"{counts['suspended']} suspended of {want}"
        conditions = set_condition(conditions, READY, "False", phase, message, now)

    waiting_start = [
        p
        for p in final
        if p["metadata"]["name"] not in retiring
        and p["spec"].get("node")
        and _running_or_starting(p)
        and state_of(p)
        != ("Suspended" if p["spec"].get("desiredState") == "Suspended" else "Running")
    ]
    if retiring:
        conditions = set_condition(
            conditions,
            RECONCILING,
            "True",
            "Stopping",
            f"{len(retiring)} placement(s) stopping",
            now,
        )
    elif waiting_start:
        verb = "suspending" if spec.suspend else "starting"
        conditions = set_condition(
            conditions,
            RECONCILING,
            "True",
            verb.capitalize(),
            f"{len(waiting_start)} placement(s) {verb}",
            now,
        )
    else:
        conditions = [c for c in conditions if c.type != RECONCILING]

    if stalled is not None:
        conditions = set_condition(conditions, STALLED, "True", stalled[0], stalled[1], now)
    else:
        conditions = [c for c in conditions if c.type != STALLED]

    out = dict(obj.get("status") or {})
    out["observedGeneration"] = obj["metadata"]["generation"]
    out["phase"] = phase
    out["placements"] = [_placement_summary(p) for p in sorted(final, key=_by_name)]
    out["counts"] = counts
    out["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    return out


def _by_name(p: Obj) -> str:
    return str(p["metadata"]["name"])


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
        plan.events.append((NODE_LOST, _summary(lost_msgs), "Warning"))
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
    status["placements"] = [_placement_summary(p) for p in final]
    status["counts"] = _counts(final, set())
    conditions = set_condition(
        _conditions(status),
        RECONCILING,
        "True",
        "Deleting",
        f"waiting for {len(waiting)} placement(s) to stop",
        now,
    )
    status["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    plan.status = status
    return plan


# ------------------------------------------------------------------- apply


class SessionReconciler:
    """The Session handler plus its watch mappers, sharing one ``ClusterState``."""

    def __init__(
        self,
        state: ClusterState,
        *,
        node_grace: float = 30.0,
        heartbeat: float = 5.0,
        policy: PolicyHook | None = None,
    ) -> None:
        self.state = state
        self.node_grace = node_grace
        self.heartbeat = heartbeat
        self.retry_unschedulable = max(1.0, 2 * heartbeat)
        self.policy = policy
        self._provider_facts: dict[str, tuple[str, str]] = {}

    def __call__(self, obj: Obj, ctx: Context) -> Result | None:
        """Converge one Session (see the module docstring)."""
        now = ctx.now()
        name = obj["metadata"]["name"]
        problems: list[str] = []
        session: Session | None = None
        if not being_deleted(obj):
            problems = session_problems(obj.get("spec") or {}, ctx.store)
            try:
                session = Session.model_validate({**obj, "status": {}})
            except ValidationError as exc:
                self._invalid(obj, ctx, exc, now)
                return None
        check = self.policy(session, ctx.store) if self.policy and session else None
        check = check or PolicyCheck()
        with self.state.lock:
            self.state.refresh()
            placements = self.state.placements_of(name)
            if session is None:
                plan = plan_deletion(
                    obj, placements, self.state.nodes, now=now, node_grace=self.node_grace
                )
            else:
                plan = plan_session(
                    obj,
                    session,
                    placements,
                    self.state.nodes,
                    now=now,
                    node_grace=self.node_grace,
                    retry_unschedulable=self.retry_unschedulable,
                    problems=problems,
                    taken=self.state.taken,
                    allowed=check.allowed,
                    violation=check.violation,
                )
                self._reference_events(obj, problems, plan)
                if check.admit is not None:
                    attach_admissions(plan, placements, check.admit)
            apply_plan(plan, obj, ctx)
        if plan.requeue_after is None:
            return None
        return Result(requeue_after=plan.requeue_after)

    def _reference_events(self, obj: Obj, problems: list[str], plan: SessionPlan) -> None:
        """The MissingReference warning, and a note when a reference stall clears."""
        if problems:
            plan.events.insert(0, (MISSING_REFERENCE, "; ".join(problems), "Warning"))
            return
        old = get_condition(_conditions(obj.get("status") or {}), STALLED)
        if old is not None and old.status == "True" and old.reason == MISSING_REFERENCE:
            plan.events.insert(
                0, (REFERENCES_RESOLVED, f"references resolved (was: {old.message})", "Normal")
            )

    def _invalid(self, obj: Obj, ctx: Context, exc: ValidationError, now: datetime) -> None:
        """A stored Session that does not validate (it passed admission once): say so."""
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )[:500]
        status = dict(obj.get("status") or {})
        conditions = _conditions(status)
        conditions = set_condition(conditions, READY, "False", INVALID_SPEC, message, now)
        conditions = set_condition(conditions, STALLED, "True", INVALID_SPEC, message, now)
        status["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
        status["observedGeneration"] = obj["metadata"]["generation"]
        ctx.update_status(obj, status)
        ctx.event(obj, INVALID_SPEC, message, "Warning")
        return None

    # ------------------------------------------------------------ watches

    def sessions_for_placement(self, changed: Obj, store: Store) -> list[str]:
        """Mapper: the placement's Session; if it finished, Sessions waiting for capacity."""
        out = set()
        session = (changed["metadata"].get("labels") or {}).get(SESSION_LABEL)
        if session:
            out.add(session)
        if changed["spec"].get("node") and state_of(changed) in TERMINAL_STATES:
            with self.state.lock:
                self.state.refresh()
                out |= self.state.sessions_with_unbound()
        return sorted(out)

    def sessions_for_provider(self, changed: Obj, store: Store) -> list[str]:
        """Mapper: on a readiness flip (or the Provider going) the Sessions placed on it;
        on any change of schedulable facts the Sessions with unbound placements."""
        node = changed["metadata"]["name"]
        facts = _provider_facts(changed)
        exists = store.try_get("Provider", node) is not None
        before = self._provider_facts.get(node)
        if exists and before == facts:
            return []  # a heartbeat that changed only usage
        if exists:
            self._provider_facts[node] = facts
        else:
            self._provider_facts.pop(node, None)
        flipped = before is None or not exists or before[0] != facts[0]
        with self.state.lock:
            self.state.refresh()
            out = set(self.state.sessions_with_unbound())
            if flipped:
                out |= self.state.sessions_on_node(node)
        return sorted(out)


def _provider_facts(provider: Obj) -> tuple[str, str]:
    """What of a Provider matters to scheduling: (readiness, labels and inventory)."""
    status = provider.get("status") or {}
    ready = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = f"{cond.get('status')}@{cond.get('lastTransitionTime')}"
    rest = json.dumps(
        [
            provider["metadata"].get("labels"),
            (provider.get("spec") or {}).get("labels"),
            status.get("inventory"),
        ],
        sort_keys=True,
    )
    return ready, rest


def apply_plan(plan: SessionPlan, obj: Obj, ctx: Context) -> Obj:
    """Write ``plan`` in one transaction (all or nothing); returns the Session as written."""
    store = ctx.store
    nothing = not (
        plan.placement_status
        or plan.placement_spec
        or plan.create
        or plan.delete
        or plan.remove_finalizer
        or plan.ensure_finalizer
        or plan.events
        or (plan.status is not None and plan.status != obj.get("status"))
    )
    if nothing:
        return obj
    with store.transaction():
        if plan.ensure_finalizer:
            obj = ctx.ensure_finalizer(obj, SESSION_FINALIZER)
        for placement, status in plan.placement_status.values():
            meta = placement["metadata"]
            store.update_status(
                "Placement", meta["name"], status, expected_rv=meta["resourceVersion"]
            )
        for pname, placement in plan.placement_spec.items():
            if pname not in plan.delete:
                store.replace(placement)
        for placement in plan.create:
            store.create(placement)
        for pname in plan.delete:
            store.delete("Placement", pname)
        if plan.status is not None:
            obj = ctx.update_status(obj, plan.status)
        for reason, message, type_ in plan.events:
            ctx.event(obj, reason, message, type_)
        if plan.remove_finalizer:
            obj = ctx.remove_finalizer(obj, SESSION_FINALIZER)
    return obj


def sessions_naming(field: str) -> Mapper:
    """A mapper: the Sessions whose ``spec.<field>`` is the changed object's name."""

    def mapper(changed: Obj, store: Store) -> list[str]:
        name = changed["metadata"]["name"]
        return [s["metadata"]["name"] for s in store.list_where("Session", f"$.{field}", name)]

    mapper.__name__ = f"sessions_naming_{field}"
    return mapper


def register(
    controller: Controller,
    *,
    node_grace: float = 30.0,
    heartbeat: float = 5.0,
    policy: PolicyHook | None = None,
) -> SessionReconciler:
    """Register the Session reconciler and its watches on ``controller``; return it."""
    reconciler = SessionReconciler(
        ClusterState(controller.store), node_grace=node_grace, heartbeat=heartbeat, policy=policy
    )
    controller.reconciler(
        "Session",
        watches={
            "App": sessions_naming("app"),
            "Priority": sessions_naming("priority"),
            "VirtualNetwork": sessions_naming("network"),
            "Placement": reconciler.sessions_for_placement,
            "Provider": reconciler.sessions_for_provider,
            "ImagePolicy": sessions_of_policy_apps,
        },
    )(reconciler)
    return reconciler


def sessions_of_policy_apps(changed: Obj, store: Store) -> list[str]:
    """Mapper: a policy changed → the Sessions of the apps it names (a policy that
    stops naming an app is caught by the periodic resync)."""
    out: list[str] = []
    for app in (changed.get("spec") or {}).get("apps") or []:
        out.extend(o["metadata"]["name"] for o in store.list_where("Session", "$.app", app))
    return out
