"""The Provider reconciler: a provider is Ready while its agent keeps heartbeating.

Each agent says in its heartbeats how often it beats (``gu agent
--heartbeat``), kept as ``status.heartbeatSeconds``; ``heartbeat`` below is
that period (the hub's setting for an agent that did not say). The hub stamps
``status.lastHeartbeat`` with its own clock (``controller/api/agents.py``), so
agents' clocks do not matter. A provider is:

- ``Ready=True``/``HeartbeatOK`` while ``now − lastHeartbeat < 3 × heartbeat``;
- ``Ready=False``/``HeartbeatMissed`` (``no heartbeat for Ns``) after that, or
  ``no heartbeat yet`` before the first one.

Nothing is written when the heartbeat stops, so nothing would wake this
reconciler: instead each pass returns ``Result(requeue_after=…)`` timed to
the moment the condition would flip, and NotReady is noticed within the
queue's precision (well under a second) of the third missed beat. A
heartbeat is itself a write, so it re-runs the reconciler and flips
``Ready`` back to True.

A converged pass writes nothing: ``set_condition`` moves
``lastTransitionTime`` only on a flip and the NotReady message (which names
the silence at the moment of the flip) is kept while the provider stays
NotReady. The Session reconciler watches Providers and re-runs the Sessions
placed on one whose readiness flips; it measures its node-loss grace from
this condition's ``lastTransitionTime``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.reconcile import Context, Controller, Handler, Result
from controller.reconcilers.refs import READY, being_deleted
from specs.meta import Condition, get_condition, set_condition

Obj = dict[str, Any]

HEARTBEAT_OK = "HeartbeatOK"
HEARTBEAT_MISSED = "HeartbeatMissed"
MISSED_BEATS = 3
"""How many heartbeat periods of silence make a provider NotReady."""

_SLACK = 0.02  # wake just after the deadline, so the pass sees it passed


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def provider_status(
    status: Obj, generation: int, now: datetime, heartbeat: float
) -> tuple[Obj, float | None]:
    """(the status the Provider should have, seconds until Ready would flip to False or None).

    Pure: the reconciler writes the status only if it differs.
    """
    # the period the agent said it beats at, else the hub's setting
    reported = status.get("heartbeatSeconds")
    if isinstance(reported, int | float) and not isinstance(reported, bool) and reported > 0:
        heartbeat = float(reported)
    limit = MISSED_BEATS * heartbeat
    last = _parse_time(status.get("lastHeartbeat"))
    conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    age = (now - last).total_seconds() if last is not None else None
    requeue: float | None = None
    if age is not None and age < limit:
        conditions = set_condition(conditions, READY, "True", HEARTBEAT_OK, "", now)
        requeue = limit - age + _SLACK
    else:
        old = get_condition(conditions, READY)
        if old is not None and old.status == "False" and old.reason == HEARTBEAT_MISSED:
            message = old.message  # keep the words of the flip: a resync writes nothing
        elif age is None:
            message = "no heartbeat yet"
        else:
            message = f"no heartbeat for {age:.0f}s (agents beat every {heartbeat:g}s)"
        conditions = set_condition(conditions, READY, "False", HEARTBEAT_MISSED, message, now)
    out = dict(status)
    out["observedGeneration"] = generation
    out["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    return out, requeue


def make_provider_reconciler(heartbeat: float) -> Handler:
    """The Provider handler for agents that beat every ``heartbeat`` seconds."""
    if heartbeat <= 0:
        raise ValueError("heartbeat must be > 0 seconds")

    def reconcile_provider(obj: Obj, ctx: Context) -> Result | None:
        """Set ``Ready`` from the age of the last heartbeat; requeue for the flip."""
        if being_deleted(obj):
            return None
        status, requeue = provider_status(
            obj.get("status") or {}, obj["metadata"]["generation"], ctx.now(), heartbeat
        )
        ctx.update_status(obj, status)
        return Result(requeue_after=requeue) if requeue is not None else None

    return reconcile_provider


def register(controller: Controller, *, heartbeat: float = 5.0) -> None:
    """Register the Provider reconciler."""
    controller.reconciler("Provider")(make_provider_reconciler(heartbeat))
