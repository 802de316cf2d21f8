"""The Session reconciler: references, plan, apply — and its watches, registered.

One pass: check the references (App, Priority, VirtualNetwork), ask the
policy hook, then inside a store transaction and under the ``ClusterState``
lock refresh the view, plan (``session.plan``), attach admissions and write
the plan (``session.apply``). Both are held until the writes are in the
transaction, so the next pass sees these placements (read back from the
store's change log, committed or pending in the same grouped commit).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from controller.liveness import Liveness
from controller.policy import PolicyCheck, PolicyHook
from controller.reconcile import Context, Controller, Result
from controller.reconcilers.placement import SESSION_LABEL, TERMINAL_STATES, ClusterState, state_of
from controller.reconcilers.preemption import NodeChoice, find_preemptions
from controller.reconcilers.refs import (
    MISSING_REFERENCE,
    READY,
    STALLED,
    being_deleted,
    missing_references,
)
from controller.reconcilers.session.apply import apply_plan
from controller.reconcilers.session.plan import (
    NO_PRIORITY,
    Preempt,
    ResolvedPriority,
    SessionPlan,
    attach_admissions,
    plan_deletion,
    plan_session,
    room_to_resume,
)
from controller.reconcilers.session.queue import Waiter, WaitQueue, queue_key
from controller.reconcilers.session.status import INVALID_SPEC, REFERENCES_RESOLVED, conditions_of
from controller.reconcilers.session.watches import (
    policy_apps_mapper,
    priority_mapper,
    provider_facts,
    sessions_naming,
)
from controller.reconcilers.vnet import Allocator
from controller.scheduler import Allowed, RankedNodes, schedule
from controller.store import Store
from specs.kinds import Session
from specs.meta import get_condition, set_condition

log = logging.getLogger("gu.reconcile.session")

Obj = dict[str, Any]

#: Waiting Sessions are woken by a change of capacity at most once per window (see
#: ``SessionReconciler._wake_fitting``); a change inside it wakes them at its end.
WAKE_WINDOW: Final = 0.5

#: A change of capacity wakes at most this many waiting Sessions (those that fit what is
#: free now, in serving order); each of them that takes capacity wakes the next that fits.
WAKE_MAX: Final = 64

#: The periodic retries of waiting Sessions (they find room that only a provider's usage
#: made, which moves no capacity epoch) cost at most about this many passes a second in
#: all: with many Sessions waiting, each retries less often than ``retry_unschedulable``.
RETRY_BUDGET: Final = 100.0


def session_problems(spec: Obj, store: Store) -> list[str]:
    """What the Session's spec names that does not exist, App first."""
    return [
        *missing_references(store, "App", [spec.get("app")]),
        *missing_references(store, "Priority", [spec.get("priority")]),
        *missing_references(store, "VirtualNetwork", [spec.get("network")]),
    ]


def resolve_priority(name: str | None, priorities: Mapping[str, Obj]) -> ResolvedPriority:
    """The Priority a Session is scheduled at: the one it names, else the ``default: true``
    one, else value 0 (a named one that is missing is reported as a missing reference)."""
    if name is None:
        defaults = sorted(n for n, o in priorities.items() if (o.get("spec") or {}).get("default"))
        if not defaults:
            return NO_PRIORITY
        name = defaults[0]
    obj = priorities.get(name)
    if obj is None:
        return NO_PRIORITY
    spec = obj.get("spec") or {}
    return ResolvedPriority(
        name=name,
        value=int(spec.get("value") or 0),
        preemption_policy=str(spec.get("preemptionPolicy") or "PreemptLowerPriority"),
        on_preempted=str(spec.get("onPreempted") or "Suspend"),
    )


def _fits(
    session: Session,
    allowed: Allowed | None,
    exclude: set[str],
    unbound: int,
    to_resume: list[tuple[str, float]],
    room: Callable[[], bool] = lambda: True,
) -> Callable[[RankedNodes], bool]:
    """The wait queue's test for one Session: could it bind or resume anything now?
    (``room()``: its network has a free address, if it joins one)"""

    def fits(nodes: RankedNodes) -> bool:
        if any(room_to_resume(nodes, node, cpu) for node, cpu in to_resume):
            return True
        if not unbound or not room():
            return False
        return bool(schedule(session, nodes, 1, allowed, exclude).nodes)

    return fits


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
        self.provider_facts: dict[str, tuple[str, str]] = {}
        #: how waiting Sessions are queued later (the engine's ``enqueue_after``); None:
        #: every capacity change wakes them at once (unit tests without an engine)
        self.defer: Callable[[str, float], None] | None = None
        self.clock: Callable[[], float] = time.monotonic
        self._wake_lock = threading.Lock()
        self._next_wake = 0.0  # monotonic: waiting Sessions were woken until then
        self._wake_due = False  # a change of capacity inside the window, not served yet
        self._carrier: str | None = None  # the Session queued for the window's end
        #: Sessions waiting for capacity, in serving order (under ``state.lock``)
        self.queue = WaitQueue()

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
        ready: list[str] = []
        # the store's write lock first, then the view's: the refresh then reads every
        # write committed or pending in this transaction (the engine groups passes into
        # one commit), and no other pass writes between this one's plan and its write
        with ctx.store.transaction(), self.state.lock:
            self.state.refresh()
            wake, rearm = self._due_wake(name)
            placements = self.state.placements_of(name)
            if session is None:
                self.queue.remove(name)
                plan = plan_deletion(
                    obj, placements, self.state.nodes, now=now, node_grace=self.node_grace
                )
            else:
                priority = resolve_priority(session.spec.priority, self.state.priorities)
                key = queue_key(priority.value, obj["metadata"].get("creationTimestamp", ""), name)
                epoch = self.state.capacity_epoch
                nodes = self.state.nodes
                preempt: Preempt | None = None
                if priority.preemption_policy == "PreemptLowerPriority":
                    preempt = self._preempter(session, priority, check.allowed)
                plan = plan_session(
                    obj,
                    session,
                    placements,
                    self.state.nodes,
                    now=now,
                    node_grace=self.node_grace,
                    retry_unschedulable=self._retry_period(),
                    problems=problems,
                    taken=self.state.taken,
                    allowed=check.allowed,
                    violation=check.violation,
                    priority=priority,
                    ahead=lambda: self.queue.ahead(key, nodes, epoch),
                    interfaces=self._allocator(session),
                    preempt=preempt,
                )
                ready = plan.ahead.ready if plan.ahead is not None else []
                if plan.status is not None:
                    plan.status["priorityClass"] = priority.name
                    plan.status["priority"] = priority.value
                self._reference_events(obj, problems, plan)
                if check.admit is not None:
                    attach_admissions(plan, placements, check.admit, self.state.nodes)
            apply_plan(plan, obj, ctx)
            if session is not None:
                self._queue(name, session, key, epoch, plan, placements, check.allowed)
                if plan.took and len(self.queue):  # it took capacity: is there more?
                    self.state.refresh()  # (reads this pass's own writes)
                    wake += self.queue.fitting(self.state.nodes, self.state.capacity_epoch, 1)
        if self.defer is not None:
            for other in [*ready, *wake]:  # able to go: let them
                if other != name:
                    self.defer(other, 0.0)
            if rearm is not None:  # (the carrier ran early: again at the window's end)
                self.defer(name, rearm)
        if plan.requeue_after is None:
            return None
        return Result(requeue_after=plan.requeue_after)

    def _allocator(self, session: Session) -> Allocator | None:
        """The address allocator of the Session's VirtualNetwork (None: it names none, or
        the network is missing, which is reported as a missing reference)."""
        name = session.spec.network
        net = self.state.networks.get(name) if name else None
        if name is None or net is None:
            return None
        spec = net.get("spec") or {}
        mcast = spec.get("multicast") or {}
        try:
            return Allocator(
                name,
                str(spec.get("cidr")),
                int(spec.get("mtu") or 1400),
                self.state.interfaces_in(name),
                f"{mcast['group']}:{mcast['port']}" if mcast else None,
            )
        except ValueError:
            return None

    def _preempter(
        self, session: Session, priority: ResolvedPriority, allowed: Allowed | None
    ) -> Preempt:
        def preempt(want: int, exclude: AbstractSet[str]) -> list[NodeChoice]:
            return find_preemptions(
                session,
                priority.value,
                self.state.nodes,
                want,
                self.state.preemptible_on,
                allowed,
                exclude,
                self.state.preemption_order(priority.value),
            )

        return preempt

    def _room(self, session: Session) -> bool:
        allocator = self._allocator(session)
        return allocator is None or allocator.has_room()

    def _queue(
        self,
        name: str,
        session: Session,
        key: tuple[int, str, str],
        epoch: int,
        plan: SessionPlan,
        placements: list[Obj],
        allowed: Allowed | None,
    ) -> None:
        """Keep the Session's place in the wait queue while it waits (under the lock)."""
        if not plan.unbound and not plan.to_resume:
            self.queue.remove(name)
            return
        exclude = {
            str(p["spec"]["node"])
            for p in placements
            if p["spec"].get("node") and state_of(p) not in TERMINAL_STATES
        }
        fits = _fits(
            session, allowed, exclude, plan.unbound, plan.to_resume, lambda: self._room(session)
        )
        self.queue.put(name, Waiter(key, fits, epoch if plan.unfit else -1))

    def _reference_events(self, obj: Obj, problems: list[str], plan: SessionPlan) -> None:
        """The MissingReference warning, and a note when a reference stall clears."""
        if problems:
            plan.events.insert(0, (MISSING_REFERENCE, "; ".join(problems), "Warning"))
            return
        old = get_condition(conditions_of(obj.get("status") or {}), STALLED)
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
        conditions = conditions_of(status)
        conditions = set_condition(conditions, READY, "False", INVALID_SPEC, message, now)
        conditions = set_condition(conditions, STALLED, "True", INVALID_SPEC, message, now)
        status["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in conditions]
        status["observedGeneration"] = obj["metadata"]["generation"]
        ctx.update_status(obj, status)
        ctx.event(obj, INVALID_SPEC, message, "Warning")
        return None

    # ------------------------------------------------------------ watches

    def sessions_for_placement(self, changed: Obj, store: Store) -> list[str]:
        """Mapper: the placement's Session; if it finished, the waiting Sessions that fit
        what it gave back (``_wake_fitting``)."""
        out = set()
        session = (changed["metadata"].get("labels") or {}).get(SESSION_LABEL)
        if session:
            out.add(session)
        if changed["spec"].get("node") and state_of(changed) in TERMINAL_STATES:
            out |= self._wake_fitting()
        return sorted(out)

    def sessions_for_provider(self, changed: Obj, store: Store) -> list[str]:
        """Mapper: on a readiness flip (or the Provider going) the Sessions placed on it;
        on any change of schedulable facts the waiting Sessions that fit now
        (``_wake_fitting``)."""
        node = changed["metadata"]["name"]
        facts = provider_facts(changed)
        exists = store.try_get("Provider", node) is not None
        before = self.provider_facts.get(node)
        if exists and before == facts:
            return []  # a heartbeat that changed only usage
        if exists:
            self.provider_facts[node] = facts
        else:
            self.provider_facts.pop(node, None)
        flipped = before is None or not exists or before[0] != facts[0]
        if flipped:
            with self.state.lock:
                self.state.refresh()
                out = self.state.sessions_on_node(node)
        else:
            out = set()
        return sorted(out | self._wake_fitting())

    def _wake_fitting(self) -> set[str]:
        """The waiting Sessions a change of capacity wakes now: those that fit what is
        free, in serving order, at most ``WAKE_MAX`` (each that then takes capacity wakes
        the next that fits: ``__call__``), and at most once per ``WAKE_WINDOW``.

        A change inside the window wakes nobody now: the first pass after the window's
        end does (``_due_wake``), and the queue's head is queued for then, so one runs.
        So a herd of providers arriving (a hub start, a pool joining) costs a walk of
        the queue per window, and a freed slot wakes the Sessions that can use it, not
        every one that waits (10,000 waiting Sessions were 10,000 passes per window)."""
        now = self.clock()
        with self.state.lock:  # (the view's lock, then the window's: as in a pass)
            with self._wake_lock:
                inside = self.defer is not None and now < self._next_wake
                if not inside:
                    self._next_wake, self._wake_due, self._carrier = now + WAKE_WINDOW, False, None
                elif not self._wake_due:
                    self._wake_due, self._carrier = True, self.queue.head()
                    carrier, delay = self._carrier, self._next_wake - now
                else:
                    carrier = None
            if not inside:
                self.state.refresh()
                return set(self._fitting())
        if carrier is not None and self.defer is not None:
            self.defer(carrier, delay)
        return set()

    def _due_wake(self, name: str) -> tuple[list[str], float | None]:
        """(A pass of ``name``, under the view's lock, refreshed.) The Sessions a change
        of capacity inside the last window wakes, once the window is over; and, if this
        is the window's carrier come early (an earlier deadline of its own won), when
        to queue it again."""
        now = self.clock()
        with self._wake_lock:
            if not self._wake_due:
                return [], None
            if now < self._next_wake:
                return [], self._next_wake - now if name == self._carrier else None
            self._next_wake, self._wake_due, self._carrier = now + WAKE_WINDOW, False, None
        return self._fitting(), None

    def _fitting(self) -> list[str]:
        return self.queue.fitting(self.state.nodes, self.state.capacity_epoch, WAKE_MAX)

    def _retry_period(self) -> float:
        """How soon a waiting Session looks again by itself: ``retry_unschedulable``, or
        longer with many waiting (``RETRY_BUDGET``), jittered so they do not move as one."""
        period = max(self.retry_unschedulable, len(self.queue) / RETRY_BUDGET)
        return period * random.uniform(1.0, 1.2)


def register(
    controller: Controller,
    *,
    node_grace: float = 30.0,
    heartbeat: float = 5.0,
    policy: PolicyHook | None = None,
    liveness: Liveness | None = None,
) -> SessionReconciler:
    """Register the Session reconciler and its watches on ``controller``; return it.

    ``liveness`` is the hub's lease table: the scheduler takes providers' usage from
    it (a usage-only heartbeat writes nothing to the store)."""
    reconciler = SessionReconciler(
        ClusterState(controller.store, liveness=liveness),
        node_grace=node_grace,
        heartbeat=heartbeat,
        policy=policy,
    )
    reconciler.defer = lambda name, delay: controller.enqueue_after("Session", name, delay)
    controller.on_lost_commit(reconciler.state.forget)
    controller.reconciler(
        "Session",
        watches={
            "App": sessions_naming("app"),
            "Priority": priority_mapper(),
            "VirtualNetwork": sessions_naming("network"),
            "Placement": reconciler.sessions_for_placement,
            "Provider": reconciler.sessions_for_provider,
            "ImagePolicy": policy_apps_mapper(),
        },
    )(reconciler)
    return reconciler
