"""The Session reconciler: references, then scheduling a Session onto Placements.

Where things are: ``plan`` (the pure pass: what to write), ``status`` (the
Session's status and the reasons it uses), ``apply`` (one transaction per
pass), ``watches`` (what wakes a Session), ``reconciler`` (the handler that
ties them together, and ``register``).

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
     placements are created. The slots no provider can take wait as **one
     unbound placement** (``node: null``, status reason ``Unschedulable`` and
     the scheduler's aggregated message, prefixed ``N of M slots waiting:``
     when more than one waits), so ``count: 10000`` on three providers is four
     placements and one reason, not ten thousand rows retried; binding later is
     a one-field change plus new placements. It is retried on every Provider
     change that may help, when capacity is freed, and every ``2 × heartbeat``
     seconds.
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

Watches: Placement → its Session (label ``gu/session``), plus, when a placement
finishes, the waiting Sessions that fit the capacity it gave back; Provider → when
its readiness flips or it goes, the Sessions with placements on it, and when its
schedulable facts change (readiness, labels, inventory) the waiting Sessions that
fit now. Either wakes at most 64 waiting Sessions, in serving order, and each that
takes capacity wakes the next that fits (``SessionReconciler._wake_fitting``).
Heartbeats that change only usage wake nobody (the periodic retry covers free
memory, its passes bounded in all by ``RETRY_BUDGET``), so a thousand providers
beating every five seconds do not keep the Session workers busy.
"""

from controller.reconcilers.session.apply import apply_plan
from controller.reconcilers.session.plan import (
    SessionPlan,
    attach_admissions,
    node_lost,
    plan_deletion,
    plan_session,
)
from controller.reconcilers.session.reconciler import (
    SessionReconciler,
    register,
    session_problems,
)
from controller.reconcilers.session.status import SESSION_FINALIZER
from controller.reconcilers.session.watches import (
    policy_apps_mapper,
    priority_mapper,
    provider_facts,
    sessions_naming,
)

__all__ = [
    "SESSION_FINALIZER",
    "SessionPlan",
    "SessionReconciler",
    "apply_plan",
    "attach_admissions",
    "node_lost",
    "plan_deletion",
    "plan_session",
    "policy_apps_mapper",
    "priority_mapper",
    "provider_facts",
    "register",
    "session_problems",
    "sessions_naming",
]
