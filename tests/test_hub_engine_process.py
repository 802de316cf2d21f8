"""``gu hub --engine-process``: the reconcile engine in a child process of the hub.

The rest of the suite runs hubs in the default mode, which on a machine of two CPUs or
more is this one; here is what only this mode has: the child's life (started again
if it dies, gone with the hub, even one killed with -9), the engine's figures in the
API's ``/metrics``, and a hub started again on the same store."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psutil

from controller.client import Client
from controller.enginehost import read_stats
from tests.conftest import HubProcess, make_hub
from tests.helpers import condition_of, engine_pid, metric_samples, process_running, wait_for


def engine_of(hub: HubProcess) -> int | None:
    """The hub's engine process, if it runs."""
    assert hub.proc is not None
    return engine_pid(hub.proc.pid)


IMAGE = "sha3-256:" + "ab" * 32


def session(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": "demo",
            "workload": {
                "runtime": "native",
                "image": {"hash": IMAGE},
                "command": ["/bin/true"],
                "resources": {"cpu": 0.1, "memoryMiB": 16},
            },
        },
    }


def reconciled(client: Client, name: str) -> bool:
    """The Session has been through a pass (no provider exists: it says it is not Ready,
    and why)."""
    return condition_of(client.get("Session", name), "Ready") is not None


def session_passes(client: Client) -> float:
    return sum(
        s.value
        for s in metric_samples(client)
        if s.name == "gu_reconciles_total" and s.labels.get("kind") == "Session"
    )


def engine_commits(hub: HubProcess) -> int:
    """The store commits the engine process has reported (``engine-stats.json``)."""
    report = read_stats(hub.state_dir)
    if report is None:
        return 0
    return sum(int(n) for n in report["passes"]["commits"]["buckets"])


def commits_served(client: Client) -> float:
    """``gu_store_commit_duration_seconds_count`` as ``/metrics`` serves it."""
    return sum(
        s.value
        for s in metric_samples(client)
        if s.name == "gu_store_commit_duration_seconds_count"
    )


def test_the_engine_process_comes_back_if_it_dies_and_goes_with_its_hub(tmp_path: Path) -> None:
    hub = make_hub(tmp_path, "--engine-process")
    hub.start()
    try:
        first = wait_for(lambda: engine_of(hub), timeout=20, what="the engine process")
        assert "event=engine_process_started" in hub.logs()
        admin = hub.client()
        admin.apply([
            {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "demo"}, "spec": {}},
            {"apiVersion": "gu/v1", "kind": "ImagePolicy", "metadata": {"name": "demo"},
             "spec": {"apps": ["demo"], "allowImages": [IMAGE]}},
            session("one"),
        ])  # fmt: skip
        wait_for(lambda: reconciled(admin, "one"), timeout=20, what="the Session reconciled")
        # the API serves the engine's figures (it reports them every half second)
        wait_for(lambda: session_passes(admin) >= 1, timeout=10, what="its passes in /metrics")
        # and counts the engine's store commits with its own (at least the apply's)
        wait_for(
            lambda: engine_commits(hub) >= 1 and commits_served(admin) >= engine_commits(hub) + 1,
            timeout=10,
            what="the engine's commits in gu_store_commit_duration_seconds",
        )

        admin.apply([session(f"more{i}") for i in range(20)])
        wait_for(lambda: session_passes(admin) >= 21, timeout=20, what="21 passes reported")
        before = session_passes(admin)

        psutil.Process(first).kill()  # the engine dies: the hub starts another
        second = wait_for(
            lambda: (pid := engine_of(hub)) != first and pid, timeout=20, what="a new engine"
        )
        assert "event=engine_process_exited" in hub.logs()
        admin.apply([session("two")])
        wait_for(lambda: reconciled(admin, "two"), timeout=20, what="reconciled by the new one")
        # its counters go on from the dead one's (its first resync passes all 22 Sessions)
        assert session_passes(admin) >= before
        wait_for(
            lambda: session_passes(admin) >= before + 22,
            timeout=20,
            what="the new engine's passes added to the old one's",
        )

        hub.stop(signal.SIGKILL)  # the hub dies with no chance to stop it: it goes too
        wait_for(lambda: not process_running(second), timeout=10, what="the engine gone")

        hub.start()  # the same state: nothing lost, a new engine at work
        third = wait_for(lambda: engine_of(hub), timeout=20, what="the engine again")
        assert third not in (first, second)
        admin = hub.client()
        names = {s["metadata"]["name"] for s in admin.list("Session")}
        assert names == {"one", "two"} | {f"more{i}" for i in range(20)}
        admin.apply([session("three")])
        wait_for(lambda: reconciled(admin, "three"), timeout=20, what="reconciled after restart")
    finally:
        hub.stop()
    assert not process_running(third), "a stopped hub leaves no engine behind"


def test_a_state_dir_too_deep_for_a_unix_socket_keeps_the_engine_in_the_hub(
    tmp_path: Path,
) -> None:
    """The two processes find each other through Unix sockets beside the database, and a
    socket's path has at most 107 bytes: deeper, the hub says so and runs as one process."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    hub = make_hub(deep, "--engine-process")
    hub.start()
    try:
        assert "event=engine_process_unavailable" in hub.logs()
        assert engine_of(hub) is None
        admin = hub.client()
        admin.apply([
            {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "demo"}, "spec": {}},
            {"apiVersion": "gu/v1", "kind": "ImagePolicy", "metadata": {"name": "demo"},
             "spec": {"apps": ["demo"], "allowImages": [IMAGE]}},
            session("one"),
        ])  # fmt: skip
        wait_for(lambda: reconciled(admin, "one"), timeout=20, what="reconciled in the hub")
    finally:
        hub.stop()
