"""Sessions become Placements on providers; providers are Ready while they heartbeat; a
lost node's placements are replaced (or fail the Session); suspend, delete and spec changes
reach the placements; a converged world is left alone.

Real Store on tmp_path and the real Controller; the agent is simulated by writing placement
status the way an agent does (``update_status``) and heartbeats the way the hub's heartbeat
route does (``lastHeartbeat`` stamped by the hub's clock).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.reconcile import Controller
from controller.reconcilers import SESSION_FINALIZER, register_all
from controller.store import Store
from tests.helpers import condition_of

IMAGE = "sha3-256:" + "ab" * 32
OTHER_IMAGE = "sha3-256:" + "cd" * 32
GIB = 1024**3


def nid(i: int) -> str:
    return "0x" + f"{i:040x}"


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def make_controller(
    store: Store, *, node_grace: float = 30.0, heartbeat: float = 5.0
) -> Controller:
    c = Controller(store, workers=2, resync_period=30)
    register_all(c, node_grace=node_grace, heartbeat=heartbeat)
    return c


@pytest.fixture
def controller(store: Store) -> Controller:
    return make_controller(store)


def add_provider(
    store: Store,
    i: int,
    *,
    cores: int = 4,
    memory_gib: int = 8,
    labels: dict[str, str] | None = None,
    beat: datetime | None = None,
) -> str:
    node = nid(i)
    key = "ed25519:" + base64.b64encode(bytes([i]) * 32).decode()
    store.create(
        {
            "kind": "Provider",
            "metadata": {"name": node, "labels": labels or {}},
            "spec": {"nodeId": node, "publicKey": key, "labels": labels or {}},
            "status": {
                "inventory": {
                    "os": {"name": "Linux", "version": "6.1"},
                    "cpu": {
                        "architecture": "x86_64",
                        "bit": [64],
                        "cores": cores,
                        "threads": cores,
                    },
                    "memoryBytes": memory_gib * GIB,
                    "storageBytes": 100 * GIB,
                    "runtimes": ["native"],
                },
                "usage": {"memoryAvailableBytes": memory_gib * GIB},
                "lastHeartbeat": iso(beat or datetime.now(UTC)),
            },
        }
    )
    return node


def heartbeat(
    store: Store, node: str, when: datetime | None = None, period: float | None = None
) -> None:
    """What the hub's heartbeat route writes (``period``: what the agent said it beats at)."""
    with store.transaction():
        status = dict(store.get("Provider", node)["status"])
        status["lastHeartbeat"] = iso(when or datetime.now(UTC))
        if period is not None:
            status["heartbeatSeconds"] = period
        store.update_status("Provider", node, status)


def add_session(store: Store, name: str = "s", **spec: Any) -> None:
    workload = spec.pop("workload", {"runtime": "native", "image": {"hash": IMAGE}})
    store.create(
        {
            "kind": "Session",
            "metadata": {"name": name, "finalizers": [SESSION_FINALIZER]},
            "spec": {"app": "demo", "workload": workload, **spec},
        }
    )


def placements(store: Store, session: str = "s") -> list[dict[str, Any]]:
    return store.list("Placement", {"gu/session": session})


def agent_reports(store: Store, placement: str, state: str, **extra: Any) -> None:
    """What an agent writes for one of its placements."""
    status = dict(store.get("Placement", placement)["status"])
    status.update(state=state, **extra)
    store.update_status("Placement", placement, status)


def condition(store: Store, kind: str, name: str, type_: str) -> dict[str, Any] | None:
    return condition_of(store.get(kind, name), type_)


def reconcile_everything(controller: Controller, store: Store) -> None:
    """One synchronous pass over every object of every registered kind (Providers first)."""
    for kind in controller.kinds:
        for o in store.list(kind):
            controller.reconcile(kind, o["metadata"]["name"])


def run_until(
    controller: Controller, check: Callable[[], bool], what: str, timeout: float = 8.0
) -> float:
    """Run the real controller until ``check()`` holds; returns the seconds it took."""

    async def body() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        start = time.monotonic()
        try:
            while not check():
                assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
                await asyncio.sleep(0.01)
            return time.monotonic() - start
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=5)

    return asyncio.run(asyncio.wait_for(body(), timeout=timeout + 6))


@pytest.fixture
def app(store: Store) -> None:
    store.create({"kind": "App", "metadata": {"name": "demo"}, "spec": {}})


# ------------------------------------------------------------------ placing


@pytest.mark.usefixtures("app")
def test_count_two_on_three_ready_providers_makes_two_placements_on_distinct_nodes(
    store: Store, controller: Controller
) -> None:
    nodes = {add_provider(store, i) for i in (1, 2, 3)}
    add_session(store, providers={"count": 2}, restartPolicy="OnFailure")
    reconcile_everything(controller, store)

    got = placements(store)
    assert len(got) == 2
    assert len({p["spec"]["node"] for p in got}) == 2
    assert {p["spec"]["node"] for p in got} <= nodes
    for p in got:
        assert re.fullmatch(r"s-[a-z0-9]{5}", p["metadata"]["name"])
        assert p["metadata"]["labels"] == {"gu/session": "s"}
        assert p["spec"]["session"] == "s"
        assert p["spec"]["app"] == "demo"
        assert p["spec"]["desiredState"] == "Running"
        assert p["spec"]["restartPolicy"] == "OnFailure"
        assert p["spec"]["workload"]["image"]["hash"] == IMAGE
        assert p["spec"]["workload"]["resources"] == {"cpu": 1.0, "memoryMiB": 256}
        assert p["status"] == {"state": "Pending"}
    status = store.get("Session", "s")["status"]
    assert status["phase"] == "Pending"
    assert status["counts"] == {
        "pending": 2,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "suspended": 0,
    }
    assert [s["name"] for s in status["placements"]] == sorted(p["metadata"]["name"] for p in got)
    reconciling = condition(store, "Session", "s", "Reconciling")
    assert reconciling is not None and reconciling["status"] == "True"
    assert condition(store, "Session", "s", "Stalled") is None
    scheduled = [e for e in store.events("Session", "s") if e.reason == "Scheduled"]
    assert len(scheduled) == 1 and all(p["metadata"]["name"] in scheduled[0].message for p in got)


@pytest.mark.usefixtures("app")
def test_a_long_session_name_is_cut_to_keep_placement_names_within_63_characters(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1)
    name = "a" * 63
    add_session(store, name)
    reconcile_everything(controller, store)
    (p,) = placements(store, name)
    assert len(p["metadata"]["name"]) == 63
    assert p["metadata"]["name"].startswith("a" * 57 + "-")


@pytest.mark.usefixtures("app")
def test_more_memory_than_any_provider_leaves_a_pending_placement_and_stalls_the_session(
    store: Store, controller: Controller
) -> None:
    for i in (1, 2, 3):
        add_provider(store, i, memory_gib=4)
    add_session(
        store,
        workload={
            "runtime": "native",
            "image": {"hash": IMAGE},
            "resources": {"memoryMiB": 64 * 1024},
        },
    )
    reconcile_everything(controller, store)

    (p,) = placements(store)
    assert p["spec"]["node"] is None
    assert p["status"] == {
        "state": "Pending",
        "reason": "Unschedulable",
        "message": "0/3 providers: 3 lack memory",
    }
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None and stalled["status"] == "True"
    assert stalled["reason"] == "Unschedulable"
    assert stalled["message"] == "0/3 providers: 3 lack memory"
    ready = condition(store, "Session", "s", "Ready")
    assert ready is not None and ready["status"] == "False"
    assert store.get("Session", "s")["status"]["phase"] == "Pending"
    assert store.events("Session", "s")[-1].reason == "Unschedulable"


@pytest.mark.usefixtures("app")
def test_a_pending_placement_binds_when_a_provider_that_fits_appears(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1, memory_gib=2)
    add_session(
        store,
        workload={"runtime": "native", "image": {"hash": IMAGE}, "resources": {"memoryMiB": 8192}},
    )
    reconcile_everything(controller, store)
    (pending,) = placements(store)
    assert pending["spec"]["node"] is None

    big = nid(9)

    def bound() -> bool:
        if store.try_get("Provider", big) is None:
            add_provider(store, 9, memory_gib=32)  # a new agent enrols and beats
        (p,) = placements(store)
        return p["spec"]["node"] == big

    run_until(controller, bound, "the pending placement to bind to the new provider")
    (p,) = placements(store)
    assert p["metadata"]["name"] == pending["metadata"]["name"]  # bound, not replaced
    assert p["status"] == {"state": "Pending"}
    assert condition(store, "Session", "s", "Stalled") is None


@pytest.mark.usefixtures("app")
def test_agent_status_drives_the_session_phase(store: Store, controller: Controller) -> None:
    add_provider(store, 1)
    add_provider(store, 2)
    add_session(store, providers={"count": 2})
    reconcile_everything(controller, store)
    names = [p["metadata"]["name"] for p in placements(store)]

    agent_reports(store, names[0], "Running", startedAt=iso(datetime.now(UTC)))
    controller.reconcile("Session", "s")
    assert store.get("Session", "s")["status"]["phase"] == "Pending"

    agent_reports(store, names[1], "Running")
    controller.reconcile("Session", "s")
    status = store.get("Session", "s")["status"]
    assert status["phase"] == "Running"
    assert status["counts"]["running"] == 2
    ready = condition(store, "Session", "s", "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "Running"
    assert condition(store, "Session", "s", "Reconciling") is None

    agent_reports(store, names[0], "Succeeded", exitCode=0)
    controller.reconcile("Session", "s")
    assert store.get("Session", "s")["status"]["phase"] == "Running"
    agent_reports(store, names[1], "Succeeded", exitCode=0)
    controller.reconcile("Session", "s")
    status = store.get("Session", "s")["status"]
    assert status["phase"] == "Succeeded"
    assert [p["exitCode"] for p in status["placements"]] == [0, 0]
    ready = condition(store, "Session", "s", "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "Succeeded"
    assert len(placements(store)) == 2  # finished work is not re-run


@pytest.mark.usefixtures("app")
def test_a_failed_placement_with_restart_policy_never_fails_the_session(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1)
    add_session(store, restartPolicy="Never")
    reconcile_everything(controller, store)
    (p,) = placements(store)
    agent_reports(store, p["metadata"]["name"], "Failed", exitCode=3, reason="Error")
    controller.reconcile("Session", "s")
    status = store.get("Session", "s")["status"]
    assert status["phase"] == "Failed"
    assert status["placements"][0]["exitCode"] == 3
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None and stalled["reason"] == "PlacementFailed"
    assert "exit code 3" in stalled["message"]
    assert len(placements(store)) == 1  # no replacement


# --------------------------------------------------------------- providers


def test_a_provider_is_ready_while_it_beats_and_not_ready_three_beats_after_it_stops(
    store: Store,
) -> None:
    controller = make_controller(store, heartbeat=0.2)
    node = add_provider(store, 1)
    controller.reconcile("Provider", node)
    ready = condition(store, "Provider", node, "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "HeartbeatOK"
    last = datetime.fromisoformat(store.get("Provider", node)["status"]["lastHeartbeat"])

    def not_ready() -> bool:
        cond = condition(store, "Provider", node, "Ready")
        return cond is not None and cond["status"] == "False"

    # no write happens after the last beat: the requeue alone must notice the silence
    run_until(controller, not_ready, "the provider to turn NotReady", timeout=5)
    cond = condition(store, "Provider", node, "Ready")
    assert cond is not None and cond["reason"] == "HeartbeatMissed"
    assert re.fullmatch(r"no heartbeat for \d+s \(agents beat every 0.2s\)", cond["message"])
    flipped = datetime.fromisoformat(cond["lastTransitionTime"])
    silence = (flipped - last).total_seconds()
    assert 0.6 <= silence < 1.6, f"flipped {silence:.2f}s after the last beat (3 × 0.2s)"

    heartbeat(store, node)
    controller.reconcile("Provider", node)
    back = condition(store, "Provider", node, "Ready")
    assert back is not None and back["status"] == "True"


def test_the_period_an_agent_reports_is_the_one_its_silence_is_measured_by(
    store: Store,
) -> None:
    controller = make_controller(store, heartbeat=30.0)  # the hub's default would wait 90 s
    node = add_provider(store, 1)
    heartbeat(store, node, period=0.2)
    last = datetime.fromisoformat(store.get("Provider", node)["status"]["lastHeartbeat"])
    controller.reconcile("Provider", node)

    def not_ready() -> bool:
        cond = condition(store, "Provider", node, "Ready")
        return cond is not None and cond["status"] == "False"

    run_until(controller, not_ready, "the provider to turn NotReady", timeout=5)
    cond = condition(store, "Provider", node, "Ready")
    assert cond is not None
    assert re.fullmatch(r"no heartbeat for \d+s \(agents beat every 0.2s\)", cond["message"])
    silence = (datetime.fromisoformat(cond["lastTransitionTime"]) - last).total_seconds()
    assert 0.6 <= silence < 1.6, f"flipped {silence:.2f}s after the last beat (3 × 0.2s)"


def test_a_provider_that_never_beat_is_not_ready(store: Store, controller: Controller) -> None:
    node = nid(1)
    store.create(
        {
            "kind": "Provider",
            "metadata": {"name": node},
            "spec": {
                "nodeId": node,
                "publicKey": "ed25519:" + base64.b64encode(b"k" * 32).decode(),
            },
        }
    )
    controller.reconcile("Provider", node)
    cond = condition(store, "Provider", node, "Ready")
    assert cond is not None and cond["status"] == "False" and cond["message"] == "no heartbeat yet"


# --------------------------------------------------------------- node loss


@pytest.mark.usefixtures("app")
def test_past_the_grace_a_lost_placement_with_on_failure_is_replaced_on_another_node(
    store: Store,
) -> None:
    controller = make_controller(store, heartbeat=0.1, node_grace=0.4)
    for i in (1, 2):
        add_provider(store, i)
    add_session(store, restartPolicy="OnFailure")
    reconcile_everything(controller, store)
    (first,) = placements(store)
    lost_node = first["spec"]["node"]
    other = next(n for n in (nid(1), nid(2)) if n != lost_node)
    agent_reports(store, first["metadata"]["name"], "Running")

    def replaced() -> bool:
        heartbeat(store, other)  # only the other agent keeps beating
        got = placements(store)
        return len(got) == 1 and got[0]["metadata"]["name"] != first["metadata"]["name"]

    took = run_until(controller, replaced, "a replacement on the surviving node", timeout=6)
    (second,) = placements(store)
    assert second["spec"]["node"] == other
    assert took >= 0.3 + 0.4 - 0.2  # three missed beats, then the grace
    assert store.try_get("Placement", first["metadata"]["name"]) is None
    reasons = [e.reason for e in store.events("Session", "s")]
    assert "NodeLost" in reasons
    lost = next(e for e in store.events("Session", "s") if e.reason == "NodeLost")
    assert first["metadata"]["name"] in lost.message and lost_node in lost.message


@pytest.mark.usefixtures("app")
def test_past_the_grace_a_lost_placement_with_never_fails_the_session(store: Store) -> None:
    controller = make_controller(store, heartbeat=5, node_grace=0.2)
    node = add_provider(store, 1)
    add_provider(store, 2)
    add_session(store, restartPolicy="Never")
    reconcile_everything(controller, store)
    (p,) = placements(store)
    name = p["metadata"]["name"]
    lost_node = p["spec"]["node"]
    agent_reports(store, name, "Running")
    # the agent of lost_node falls silent: its last beat was long ago
    heartbeat(store, lost_node, datetime.now(UTC) - timedelta(minutes=5))
    reconcile_everything(controller, store)
    assert condition(store, "Provider", lost_node, "Ready")["status"] == "False"  # type: ignore[index]
    result = controller.reconcile("Session", "s")
    assert result is not None and result.requeue_after is not None
    assert 0 < result.requeue_after <= 0.3  # woken at the grace deadline
    assert store.get("Session", "s")["status"]["phase"] == "Running"

    time.sleep(result.requeue_after)
    controller.reconcile("Session", "s")
    p = store.get("Placement", name)
    assert p["status"]["state"] == "Failed" and p["status"]["reason"] == "NodeLost"
    assert p["spec"]["desiredState"] == "Stopped"
    status = store.get("Session", "s")["status"]
    assert status["phase"] == "Failed"
    assert status["placements"][0]["reason"] == "NodeLost"
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None and stalled["reason"] == "NodeLost"
    assert len(placements(store)) == 1  # Never: no replacement

    # the agent comes back and reports the workload it stopped: the session stays Failed
    heartbeat(store, lost_node)
    agent_reports(store, name, "Stopped")
    reconcile_everything(controller, store)
    assert store.get("Session", "s")["status"]["phase"] == "Failed"
    assert len(placements(store)) == 1
    assert node in (nid(1), nid(2))


# ------------------------------------------------------- suspend and delete


@pytest.mark.usefixtures("app")
def test_suspend_flips_the_desired_state_and_back(store: Store, controller: Controller) -> None:
    add_provider(store, 1)
    add_session(store)
    reconcile_everything(controller, store)
    (p,) = placements(store)
    agent_reports(store, p["metadata"]["name"], "Running")

    spec = store.get("Session", "s")["spec"]
    store.replace({"kind": "Session", "metadata": {"name": "s"}, "spec": {**spec, "suspend": True}})
    controller.reconcile("Session", "s")
    assert placements(store)[0]["spec"]["desiredState"] == "Suspended"
    assert store.get("Session", "s")["status"]["phase"] == "Suspended"
    reconciling = condition(store, "Session", "s", "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "Suspending"
    agent_reports(store, p["metadata"]["name"], "Suspended")
    controller.reconcile("Session", "s")
    assert store.get("Session", "s")["status"]["counts"]["suspended"] == 1
    assert condition(store, "Session", "s", "Reconciling") is None

    store.replace({"kind": "Session", "metadata": {"name": "s"}, "spec": spec})
    controller.reconcile("Session", "s")
    assert placements(store)[0]["spec"]["desiredState"] == "Running"
    assert len(placements(store)) == 1


@pytest.mark.usefixtures("app")
def test_deleting_a_session_stops_then_deletes_its_placements_then_releases_it(
    store: Store, controller: Controller
) -> None:
    for i in (1, 2):
        add_provider(store, i)
    add_session(store, providers={"count": 2})
    reconcile_everything(controller, store)
    names = [p["metadata"]["name"] for p in placements(store)]
    for name in names:
        agent_reports(store, name, "Running")

    store.delete("Session", "s")
    result = controller.reconcile("Session", "s")
    assert result is not None and result.requeue_after is not None  # waiting for agents
    assert [p["spec"]["desiredState"] for p in placements(store)] == ["Stopped", "Stopped"]
    session = store.get("Session", "s")
    assert session["metadata"]["finalizers"] == [SESSION_FINALIZER]
    reconciling = condition(store, "Session", "s", "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "Deleting"

    agent_reports(store, names[0], "Stopped")
    controller.reconcile("Session", "s")
    assert [p["metadata"]["name"] for p in placements(store)] == [names[1]]
    assert store.try_get("Session", "s") is not None

    agent_reports(store, names[1], "Stopped")
    controller.reconcile("Session", "s")
    assert placements(store) == []
    assert store.try_get("Session", "s") is None
    assert store.events("Session", "s") == []  # its events went with it


@pytest.mark.usefixtures("app")
def test_deletion_runs_end_to_end_through_the_controller(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1)
    add_session(store)
    reconcile_everything(controller, store)
    (p,) = placements(store)
    agent_reports(store, p["metadata"]["name"], "Running")
    store.delete("Session", "s")

    def gone() -> bool:
        cur = store.try_get("Placement", p["metadata"]["name"])
        if (
            cur is not None
            and cur["spec"]["desiredState"] == "Stopped"
            and cur["status"]["state"] != "Stopped"
        ):
            agent_reports(store, cur["metadata"]["name"], "Stopped")  # the agent obeys
        return store.try_get("Session", "s") is None

    run_until(controller, gone, "the session to go")
    assert placements(store) == []


@pytest.mark.usefixtures("app")
def test_a_session_stored_without_the_finalizer_gets_it_with_its_first_placement(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1)
    store.create(
        {
            "kind": "Session",
            "metadata": {"name": "bare"},
            "spec": {"app": "demo", "workload": {"runtime": "native", "image": {"hash": IMAGE}}},
        }
    )
    controller.reconcile("Session", "bare")
    assert len(placements(store, "bare")) == 1
    assert store.get("Session", "bare")["metadata"]["finalizers"] == [SESSION_FINALIZER]


# ------------------------------------------------------------ spec changes


@pytest.mark.usefixtures("app")
def test_a_workload_change_replaces_running_placements(
    store: Store, controller: Controller
) -> None:
    add_provider(store, 1, cores=8)
    add_session(store)
    reconcile_everything(controller, store)
    (old,) = placements(store)
    agent_reports(store, old["metadata"]["name"], "Running")

    spec = store.get("Session", "s")["spec"]
    spec["workload"] = {"runtime": "native", "image": {"hash": OTHER_IMAGE}}
    store.replace({"kind": "Session", "metadata": {"name": "s"}, "spec": spec})
    controller.reconcile("Session", "s")
    got = {p["metadata"]["name"]: p for p in placements(store)}
    assert len(got) == 2
    assert got[old["metadata"]["name"]]["spec"]["desiredState"] == "Stopped"
    (new,) = [p for n, p in got.items() if n != old["metadata"]["name"]]
    assert new["spec"]["workload"]["image"]["hash"] == OTHER_IMAGE
    assert new["spec"]["desiredState"] == "Running"
    reconciling = condition(store, "Session", "s", "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "Stopping"

    agent_reports(store, old["metadata"]["name"], "Stopped")
    controller.reconcile("Session", "s")
    assert [p["metadata"]["name"] for p in placements(store)] == [new["metadata"]["name"]]


@pytest.mark.usefixtures("app")
def test_lowering_the_count_retires_the_extra_placements(
    store: Store, controller: Controller
) -> None:
    for i in (1, 2, 3):
        add_provider(store, i)
    add_session(store, providers={"count": 3})
    reconcile_everything(controller, store)
    names = sorted(p["metadata"]["name"] for p in placements(store))
    for name in names[:2]:
        agent_reports(store, name, "Running")
    spec = store.get("Session", "s")["spec"]
    store.replace(
        {"kind": "Session", "metadata": {"name": "s"}, "spec": {**spec, "providers": {"count": 2}}}
    )
    controller.reconcile("Session", "s")
    desired = {p["metadata"]["name"]: p["spec"]["desiredState"] for p in placements(store)}
    assert desired == {names[0]: "Running", names[1]: "Running", names[2]: "Stopped"}


# -------------------------------------------------------------- convergence


@pytest.mark.usefixtures("app")
def test_a_resync_of_a_converged_world_writes_nothing(store: Store, controller: Controller) -> None:
    for i in (1, 2, 3):
        add_provider(store, i, memory_gib=4)
    add_session(store, "running", providers={"count": 2})
    add_session(
        store,
        "stuck",
        workload={"runtime": "native", "image": {"hash": IMAGE}, "resources": {"memoryMiB": 99999}},
    )
    add_session(store, "orphan", app="missing")
    reconcile_everything(controller, store)
    for p in placements(store, "running"):
        agent_reports(store, p["metadata"]["name"], "Running")
    reconcile_everything(controller, store)
    rv = store.resource_version
    events = {n: len(store.events("Session", n)) for n in ("running", "stuck", "orphan")}

    reconcile_everything(controller, store)
    reconcile_everything(controller, store)
    assert store.resource_version == rv
    assert {n: len(store.events("Session", n)) for n in events} == events
    assert store.get("Session", "running")["status"]["phase"] == "Running"
    stalled = condition(store, "Session", "orphan", "Stalled")
    assert stalled is not None and stalled["reason"] == "MissingReference"
    assert placements(store, "orphan") == []  # nothing is scheduled for a stalled session


@pytest.mark.usefixtures("app")
def test_heartbeats_that_change_only_usage_wake_no_session(
    store: Store, controller: Controller
) -> None:
    from controller.reconcilers.session import SessionReconciler

    reconciler = controller._handlers["Session"]
    assert isinstance(reconciler, SessionReconciler)
    node = add_provider(store, 1)
    add_session(store)
    reconcile_everything(controller, store)
    provider = store.get("Provider", node)
    assert reconciler.sessions_for_provider(provider, store) == ["s"]  # first sight
    heartbeat(store, node)
    assert reconciler.sessions_for_provider(store.get("Provider", node), store) == []
    # readiness flips: the sessions placed on it are woken
    heartbeat(store, node, datetime.now(UTC) - timedelta(minutes=5))
    controller.reconcile("Provider", node)
    assert reconciler.sessions_for_provider(store.get("Provider", node), store) == ["s"]


@pytest.mark.usefixtures("app")
def test_with_no_provider_at_all_the_session_waits_unschedulable(
    store: Store, controller: Controller
) -> None:
    add_session(store)
    controller.reconcile("Session", "s")
    (p,) = placements(store)
    assert p["spec"]["node"] is None
    assert p["status"]["message"] == "0/0 providers: none registered"
    ready = condition(store, "Session", "s", "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "Unschedulable"


@pytest.mark.usefixtures("app")
def test_a_policy_hook_refuses_providers_with_its_own_words(store: Store) -> None:
    from controller.policy import PolicyCheck
    from controller.reconcilers import session as session_reconciler
    from controller.scheduler import NodeView
    from specs.kinds import Session

    def policy(s: Session, st: Store) -> PolicyCheck:
        assert s.spec.app == "demo"

        def allowed(node: NodeView) -> str | None:
            return None if node.labels.get("trusted") == "yes" else "not trusted"

        return PolicyCheck(allowed=allowed)

    controller = Controller(store)
    session_reconciler.register(controller, policy=policy)
    add_provider(store, 1)
    add_provider(store, 2)
    for i in (1, 2):
        status = dict(store.get("Provider", nid(i))["status"])
        status["conditions"] = [{"type": "Ready", "status": "True", "reason": "HeartbeatOK"}]
        store.update_status("Provider", nid(i), status)
    add_session(store, providers={"count": 2})
    controller.reconcile("Session", "s")
    assert all(p["spec"]["node"] is None for p in placements(store))
    stalled = condition(store, "Session", "s", "Stalled")
    assert (
        stalled is not None
        and stalled["message"] == "2 of 2 slots waiting: 0/2 providers: 2 not trusted"
    )
    assert len(placements(store)) == 1  # one placement waits for both slots

    spec = store.get("Provider", nid(2))["spec"]
    store.replace(
        {
            "kind": "Provider",
            "metadata": {"name": nid(2), "labels": {"trusted": "yes"}},
            "spec": spec,
        }
    )
    controller.reconcile("Session", "s")
    nodes = sorted(str(p["spec"]["node"]) for p in placements(store))
    assert nodes == [nid(2), "None"]
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None
    assert stalled["message"] == "1/2 providers: 1 not trusted"
    controller.reconcile("Session", "s")  # the one left unbound: node 2 is taken by its sibling
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None
    assert stalled["message"] == "0/2 providers: 1 already run this session, 1 not trusted"


@pytest.mark.usefixtures("app")
def test_a_change_of_capacity_wakes_only_the_waiting_sessions_that_fit_once_per_window(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty providers too small for any of the five waiting Sessions wake none of them
    (a walk of the queue, once per window), not thirty passes each; one that has room
    wakes those that fit, at most ``WAKE_MAX``, in serving order; one of them that takes
    the room wakes the next that fits (none: the room is gone)."""
    from controller.reconcilers.session import reconciler as session_reconciler

    monkeypatch.setattr(session_reconciler, "WAKE_MAX", 2)
    c = Controller(store, workers=2, resync_period=30)
    rec = session_reconciler.register(c)
    t = [100.0]
    rec.clock = lambda: t[0]
    deferred: list[tuple[str, float]] = []
    rec.defer = lambda name, delay: deferred.append((name, delay))
    big = {"runtime": "native", "image": {"hash": IMAGE}, "resources": {"memoryMiB": 8192}}
    waiting = [f"s{i}" for i in range(5)]
    for name in waiting:
        add_session(store, name, workload=big)
        c.reconcile("Session", name)
    assert all(p["spec"]["node"] is None for p in store.list("Placement"))
    assert deferred == []

    def ready_provider(i: int, memory_gib: int) -> dict[str, Any]:
        node = add_provider(store, i, memory_gib=memory_gib)
        status = dict(store.get("Provider", node)["status"])
        status["conditions"] = [{"type": "Ready", "status": "True", "reason": "HeartbeatOK"}]
        return store.update_status("Provider", node, status)

    woken = []
    for i in range(1, 31):
        small = ready_provider(i, memory_gib=2)  # too small for any of them
        woken.append(rec.sessions_for_provider(small, store))
        t[0] += 0.01
    assert woken == [[]] * 30  # none fits: nobody is woken, now or later
    # inside the window, one pass is queued for its end (the queue's head): it walks
    # the queue again then, for the changes the window held back
    assert [n for n, _ in deferred] == ["s0"]
    assert 0 < deferred[0][1] <= session_reconciler.WAKE_WINDOW
    # its pass comes early (an earlier deadline of its own won the queue's one per
    # key): it is queued again for the window's end, so the walk is not lost
    c.reconcile("Session", "s1")
    c.reconcile("Session", "s0")
    assert [n for n, _ in deferred] == ["s0", "s0"]
    assert 0 < deferred[1][1] < deferred[0][1]
    t[0] += session_reconciler.WAKE_WINDOW
    c.reconcile("Session", "s0")
    assert [n for n, _ in deferred] == ["s0", "s0"]  # (served: nobody fits yet)

    t[0] += session_reconciler.WAKE_WINDOW  # a new window
    one = ready_provider(40, memory_gib=12)  # room for one of them
    node = one["metadata"]["name"]
    assert rec.sessions_for_provider(one, store) == ["s0", "s1"]
    c.reconcile("Session", "s0")  # takes the room; nobody else fits now: none woken
    assert [p["spec"]["node"] for p in placements(store, "s0")] == [node]
    assert [n for n, _ in deferred] == ["s0", "s0"]
    c.reconcile("Session", "s1")  # woken, finds no room, waits again
    assert [p["spec"]["node"] for p in placements(store, "s1")] == [None]

    t[0] += session_reconciler.WAKE_WINDOW
    two = ready_provider(41, memory_gib=20)  # room for two more
    assert rec.sessions_for_provider(two, store) == ["s1", "s2"]
    c.reconcile("Session", "s1")  # takes room; s2 (woken already) is not woken twice, s3 is
    assert [n for n, _ in deferred] == ["s0", "s0", "s3"]


@pytest.mark.usefixtures("app")
def test_a_backlog_drains_when_providers_join_in_about_one_pass_per_session(
    store: Store,
) -> None:
    """300 Sessions wait with no provider at all; then 60 providers join in one write.
    Each Session is bound in about one pass of its own, not a pass per provider or per
    window for every waiting Session (5,000 waiting and 1,000 joining took 407,667
    passes and bound 251 Sessions in 300 s before)."""
    c = Controller(store, workers=2, resync_period=3600)
    register_all(c, heartbeat=3600.0)
    for i in range(300):
        add_session(store, f"s{i:03}")

    def bound() -> int:
        return sum(1 for p in store.list("Placement") if p["spec"].get("node"))

    async def body() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(c.run(stop))
        start = time.monotonic()
        try:
            while store.count("Placement") < 300 or c.stats()["queue_length"]:
                assert time.monotonic() - start < 30, "the Sessions did not all wait"
                await asyncio.sleep(0.02)
            before = c.stats()["reconciles"]
            with store.transaction():
                for i in range(60):
                    add_provider(store, i + 1, cores=32, memory_gib=64)
            while bound() < 300:
                assert time.monotonic() - start < 60, f"{bound()} of 300 bound"
                await asyncio.sleep(0.02)
            return int(c.stats()["reconciles"] - before)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=5)

    passes = asyncio.run(asyncio.wait_for(body(), timeout=90))
    assert bound() == 300
    # a pass each, the providers', and some that yield to a woken Session ahead of them
    # that another worker holds (2,456 before, here)
    assert passes <= 2 * (300 + 60)


@pytest.mark.usefixtures("app")
def test_with_many_sessions_waiting_each_looks_again_less_often_by_itself(
    store: Store,
) -> None:
    """The periodic retries of waiting Sessions share a budget (``RETRY_BUDGET`` passes
    a second): 10,000 waiting Sessions were 1,000 passes a second on an idle hub."""
    from controller.reconcilers.session import plan as plan_module
    from controller.reconcilers.session import reconciler as session_reconciler
    from controller.reconcilers.session.queue import Waiter, queue_key

    c = Controller(store, workers=2, resync_period=30)
    rec = session_reconciler.register(c, heartbeat=5.0)
    add_session(store, "alone")
    alone = c.reconcile("Session", "alone")  # no provider at all: it waits
    assert alone is not None and alone.requeue_after is not None
    slack = plan_module._REQUEUE_SLACK  # (a requeue is asked a little late on purpose)
    # two heartbeat periods, and up to 20 % jitter
    assert 10.0 + slack <= alone.requeue_after <= 12.0 + slack
    for i in range(3000):  # others waiting ahead of it
        rec.queue.put(f"w{i}", Waiter(queue_key(0, "2020", f"w{i}"), lambda _: False))
    crowded = c.reconcile("Session", "alone")
    assert crowded is not None and crowded.requeue_after is not None
    budget = 3001 / session_reconciler.RETRY_BUDGET
    assert budget + slack <= crowded.requeue_after <= budget * 1.2 + slack


@pytest.mark.usefixtures("app")
def test_a_count_no_pool_can_fill_waits_as_one_placement_and_one_reason(
    store: Store, controller: Controller
) -> None:
    for i in (1, 2, 3):
        add_provider(store, i)
    add_session(store, providers={"count": 10000})
    reconcile_everything(controller, store)
    reconcile_everything(controller, store)  # the retry: the three are taken by now
    got = placements(store)
    assert len(got) == 4 and sum(1 for p in got if p["spec"]["node"] is None) == 1
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None
    assert stalled["message"] == (
        "9997 of 10000 slots waiting: 0/3 providers: 3 already run this session"
    )
    rv = store.resource_version
    reconcile_everything(controller, store)  # a retry writes nothing new
    assert store.resource_version == rv
    assert len(placements(store)) == 4


@pytest.mark.usefixtures("app")
def test_after_deleting_1000_sessions_the_event_storage_is_back_to_its_size(
    store: Store, controller: Controller
) -> None:
    from tests.test_store import event_rows as rows

    def event_rows() -> int:
        return rows(store)

    add_provider(store, 1, cores=64)
    reconcile_everything(controller, store)
    before = event_rows()
    workload = {
        "runtime": "native",
        "image": {"hash": IMAGE},
        "resources": {"cpu": 0.01, "memoryMiB": 1},
    }
    for i in range(1000):
        add_session(store, f"s{i:04d}", workload=workload)
    reconcile_everything(controller, store)
    for p in store.list("Placement"):
        agent_reports(store, p["metadata"]["name"], "Succeeded", exitCode=0)
    reconcile_everything(controller, store)
    assert event_rows() >= before + 1000  # each Session has its Scheduled event at least
    for i in range(1000):
        store.delete("Session", f"s{i:04d}")
    reconcile_everything(controller, store)  # placements stopped already: deleted, released
    reconcile_everything(controller, store)
    assert store.count("Session") == 0 and store.count("Placement") == 0
    assert event_rows() == before


@pytest.mark.usefixtures("app")
def test_vm_members_of_a_network_get_stable_addresses_and_macs_and_a_full_cidr_waits(
    store: Store, controller: Controller
) -> None:
    from controller.reconcilers.vnet import mac_for

    for i in (1, 2, 3):
        node = add_provider(store, i)
        status = dict(store.get("Provider", node)["status"])
        status["inventory"] = {**status["inventory"], "runtimes": ["native", "vm"]}
        store.update_status("Provider", node, status)
    store.create(
        {"kind": "VirtualNetwork", "metadata": {"name": "lab"}, "spec": {"cidr": "10.77.0.0/30"}}
    )
    vm = {"runtime": "vm", "image": {"hash": IMAGE}, "resources": {"cpu": 1, "memoryMiB": 256}}
    for name in ("a", "b", "c"):
        add_session(store, name, workload=vm, network="lab")
    reconcile_everything(controller, store)

    def iface(session: str) -> dict[str, Any] | None:
        (p,) = placements(store, session)
        return p["spec"].get("networkInterface")

    got = {s: iface(s) for s in ("a", "b", "c")}
    assert got["a"] and got["b"] and got["c"] is None
    assert {got["a"]["address"], got["b"]["address"]} == {"10.77.0.1/30", "10.77.0.2/30"}
    for s in ("a", "b"):
        (p,) = placements(store, s)
        iface_s = got[s]
        assert iface_s is not None
        assert iface_s["mac"] == mac_for("lab", p["metadata"]["name"])  # deterministic
        assert iface_s["mac"].startswith("02:") and iface_s["mtu"] == 1400
    assert got["a"]["mac"] != got["b"]["mac"]
    (waiting,) = placements(store, "c")
    assert waiting["spec"]["node"] is None
    assert waiting["status"]["message"] == "network lab: no free address in 10.77.0.0/30"

    reconcile_everything(controller, store)  # stable: nothing moves
    assert {s: iface(s) for s in ("a", "b", "c")} == got
    members = store.get("VirtualNetwork", "lab")["status"]["members"]
    assert sorted(m["ip"] or "-" for m in members) == ["-", "10.77.0.1/30", "10.77.0.2/30"]
    (unbound,) = [m for m in members if m["ip"] is None]
    assert unbound["node"] is None and "no free address" in unbound["reason"]

    (first,) = placements(store, "a")
    agent_reports(store, first["metadata"]["name"], "Succeeded", exitCode=0)
    reconcile_everything(controller, store)  # a's address is free again: c gets it
    assert iface("c") is not None and iface("c")["address"] == got["a"]["address"]  # type: ignore[index]
    assert iface("a") == got["a"]  # a finished placement keeps what it had


@pytest.mark.usefixtures("app")
def test_passes_grouped_into_one_commit_never_place_onto_the_same_free_capacity(
    store: Store,
) -> None:
    """Two workers, each grouping every ready pass into one commit (a long window): a
    pass reads the placements of the passes before it in its own group, pending in the
    transaction, and a pass of the other worker waits for that group's commit before it
    reads anything. Two providers of 4 cores, twelve Sessions of one 1-core placement:
    exactly eight bind, at most four a node, in fewer commits than passes."""
    c = Controller(store, workers=2, resync_period=30, commit_window=5.0)
    register_all(c)
    nodes = [add_provider(store, 1, cores=4), add_provider(store, 2, cores=4)]
    commits: list[float] = []
    store.time_commits(commits.append)
    with store.transaction():
        for i in range(12):
            add_session(store, f"s{i:02d}")

    def settled() -> bool:
        sessions = store.list("Session")
        return all(s["status"].get("observedGeneration") for s in sessions) and (
            sum(1 for p in store.list("Placement") if p["spec"]["node"]) >= 8
        )

    run_until(c, settled, "eight placements bound and every Session observed")
    placed = store.list("Placement")
    per_node = {n: sum(1 for p in placed if p["spec"]["node"] == n) for n in nodes}
    assert per_node == {nodes[0]: 4, nodes[1]: 4}
    assert sum(1 for p in placed if not p["spec"]["node"]) == 4  # the rest wait, unbound
    assert c.stats()["reconciles"] >= 14  # 2 providers + 12 sessions, at least
    assert len(commits) < c.stats()["reconciles"]
