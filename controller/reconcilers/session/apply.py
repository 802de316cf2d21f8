"""Writing a plan: one store transaction per Session pass (all or nothing).

One fsync per pass; a ``Conflict`` (an agent wrote a status we were about to
overwrite) rolls the pass back and the engine retries it. A plan that writes
nothing opens no transaction.
"""

from __future__ import annotations

from typing import Any

from controller.reconcile import Context
from controller.reconcilers.session.plan import SessionPlan
from controller.reconcilers.session.status import SESSION_FINALIZER

Obj = dict[str, Any]


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
        or plan.other_events
        or (plan.status is not None and plan.status != obj.get("status"))
    )
    if nothing:
        return obj
    with store.transaction():
        if plan.ensure_finalizer:
            obj = ctx.ensure_finalizer(obj, SESSION_FINALIZER)
        # (each written placement is noted as this pass's own: its change does not wake
        # this Session again, which planned it; other watchers of placements still wake)
        for placement, status in plan.placement_status.values():
            meta = placement["metadata"]
            ctx.wrote(
                store.update_status(
                    "Placement", meta["name"], status, expected_rv=meta["resourceVersion"]
                )
            )
        for pname, placement in plan.placement_spec.items():
            if pname not in plan.delete:
                ctx.wrote(store.replace(placement))
        for placement in plan.create:
            ctx.wrote(store.create(placement))
        for pname in plan.delete:
            ctx.wrote(store.delete("Placement", pname))
        if plan.status is not None:
            obj = ctx.update_status(obj, plan.status)
        for reason, message, type_ in plan.events:
            ctx.event(obj, reason, message, type_)
        for session, reason, message, type_ in plan.other_events:
            ctx.event({"kind": "Session", "metadata": {"name": session}}, reason, message, type_)
        if plan.remove_finalizer:
            obj = ctx.remove_finalizer(obj, SESSION_FINALIZER)
    return obj
