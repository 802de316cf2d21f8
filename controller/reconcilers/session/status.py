"""A Session's status, computed from its placements (pure).

``phase`` (Failed if a placement failed; Succeeded when want placements
succeeded; Suspended; Running when all wanted placements run or have
succeeded; else Pending), ``placements`` (name, node, state, exitCode, reason;
by name), ``counts`` (pending, running, succeeded, failed, suspended),
``observedGeneration`` and kstatus conditions: ``Ready`` (True when Running or
Succeeded), ``Reconciling`` (placements being created, started, suspended or
stopped), ``Stalled`` (``MissingReference``, ``Unschedulable`` with the
aggregated reason, or the failure — ``NodeLost``/``PlacementFailed`` — of a
Failed session, which will not progress by itself). The reasons a Session's
conditions and events use are named here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.reconcilers.placement import (
    NODE_LOST_ANNOTATION,
    STARTING_STATES,
    TERMINAL_STATES,
    is_lost,
    is_preempted,
    state_of,
)
from controller.reconcilers.refs import MISSING_REFERENCE, READY, STALLED
from specs.kinds import Session
from specs.meta import Condition, set_condition

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
PREEMPTED = "Preempted"  # a placement of this Session was suspended or stopped for another
PREEMPTING = "Preempting"  # this Session suspended or stopped lower-priority placements
RESUMED = "Resumed"


def running_or_starting(p: Obj) -> bool:
    """Active: not finished and not declared lost."""
    return state_of(p) not in TERMINAL_STATES and not is_lost(p)


def count_states(final: list[Obj], retiring: set[str]) -> dict[str, int]:
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


def placement_summary(p: Obj) -> Obj:
    status = p.get("status") or {}
    lost = is_lost(p)
    return {
        "name": p["metadata"]["name"],
        "node": p["spec"].get("node"),
        "state": "Failed" if lost else state_of(p),
        "exitCode": status.get("exitCode"),
        "reason": NODE_LOST if lost else str(status.get("reason") or ""),
    }


def conditions_of(status: Obj) -> list[Condition]:
    return [Condition.model_validate(c) for c in status.get("conditions") or []]


def session_status(
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
    counts = count_states(final, retiring)
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
    elif counts["suspended"] and not counts["running"] and not counts["pending"]:
        phase = "Suspended"  # preempted
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

    conditions = conditions_of(obj.get("status") or {})
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
        and running_or_starting(p)
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

    preempted = [
        p for p in sorted(final, key=by_name) if is_preempted(p) and running_or_starting(p)
    ]
    if preempted:
        first = preempted[0]["spec"]["preemption"]
        then = (
            "they resume on the same provider when it has room"
            if first.get("action") == "Suspend"
            else "they run again when there is room"
        )
        verb = "suspended" if first.get("action") == "Suspend" else "stopped"
        message = (
            f"{len(preempted)} placement(s) {verb} for Session {first.get('session')} "
            f"(priority {first.get('priority')}); {then}"
        )
        conditions = set_condition(conditions, PREEMPTED, "True", PREEMPTED, message, now)
        if stalled is None and phase == "Suspended":
            conditions = set_condition(conditions, READY, "False", PREEMPTED, message, now)
    else:
        conditions = [c for c in conditions if c.type != PREEMPTED]

    out = dict(obj.get("status") or {})
    out["observedGeneration"] = obj["metadata"]["generation"]
    out["phase"] = phase
    out["placements"] = [placement_summary(p) for p in sorted(final, key=by_name)]
    out["counts"] = counts
    out["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    return out


def by_name(p: Obj) -> str:
    return str(p["metadata"]["name"])
