"""The Session reconciler (for now: resolve references, set conditions).

A Session names an App, and optionally a Priority and a VirtualNetwork. Until
all of them exist the Session is ``Stalled``/``MissingReference`` with a
message naming each missing one; once they do it is ``Ready`` with reason
``ReferencesResolved`` (a later issue replaces that Ready with scheduling).
The watches on App, Priority and VirtualNetwork re-run a Session when the
object it names appears or goes, so the user never has to re-apply it.

A Session with no ``spec.priority`` is fine whatever the default Priorities
are: several defaults are the Priorities' problem (they get Stalled), not the
Session's.

Deletion: ``finalize_session`` is where the ``gu/placements`` finalizer is
honoured — a later issue stops the Session's Placements there before the
finalizer goes.
"""

from __future__ import annotations

from typing import Any

from controller.reconcile import Context, Controller, Mapper, Result
from controller.reconcilers.refs import (
    MISSING_REFERENCE,
    being_deleted,
    converge_conditions,
    missing_references,
)
from controller.store import Store

Obj = dict[str, Any]

SESSION_FINALIZER = "gu/placements"
"""Held by a Session until its placements have stopped on their providers."""

READY_REASON = "ReferencesResolved"


def session_problems(spec: Obj, store: Store) -> list[str]:
    """What the Session's spec names that does not exist, App first."""
    return [
        *missing_references(store, "App", [spec.get("app")]),
        *missing_references(store, "Priority", [spec.get("priority")]),
        *missing_references(store, "VirtualNetwork", [spec.get("network")]),
    ]


def reconcile_session(obj: Obj, ctx: Context) -> Result | None:
    """Set the Session's Stalled/Ready conditions and observedGeneration from its references."""
    if being_deleted(obj):
        return finalize_session(obj, ctx)
    problems = session_problems(obj.get("spec") or {}, ctx.store)
    converge_conditions(
        obj, ctx, problems, stalled_reason=MISSING_REFERENCE, ready_reason=READY_REASON
    )
    return None


def finalize_session(obj: Obj, ctx: Context) -> Result | None:
    """A Session being deleted: release it once nothing runs for it any more.

    Placements do not exist yet, so the finalizer goes at once. The placements
    issue makes this: mark every Placement of the session ``desiredState:
    Stopped``, return ``Result(requeue_after=…)`` while any has not stopped,
    and only then remove ``SESSION_FINALIZER``.
    """
    ctx.remove_finalizer(obj, SESSION_FINALIZER)
    return None


def sessions_naming(field: str) -> Mapper:
    """A mapper: the Sessions whose ``spec.<field>`` is the changed object's name."""

    def mapper(changed: Obj, store: Store) -> list[str]:
        name = changed["metadata"]["name"]
        return [s["metadata"]["name"] for s in store.list_where("Session", f"$.{field}", name)]

    mapper.__name__ = f"sessions_naming_{field}"
    return mapper


def register(controller: Controller) -> None:
    """Register the Session reconciler and its watches on ``controller``."""
    controller.reconciler(
        "Session",
        watches={
            "App": sessions_naming("app"),
            "Priority": sessions_naming("priority"),
            "VirtualNetwork": sessions_naming("network"),
        },
    )(reconcile_session)
