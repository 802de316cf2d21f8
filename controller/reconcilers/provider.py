"""The Provider reconciler: a provider is Ready while its agent keeps heartbeating.

Each agent says in its heartbeats how often it beats (``gu agent
--heartbeat``), kept as ``status.heartbeatSeconds``; ``heartbeat`` below is
that period (the hub's setting for an agent that did not say). The hub stamps
``status.lastHeartbeat`` with its own clock (``controller/api/agents.py``), so
agents' clocks do not matter. A provider is:

- ``Ready=True``/``HeartbeatOK`` while ``now − lastHeartbeat < 3 × heartbeat``;
- ``Ready=False``/``HeartbeatMissed`` (``no heartbeat for Ns``) after that, or
  ``no heartbeat yet`` before the first one.

The hub keeps the time of the last beat in its lease table
(``controller.liveness``), not in the store: a beat from a Ready provider
writes nothing and wakes nobody. Nothing is written when the heartbeat stops
either, so the hub's liveness task queues a Provider for this reconciler when
its lease runs out (checked twice a second), and the pass writes
``Ready=False`` together with the last beat's time and usage. A beat from a
provider that is not Ready is written to the store, which re-runs this
reconciler and flips ``Ready`` back to True. (Without a lease table, as in
unit tests of the reconcilers alone, each pass instead returns
``Result(requeue_after=…)`` timed to the moment the condition would flip.)

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

from controller.liveness import MISSED_BEATS, Lease, Liveness, iso, parse_time
from controller.reconcile import Context, Controller, Handler, Result
from controller.reconcilers.refs import READY, being_deleted
from specs.meta import Condition, get_condition, set_condition

Obj = dict[str, Any]

HEARTBEAT_OK = "HeartbeatOK"
HEARTBEAT_MISSED = "HeartbeatMissed"

_SLACK = 0.02  # wake just after the deadline, so the pass sees it passed


def provider_status(
    status: Obj,
    generation: int,
    now: datetime,
    heartbeat: float,
    lease: Lease | None = None,
) -> tuple[Obj, float | None]:
    """(the status the Provider should have, seconds until Ready would flip to False or None).

    Silence is measured from ``lease.observed`` when the hub keeps leases
    (``controller.liveness``), else from ``status.lastHeartbeat``. Pure: the
    reconciler writes the status only if it differs.
    """
    last: datetime | None
    if lease is not None:
        heartbeat, last = lease.period, lease.observed
    else:
        # the period the agent said it beats at, else the hub's setting
        reported = status.get("heartbeatSeconds")
        if isinstance(reported, int | float) and not isinstance(reported, bool) and reported > 0:
            heartbeat = float(reported)
        last = parse_time(status.get("lastHeartbeat"))
    limit = MISSED_BEATS * heartbeat
    conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    age = (now - last).total_seconds() if last is not None else None
    requeue: float | None = None
    out = dict(status)
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
        if lease is not None:  # what a provider that went silent last said, kept in the store
            out["lastHeartbeat"] = iso(lease.last)
            if lease.usage is not None:
                out["usage"] = lease.usage
    out["observedGeneration"] = generation
    out["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
    return out, requeue


def make_provider_reconciler(heartbeat: float, liveness: Liveness | None = None) -> Handler:
    """The Provider handler for agents that beat every ``heartbeat`` seconds.

    With ``liveness`` (the hub's lease table) a Ready provider is not requeued:
    the hub queues it when its lease runs out (``Liveness.expired``), so a pool
    of beating providers costs no reconciles at all. Without it, each pass
    requeues itself for the moment Ready would flip.
    """
    if heartbeat <= 0:
        raise ValueError("heartbeat must be > 0 seconds")

    def reconcile_provider(obj: Obj, ctx: Context) -> Result | None:
        """Set ``Ready`` from the age of the last heartbeat; requeue for the flip."""
        if being_deleted(obj):
            return None
        status = obj.get("status") or {}
        lease = liveness.lease(obj["metadata"]["name"], status) if liveness else None
        new, requeue = provider_status(
            status, obj["metadata"]["generation"], ctx.now(), heartbeat, lease
        )
        ctx.update_status(obj, new)
        if liveness is not None:
            return None
        return Result(requeue_after=requeue) if requeue is not None else None

    return reconcile_provider


def register(
    controller: Controller, *, heartbeat: float = 5.0, liveness: Liveness | None = None
) -> None:
    """Register the Provider reconciler."""
    controller.reconciler("Provider")(make_provider_reconciler(heartbeat, liveness))
