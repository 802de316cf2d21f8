"""References between objects, and the kstatus conditions a reconciler derives from them.

A Session names an App, maybe a Priority and a VirtualNetwork; an ImagePolicy
names Apps. Nothing stops a user from applying them in any order, so a
reference to an object that does not exist (yet) is not an error at apply time:
the referring object is ``Stalled`` with reason ``MissingReference`` until the
object appears, and the reconcile engine's watches re-run it when it does.

Every reconciler here ends the same way: a list of problems (human sentences)
becomes ``Stalled``/``Ready`` conditions plus ``observedGeneration``, written
only if that differs from what is stored. ``set_condition`` keeps
``lastTransitionTime`` unless a status flips and the conditions are dumped the
same way every pass, so an unchanged world yields an identical status and the
write is skipped — a resync of converged objects costs reads only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from controller.reconcile import Context
from controller.store import Store
from specs.meta import Condition, get_condition, set_condition

Obj = dict[str, Any]

READY = "Ready"
STALLED = "Stalled"
MISSING_REFERENCE = "MissingReference"


def missing_references(store: Store, kind: str, names: Iterable[str | None]) -> list[str]:
    """``Kind "name" not found`` for every given name with no object of ``kind``."""
    return [
        f'{kind} "{name}" not found' for name in names if name and store.try_get(kind, name) is None
    ]


def desired_status(
    status: Obj,
    generation: int,
    problems: list[str],
    *,
    stalled_reason: str,
    ready_reason: str,
    now: datetime,
) -> Obj:
    """The status ``status`` should have given ``problems`` (pure; other fields are kept).

    Problems → ``Stalled=True`` and ``Ready=False``, both with ``stalled_reason``
    and the problems joined by ``; ``. None → ``Stalled`` removed and
    ``Ready=True`` with ``ready_reason``.
    """
    conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    if problems:
        message = "; ".join(problems)
        conditions = set_condition(conditions, STALLED, "True", stalled_reason, message, now)
        conditions = set_condition(conditions, READY, "False", stalled_reason, message, now)
    else:
        conditions = [c for c in conditions if c.type != STALLED]
        conditions = set_condition(conditions, READY, "True", ready_reason, "", now)
    out = dict(status)
    out["observedGeneration"] = generation
    out["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    return out


def converge_conditions(
    obj: Obj,
    ctx: Context,
    problems: list[str],
    *,
    stalled_reason: str,
    ready_reason: str,
    extra: Obj | None = None,
) -> Obj:
    """Write the conditions ``problems`` imply on ``obj`` (nothing if unchanged), and the
    status fields in ``extra`` with them; emit events.

    A Warning event when stalled (repeated only if the newest event differs),
    a Normal one when an object that was stalled becomes ready.
    """
    status = obj.get("status") or {}
    new_status = desired_status(
        {**status, **(extra or {})},
        obj["metadata"]["generation"],
        problems,
        stalled_reason=stalled_reason,
        ready_reason=ready_reason,
        now=ctx.now(),
    )
    written = ctx.update_status(obj, new_status)
    if problems:
        ctx.event(obj, stalled_reason, "; ".join(problems), "Warning")
    else:
        old = [Condition.model_validate(c) for c in status.get("conditions") or []]
        was_stalled = get_condition(old, STALLED)
        if was_stalled is not None and was_stalled.status == "True":
            ctx.event(obj, ready_reason, f"{READY} again (was {STALLED}: {was_stalled.message})")
    return written


def is_stalled(obj: Obj, reason: str) -> bool:
    """Whether ``obj`` has ``Stalled=True`` with ``reason`` in its stored status."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == STALLED and cond.get("status") == "True":
            return bool(cond.get("reason") == reason)
    return False


def being_deleted(obj: Obj) -> bool:
    """Whether ``obj`` carries a ``deletionTimestamp`` (it waits for its finalizers)."""
    return bool(obj["metadata"].get("deletionTimestamp"))
