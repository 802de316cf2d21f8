"""Priorities: queue order, preemption (suspend or stop), resumption, honest accounting.

Real Store and the real Session reconciler; the agent is simulated by writing placement
status the way an agent does (the end-to-end runs with real agents are in
``tests/test_priorities_e2e.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.objects import default_priority_errors
from controller.reconcile import Controller
from controller.reconcilers.preemption import candidates_on, victims_for
from controller.scheduler import NodeView, Query
from controller.store import Store
from tests.helpers import kinds_listed
from tests.test_reconcilers_scheduling import (
    IMAGE,
    add_provider,
    add_session,
    agent_reports,
    condition,
    make_controller,
    placements,
    reconcile_everything,
)


@pytest.fixture
def controller(store: Store) -> Controller:
    return make_controller(store)


@pytest.fixture
def app(store: Store) -> None:
    store.create({"kind": "App", "metadata": {"name": "demo"}, "spec": {}})


def add_priority(store: Store, name: str, value: int, **spec: Any) -> None:
    store.create({"kind": "Priority", "metadata": {"name": name}, "spec": {"value": value, **spec}})


def job(store: Store, name: str, priority: str | None, cpu: float, memory: int = 64) -> None:
    spec: dict[str, Any] = {
        "workload": {
            "runtime": "native",
            "image": {"hash": IMAGE},
            "resources": {"cpu": cpu, "memoryMiB": memory},
        }
    }
    if priority:
        spec["priority"] = priority
    add_session(store, name, **spec)


def only(store: Store, session: str) -> dict[str, Any]:
    (p,) = placements(store, session)
    return p


def run(controller: Controller, store: Store, session: str, state: str = "Running") -> str:
    """Reconcile; the agent reports the session's (one, bound) placement ``state``."""
    reconcile_everything(controller, store)
    p = only(store, session)
    assert p["spec"]["node"], p["status"]
    agent_reports(store, p["metadata"]["name"], state)
    reconcile_everything(controller, store)
    return str(p["metadata"]["name"])


def reasons(store: Store, session: str) -> list[str]:
    return [e.reason for e in store.events("Session", session)]


@pytest.mark.usefixtures("app")
def test_an_urgent_session_suspends_a_batch_one_and_it_resumes_on_the_same_node_after(
    store: Store, controller: Controller
) -> None:
    node = add_provider(store, 1, cores=4)
    add_priority(store, "batch", 0, onPreempted="Suspend")
    add_priority(store, "urgent", 1000)
    job(store, "low", "batch", cpu=4)
    low = run(controller, store, "low")
    assert only(store, "low")["spec"]["priority"] == 0

    job(store, "high", "urgent", cpu=4)
    reconcile_everything(controller, store)
    high = only(store, "high")
    assert high["spec"]["node"] == node and high["spec"]["priority"] == 1000
    victim = store.get("Placement", low)
    assert victim["spec"]["desiredState"] == "Suspended"
    assert victim["spec"]["preemption"]["session"] == "high"
    assert victim["spec"]["preemption"]["action"] == "Suspend"
    assert "Preempting" in reasons(store, "high")
    said = [e for e in store.events("Session", "low") if e.reason == "Preempted"]
    assert said and "for Session high (priority urgent=1000)" in said[-1].message

    agent_reports(store, low, "Suspended", reason="Preempted")
    agent_reports(store, high["metadata"]["name"], "Running")
    reconcile_everything(controller, store)
    status = store.get("Session", "low")["status"]
    assert status["phase"] == "Suspended"
    assert status["priority"] == 0 and status["priorityClass"] == "batch"
    preempted = condition(store, "Session", "low", "Preempted")
    assert preempted and "suspended for Session high" in preempted["message"]
    assert store.get("Placement", low)["spec"]["desiredState"] == "Suspended"  # not undone

    agent_reports(store, high["metadata"]["name"], "Succeeded")
    reconcile_everything(controller, store)
    resumed = store.get("Placement", low)
    assert resumed["spec"]["desiredState"] == "Running"
    assert not resumed["spec"].get("preemption")
    assert resumed["spec"]["node"] == node
    said = [e for e in store.events("Session", "low") if e.reason == "Resumed"]
    assert (
        said and "preempted by Session high" in said[-1].message and " after " in said[-1].message
    )
    agent_reports(store, low, "Running")
    reconcile_everything(controller, store)
    assert condition(store, "Session", "low", "Preempted") is None
    assert store.get("Session", "low")["status"]["phase"] == "Running"


@pytest.mark.usefixtures("app")
def test_on_preempted_stop_stops_the_victim_and_runs_it_again_afterwards(
    store: Store, controller: Controller
) -> None:
    node = add_provider(store, 1, cores=2)
    add_priority(store, "batch", 0, onPreempted="Stop")
    add_priority(store, "urgent", 1000)
    job(store, "low", "batch", cpu=2)
    low = run(controller, store, "low")

    job(store, "high", "urgent", cpu=2)
    reconcile_everything(controller, store)
    assert only(store, "high")["spec"]["node"] == node
    assert store.get("Placement", low)["spec"]["desiredState"] == "Stopped"
    agent_reports(store, low, "Stopped", reason="Preempted")
    reconcile_everything(controller, store)
    (again,) = placements(store, "low")  # the stopped one is gone, a new one waits
    assert again["metadata"]["name"] != low
    assert again["spec"]["node"] is None
    assert "lack cpu" in again["status"]["message"]
    assert store.get("Session", "low")["status"]["phase"] == "Pending"

    agent_reports(store, only(store, "high")["metadata"]["name"], "Succeeded")
    reconcile_everything(controller, store)
    assert only(store, "low")["spec"]["node"] == node


@pytest.mark.usefixtures("app")
def test_never_waits_ahead_of_lower_priorities_and_preempts_nothing(
    store: Store, controller: Controller
) -> None:
    node = add_provider(store, 1, cores=2)
    add_priority(store, "batch", 0)
    add_priority(store, "polite", 1000, preemptionPolicy="Never")
    job(store, "low", "batch", cpu=2)
    low = run(controller, store, "low")
    job(store, "low2", "batch", cpu=2)  # applied before the urgent one
    reconcile_everything(controller, store)
    job(store, "urgent", "polite", cpu=2)
    reconcile_everything(controller, store)
    reconcile_everything(controller, store)  # low2's periodic retry: it now stands behind

    assert store.get("Placement", low)["spec"]["desiredState"] == "Running"
    assert not store.get("Placement", low)["spec"].get("preemption")
    waiting = only(store, "urgent")
    assert waiting["spec"]["node"] is None and "lack cpu" in waiting["status"]["message"]
    low2 = only(store, "low2")
    assert "waiting: 1 session of higher priority ahead" in low2["status"]["message"]

    agent_reports(store, low, "Succeeded")
    reconcile_everything(controller, store)  # low2 is reconciled before urgent: it yields
    assert only(store, "urgent")["spec"]["node"] == node
    assert only(store, "low2")["spec"]["node"] is None


@pytest.mark.usefixtures("app")
def test_preemption_takes_the_lowest_priority_first_and_equal_never(
    store: Store, controller: Controller
) -> None:
    node = add_provider(store, 1, cores=4)
    add_priority(store, "low", 0)
    add_priority(store, "mid", 500)
    add_priority(store, "top", 1000)
    job(store, "m1", "mid", cpu=2)
    m1 = run(controller, store, "m1")
    job(store, "l1", "low", cpu=2)
    l1 = run(controller, store, "l1")

    job(store, "m2", "mid", cpu=2)  # equal to m1: may take only l1
    reconcile_everything(controller, store)
    assert only(store, "m2")["spec"]["node"] == node
    assert store.get("Placement", l1)["spec"]["preemption"]["session"] == "m2"
    assert not store.get("Placement", m1)["spec"].get("preemption")
    agent_reports(store, only(store, "m2")["metadata"]["name"], "Running")

    job(store, "m3", "mid", cpu=2)  # only mid placements are left: equal never preempts
    reconcile_everything(controller, store)
    assert only(store, "m3")["spec"]["node"] is None
    assert not store.get("Placement", m1)["spec"].get("preemption")

    job(store, "t1", "top", cpu=2)  # the newest of the mid ones goes
    reconcile_everything(controller, store)
    assert only(store, "t1")["spec"]["node"] == node
    m2 = only(store, "m2")
    assert m2["spec"]["preemption"]["session"] == "t1"
    assert not store.get("Placement", m1)["spec"].get("preemption")


@pytest.mark.usefixtures("app")
def test_a_suspended_victim_keeps_its_memory_and_nothing_that_needs_it_is_placed(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1, cores=4, memory_gib=8)
    add_priority(store, "batch", 0, onPreempted="Suspend")
    add_priority(store, "urgent", 1000)
    job(store, "low", "batch", cpu=4, memory=5 * 1024)
    low = run(controller, store, "low")
    job(store, "u1", "urgent", cpu=3.5, memory=512)
    reconcile_everything(controller, store)
    assert only(store, "u1")["spec"]["node"]
    assert store.get("Placement", low)["spec"]["preemption"]["action"] == "Suspend"

    job(store, "u2", "urgent", cpu=0.25, memory=4 * 1024)  # fits only if low's memory were free
    reconcile_everything(controller, store)
    waiting = only(store, "u2")
    assert waiting["spec"]["node"] is None
    assert "lack memory" in waiting["status"]["message"]


@pytest.mark.usefixtures("app")
def test_a_session_without_priority_gets_the_default_class(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1)
    add_priority(store, "normal", 100, default=True)
    job(store, "s", None, cpu=1)
    reconcile_everything(controller, store)
    assert only(store, "s")["spec"]["priority"] == 100
    status = store.get("Session", "s")["status"]
    assert (status["priority"], status["priorityClass"]) == (100, "normal")


def test_a_second_default_is_refused_naming_both(store: Store) -> None:
    add_priority(store, "normal", 100, default=True)

    def prio(name: str, default: bool) -> dict[str, Any]:
        return {
            "kind": "Priority",
            "metadata": {"name": name},
            "spec": {"value": 1, "default": default},
        }

    errors = default_priority_errors(store, [prio("other", True)])
    assert errors == [
        {
            "index": 0,
            "path": "spec.default",
            "message": "Priority other and Priority normal both say default: true; only one "
            "Priority may be the default: set default: false on one",
        }
    ]
    assert default_priority_errors(store, [prio("other", True), prio("normal", False)]) == []
    assert default_priority_errors(store, [prio("normal", True)]) == []
    two = default_priority_errors(store, [prio("a", True), prio("b", True)])
    assert [e["index"] for e in two] == [0, 1]


def test_an_apply_that_sets_no_default_priority_reads_no_list_of_them(store: Store) -> None:
    """Only a batch that says ``default: true`` can make a second default, so only such
    a batch reads every Priority (it listed them all for every Priority applied: with
    5,000 stored, bench_core's one-object applies took ~60 ms instead of ~3)."""
    add_priority(store, "normal", 100, default=True)
    for i in range(20):
        add_priority(store, f"p{i}", i)
    listed = kinds_listed(store)
    plain = {"kind": "Priority", "metadata": {"name": "x"}, "spec": {"value": 7}}
    assert default_priority_errors(store, [plain]) == []
    assert listed == []
    second = {"kind": "Priority", "metadata": {"name": "y"}, "spec": {"value": 7, "default": True}}
    assert len(default_priority_errors(store, [plain, second])) == 1
    assert listed == ["Priority"]


# ----------------------------------------------------------- pure victim choice


def _placement(
    name: str, priority: int, cpu: float, memory: int, on: str, created: str
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {
            "session": name,
            "node": "n",
            "desiredState": "Running",
            "priority": priority,
            "onPreempted": on,
            "workload": {"resources": {"cpu": cpu, "memoryMiB": memory}},
        },
        "status": {"state": "Running"},
    }


def _query(cpu: float, memory: int) -> Query:
    return Query("native", None, None, None, (), False, cpu, memory)


def test_victims_are_the_fewest_lowest_first_and_only_stopped_ones_free_memory() -> None:
    view = NodeView("n", ready=True, allocated_cpu=4, allocated_memory_mib=3072, active=3)
    view.cores, view.memory_mib, view.available_mib = 4, 4096, 4096
    old_low = _placement("old-low", 0, 1, 1024, "Suspend", "2026-01-01T00:00:00Z")
    new_low = _placement("new-low", 0, 1, 1024, "Suspend", "2026-01-02T00:00:00Z")
    mid = _placement("mid", 5, 2, 1024, "Stop", "2026-01-01T00:00:00Z")
    ordered = [new_low, old_low, mid]  # as the index gives them: lowest, then newest first

    got = victims_for(_query(1, 512), view, candidates_on(ordered, 10))
    assert [v.name for v in got or []] == ["new-low"]  # the newest of the lowest, and one
    got = victims_for(_query(2, 512), view, candidates_on(ordered, 10))
    assert [v.name for v in got or []] == ["new-low", "old-low"]
    # 2 GiB free after suspensions? no: suspended victims keep memory; only mid (Stop) frees
    got = victims_for(_query(2, 2048), view, candidates_on(ordered, 10))
    assert [v.name for v in got or []] == ["mid"]
    assert victims_for(_query(1, 512), view, candidates_on(ordered, 0)) is None  # equal: none
    assert victims_for(_query(4, 4096), view, candidates_on(ordered, 10)) is None


@pytest.mark.usefixtures("app")
def test_a_suspended_victim_resumes_before_a_newer_session_of_its_priority_takes_the_room(
    store: Store, controller: Controller
) -> None:
    node = add_provider(store, 1, cores=2)
    add_priority(store, "batch", 0)
    add_priority(store, "urgent", 1000)
    job(store, "low", "batch", cpu=2)
    low = run(controller, store, "low")
    job(store, "high", "urgent", cpu=2)
    reconcile_everything(controller, store)
    agent_reports(store, low, "Suspended")
    high = only(store, "high")["metadata"]["name"]
    agent_reports(store, high, "Running")
    job(store, "aa-newer", "batch", cpu=2)  # same priority as low, applied after it
    reconcile_everything(controller, store)
    assert only(store, "aa-newer")["spec"]["node"] is None

    agent_reports(store, high, "Succeeded")
    reconcile_everything(controller, store)  # "aa-newer" is reconciled before "low": it yields
    assert not store.get("Placement", low)["spec"].get("preemption")
    assert store.get("Placement", low)["spec"]["node"] == node
    assert only(store, "aa-newer")["spec"]["node"] is None
