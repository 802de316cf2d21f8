"""The first reconcilers: missing references stall an object until the referenced object
appears, clashes between siblings stall both, and a converged pass writes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from controller.reconcile import Controller
from controller.reconcilers import SESSION_FINALIZER, register_all
from controller.store import Store
from tests.helpers import condition_of

IMAGE = "sha3-256:" + "ab" * 32


@pytest.fixture
def controller(store: Store) -> Controller:
    c = Controller(store, workers=2, resync_period=0.1)
    register_all(c)
    return c


def obj(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name}, "spec": spec}


def session(name: str, app: str = "demo", **spec: Any) -> dict[str, Any]:
    runtime = "vm" if spec.get("network") else "native"  # only VMs may join a network
    workload = {"runtime": runtime, "image": {"hash": IMAGE}}
    return obj("Session", name, app=app, workload=workload, **spec)


def condition(store: Store, kind: str, name: str, type_: str) -> dict[str, Any] | None:
    return condition_of(store.get(kind, name), type_)


def reconcile_everything(controller: Controller, store: Store) -> None:
    """One synchronous pass over every object of every registered kind."""
    for kind in controller.kinds:
        for o in store.list(kind):
            controller.reconcile(kind, o["metadata"]["name"])


def test_a_session_naming_a_missing_priority_becomes_ready_once_it_exists(
    store: Store, controller: Controller
) -> None:
    store.create(obj("App", "demo"))
    store.create(session("s", priority="high", network="lan"))

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        deadline = time.monotonic() + 5
        try:
            while (condition(store, "Session", "s", "Stalled") or {}).get("status") != "True":
                assert time.monotonic() < deadline, "the session never stalled"
                await asyncio.sleep(0.01)
            stalled = condition(store, "Session", "s", "Stalled")
            assert stalled is not None
            assert stalled["reason"] == "MissingReference"
            assert stalled["message"] == (
                'Priority "high" not found; VirtualNetwork "lan" not found'
            )
            ready = condition(store, "Session", "s", "Ready")
            assert ready is not None and ready["status"] == "False"
            assert ready["reason"] == "MissingReference"

            store.create(obj("Priority", "high", value=100))
            while "high" in (condition(store, "Session", "s", "Stalled") or {}).get("message", ""):
                assert time.monotonic() < deadline, "the session did not notice the Priority"
                await asyncio.sleep(0.01)
            stalled = condition(store, "Session", "s", "Stalled")
            assert stalled is not None and stalled["message"] == 'VirtualNetwork "lan" not found'

            store.create(obj("VirtualNetwork", "lan", cidr="10.77.0.0/24"))
            # references resolved: the session moves on to scheduling (no provider
            # exists here, so it now waits as Unschedulable, not MissingReference)
            while (condition(store, "Session", "s", "Stalled") or {}).get(
                "reason"
            ) == "MissingReference":
                assert time.monotonic() < deadline, "the session never resolved its references"
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=5)

    asyncio.run(asyncio.wait_for(body(), timeout=8))
    stalled = condition(store, "Session", "s", "Stalled")
    assert stalled is not None and stalled["reason"] == "Unschedulable"
    assert store.get("Session", "s")["metadata"]["generation"] == 1  # never re-applied
    assert "ReferencesResolved" in [e.reason for e in store.events("Session", "s")]


def test_observed_generation_follows_generation(store: Store, controller: Controller) -> None:
    store.create(obj("App", "demo"))
    store.create(session("s"))
    controller.reconcile("Session", "s")
    assert store.get("Session", "s")["status"]["observedGeneration"] == 1
    store.replace(session("s", restartPolicy="Always"))
    controller.reconcile("Session", "s")
    got = store.get("Session", "s")
    assert got["metadata"]["generation"] == 2
    assert got["status"]["observedGeneration"] == 2


def test_a_second_pass_over_a_converged_world_writes_nothing(
    store: Store, controller: Controller
) -> None:
    store.create(obj("App", "demo"))
    store.create(obj("Priority", "low", value=1, default=True))
    store.create(obj("Priority", "other", value=2, default=True))  # stalled, still converged
    store.create(obj("VirtualNetwork", "lan", cidr="10.77.0.0/24"))
    store.create(obj("ImagePolicy", "p", apps=["demo", "ghost"]))
    store.create(session("ready", network="lan"))
    store.create(session("stalled", app="nope", priority="nope"))
    reconcile_everything(controller, store)
    reconcile_everything(controller, store)  # the network lists the placement made above
    rv = store.resource_version
    events = {n: len(store.events("Session", n)) for n in ("ready", "stalled")}
    reconcile_everything(controller, store)
    assert store.resource_version == rv
    assert {n: len(store.events("Session", n)) for n in events} == events


def test_reconciling_keeps_the_other_status_fields(store: Store, controller: Controller) -> None:
    store.create(obj("App", "demo"))
    store.create(session("s"))
    store.update_status("Session", "s", {"note": "written by someone else"})
    controller.reconcile("Session", "s")
    status = store.get("Session", "s")["status"]
    assert status["note"] == "written by someone else"
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "Stalled"}


def test_a_session_without_priority_ignores_several_defaults(
    store: Store, controller: Controller
) -> None:
    store.create(obj("App", "demo"))
    store.create(obj("Priority", "a", value=1, default=True))
    store.create(obj("Priority", "b", value=2, default=True))
    store.create(session("s"))
    controller.reconcile("Session", "s")
    stalled = condition(store, "Session", "s", "Stalled")
    # not held up by the clash of defaults: it goes on to scheduling (no providers here)
    assert stalled is not None and stalled["reason"] == "Unschedulable"


def test_two_default_priorities_are_both_stalled_naming_each_other(
    store: Store, controller: Controller
) -> None:
    store.create(obj("Priority", "a", value=1, default=True))
    store.create(obj("Priority", "b", value=2, default=True))
    store.create(obj("Priority", "c", value=3))
    reconcile_everything(controller, store)
    for name, other in (("a", "b"), ("b", "a")):
        stalled = condition(store, "Priority", name, "Stalled")
        assert stalled is not None and stalled["status"] == "True"
        assert stalled["reason"] == "MultipleDefaults"
        assert f'Priority "{other}" is also default' in stalled["message"]
    assert condition(store, "Priority", "c", "Stalled") is None
    ready = condition(store, "Priority", "c", "Ready")
    assert ready is not None and ready["status"] == "True"


def test_the_remaining_default_priority_recovers_when_the_other_stops_being_default(
    store: Store, controller: Controller
) -> None:
    store.create(obj("Priority", "a", value=1, default=True))
    store.create(obj("Priority", "b", value=2, default=True))

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        deadline = time.monotonic() + 5
        try:
            while condition(store, "Priority", "a", "Stalled") is None:
                assert time.monotonic() < deadline, "a never stalled"
                await asyncio.sleep(0.01)
            store.replace(obj("Priority", "b", value=2))
            while condition(store, "Priority", "a", "Stalled") is not None:
                assert time.monotonic() < deadline, "a stayed stalled"
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=5)

    asyncio.run(asyncio.wait_for(body(), timeout=8))


def test_an_image_policy_naming_a_missing_app_is_stalled(
    store: Store, controller: Controller
) -> None:
    store.create(obj("App", "demo"))
    store.create(obj("ImagePolicy", "p", apps=["demo", "ghost"]))
    controller.reconcile("ImagePolicy", "p")
    stalled = condition(store, "ImagePolicy", "p", "Stalled")
    assert stalled is not None and stalled["message"] == 'App "ghost" not found'
    store.create(obj("App", "ghost"))
    controller.reconcile("ImagePolicy", "p")
    assert condition(store, "ImagePolicy", "p", "Stalled") is None
    ready = condition(store, "ImagePolicy", "p", "Ready")
    assert ready is not None and ready["status"] == "True"


def test_overlapping_virtual_networks_are_stalled(store: Store, controller: Controller) -> None:
    store.create(obj("VirtualNetwork", "wide", cidr="10.0.0.0/16"))
    store.create(obj("VirtualNetwork", "narrow", cidr="10.0.5.0/24"))
    store.create(obj("VirtualNetwork", "apart", cidr="10.1.0.0/24"))
    reconcile_everything(controller, store)
    wide = condition(store, "VirtualNetwork", "wide", "Stalled")
    assert wide is not None and wide["reason"] == "OverlappingCidr"
    assert 'VirtualNetwork "narrow"' in wide["message"]
    assert condition(store, "VirtualNetwork", "narrow", "Stalled") is not None
    assert condition(store, "VirtualNetwork", "apart", "Stalled") is None
    store.delete("VirtualNetwork", "narrow")
    controller.reconcile("VirtualNetwork", "wide")
    assert condition(store, "VirtualNetwork", "wide", "Stalled") is None


def test_apps_are_ready(store: Store, controller: Controller) -> None:
    store.create(obj("App", "demo"))
    controller.reconcile("App", "demo")
    ready = condition(store, "App", "demo", "Ready")
    assert ready is not None and ready["status"] == "True"


def test_a_deleted_session_loses_its_finalizer_and_goes(
    store: Store, controller: Controller
) -> None:
    store.create(obj("App", "demo"))
    s = session("s")
    s["metadata"]["finalizers"] = [SESSION_FINALIZER]
    store.create(s)
    store.delete("Session", "s")
    assert store.get("Session", "s")["metadata"].get("deletionTimestamp")
    controller.reconcile("Session", "s")
    assert store.try_get("Session", "s") is None
