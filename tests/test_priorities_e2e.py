"""Priorities end to end: a real hub and one real agent process (native runtime).

The provider has room for one workload: every Session asks for all of its cores.
A low-priority Session counts every 100 ms into its stdout; an urgent one is
applied; the low one is suspended (same pid, output frozen) or stopped (process
gone), the urgent one runs to Succeeded, then the low one resumes or runs again.
The last test kills the hub with SIGKILL right after the urgent apply.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller.client import Client
from tests.conftest import HubProcess, make_hub
from tests.helpers import wait_for
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import push_script_image, session_gone, tear_down, workload_pids

COUNT_SH = """#!/bin/sh
# $1: a marker to find the process by; $2: how many lines (one every 100 ms)
i=0
while [ "$i" -lt "$2" ]; do
  i=$((i + 1))
  echo "$i $1"
  sleep 0.1
done
"""
MARK = f"gu-prio-{uuid.uuid4().hex[:8]}"


@dataclass
class Pool:
    hub: HubProcess
    admin: Client
    agent: AgentProcess
    image: str
    cores: int

    def session(
        self,
        name: str,
        priority: str,
        lines: int,
        cpu: float | None = None,
        memory: int = 32,
    ) -> str:
        marker = f"{MARK}-{name}"
        self.admin.apply(
            [
                {
                    "apiVersion": "gu/v1",
                    "kind": "Session",
                    "metadata": {"name": name},
                    "spec": {
                        "app": "prio",
                        "priority": priority,
                        "workload": {
                            "runtime": "native",
                            "image": {"hash": self.image},
                            "command": ["./run.sh"],
                            "args": [marker, str(lines)],
                            "resources": {"cpu": cpu or self.cores, "memoryMiB": memory},
                        },
                    },
                }
            ]
        )
        return marker

    def placements(self, session: str) -> list[dict[str, Any]]:
        return self.admin.list("Placement", selector=f"gu/session={session}")

    def placement_in(self, session: str, state: str, timeout: float = 30) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            ps = [p for p in self.placements(session) if p["status"].get("state") == state]
            return ps[0] if ps else None

        return wait_for(found, timeout=timeout, what=f"{session}'s placement {state}")

    def output(self, placement: str) -> bytes:
        path = self.agent.state_dir / "runtimes" / "native" / placement / "stdout.log"
        return path.read_bytes() if path.exists() else b""

    def delete(self, *names: str) -> None:
        for name in names:
            self.admin.delete("Session", name)
        for name in names:
            wait_for(lambda n=name: session_gone(self, n), timeout=60, what=f"{name} deleted")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("prio")
    hub = make_hub(tmp)
    hub.start()
    admin = hub.client()
    agents: list[AgentProcess] = []
    try:
        image = push_script_image(admin, tmp, "count", COUNT_SH)
        admin.apply(
            [
                {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "prio"}, "spec": {}},
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "prio"},
                    "spec": {"apps": ["prio"], "allowImages": [image]},
                },
                *(
                    {
                        "apiVersion": "gu/v1",
                        "kind": "Priority",
                        "metadata": {"name": name},
                        "spec": spec,
                    }
                    for name, spec in {
                        "batch": {"value": 0, "onPreempted": "Suspend"},
                        "batch-stop": {"value": 0, "onPreempted": "Stop"},
                        "urgent": {"value": 1000},
                        "polite": {"value": 1000, "preemptionPolicy": "Never"},
                    }.items()
                ),
            ]
        )
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        agent = AgentProcess(hub, tmp / "agent", tmp / "agent.log")
        agent.start("--join-token", token, "--name", "box", "--heartbeat", "1")
        agents.append(agent)
        peer = wait_for(
            lambda: next((p for p in admin.call("GET", "/peers") if p["ready"]), None),
            timeout=30,
            what="the agent Ready",
        )
        cores = admin.call("GET", f"/peers/{peer['nodeId']}/inf/cpu")["cores"]
        yield Pool(hub, admin, agent, image, cores)
    finally:
        tear_down(hub, admin, agents, MARK)


def suspended_then_resumed(pool: Pool, low: str, low_marker: str, urgent: str) -> None:
    """The first scenario's second half, shared with the hub-crash test."""
    victim = pool.placement_in(low, "Suspended")
    name = victim["metadata"]["name"]
    assert victim["status"]["reason"] == "Preempted", victim["status"]
    assert f"Session {urgent}" in victim["status"]["message"]
    pids = workload_pids(low_marker)
    frozen = pool.output(name)
    pool.placement_in(urgent, "Running")
    pool.placement_in(urgent, "Succeeded", timeout=60)
    assert pool.output(name).count(b"\n") <= frozen.count(b"\n") + 1  # nothing while frozen
    pool.placement_in(low, "Running")
    wait_for(
        lambda: pool.output(name).count(b"\n") > frozen.count(b"\n") + 1,
        timeout=20,
        what="the low session's output to grow again",
    )
    assert workload_pids(low_marker) == pids  # the same process, resumed
    pool.placement_in(low, "Succeeded", timeout=60)
    events = pool.admin.call("GET", f"/v1/sessions/{low}/events")["items"]
    said = {e["reason"]: e["message"] for e in events}
    assert f"for Session {urgent}" in said["Preempted"]
    assert " after " in said["Resumed"]


def test_an_urgent_session_suspends_the_batch_one_which_resumes_with_the_same_pid(
    pool: Pool,
) -> None:
    marker = pool.session("low", "batch", 120)
    p = pool.placement_in("low", "Running")
    wait_for(
        lambda: pool.output(p["metadata"]["name"]).count(b"\n") >= 3, timeout=20, what="3 lines"
    )
    assert workload_pids(marker)
    pool.session("urgent", "urgent", 15)
    suspended_then_resumed(pool, "low", marker, "urgent")
    described = pool.admin.get("Session", "urgent")
    assert described["status"]["priority"] == 1000
    pool.delete("low", "urgent")


def test_on_preempted_stop_ends_the_process_and_runs_it_again_after(pool: Pool) -> None:
    marker = pool.session("lowstop", "batch-stop", 100)
    first = pool.placement_in("lowstop", "Running")
    wait_for(lambda: workload_pids(marker), timeout=10, what="its process")
    rv = pool.admin.call("GET", "/v1/placements")["resourceVersion"]
    pool.session("urgent2", "urgent", 10)
    stopped = None
    for event in pool.admin.watch(rv, kinds=["Placement"], timeout=30):
        obj = event.get("object") or {}
        mine = obj.get("metadata", {}).get("name") == first["metadata"]["name"]
        if mine and (obj.get("status") or {}).get("state") == "Stopped":
            stopped = obj
            break
    assert stopped is not None, "the low placement was never reported Stopped"
    assert stopped["status"]["reason"] == "Preempted"
    assert stopped["spec"]["preemption"]["session"] == "urgent2"
    wait_for(lambda: not workload_pids(marker), timeout=10, what="its process gone")
    pool.placement_in("urgent2", "Succeeded", timeout=60)
    again = pool.placement_in("lowstop", "Running", timeout=30)
    assert again["metadata"]["name"] != first["metadata"]["name"]
    wait_for(lambda: workload_pids(marker), timeout=10, what="it runs again")
    pool.delete("lowstop", "urgent2")


def test_never_waits_preempts_nothing_and_goes_before_older_lower_sessions(pool: Pool) -> None:
    marker = pool.session("busy", "batch", 600)
    pool.placement_in("busy", "Running")
    pool.session("later", "batch", 5)  # lower, applied before the polite one
    pool.session("polite", "polite", 5)
    waiting = wait_for(
        lambda: (
            (ps := pool.placements("polite"))
            and ps[0]["status"].get("reason") == "Unschedulable"
            and ps[0]
        ),
        timeout=10,
        what="the polite Session waiting",
    )
    assert "lack cpu" in waiting["status"]["message"]
    assert pool.placements("busy")[0]["status"]["state"] == "Running"  # nothing preempted
    assert workload_pids(marker)
    wait_for(
        lambda: (
            "higher priority ahead" in (pool.placements("later")[0]["status"].get("message") or "")
        ),
        timeout=30,  # (its periodic retry: 2 x the hub's heartbeat)
        what="the later Session to say it waits behind",
    )
    pool.delete("busy")  # the provider frees: the polite one goes first
    polite = pool.placement_in("polite", "Running", timeout=60)
    later = pool.placements("later")[0]
    assert later["status"].get("state") in ("Pending", None) and not later["spec"]["node"]
    assert polite["spec"]["node"]
    pool.placement_in("later", "Succeeded", timeout=60)
    pool.delete("later", "polite")


def test_a_hub_killed_right_after_the_urgent_apply_ends_the_same(pool: Pool) -> None:
    marker = pool.session("low3", "batch", 120)
    p = pool.placement_in("low3", "Running")
    wait_for(
        lambda: pool.output(p["metadata"]["name"]).count(b"\n") >= 3, timeout=20, what="3 lines"
    )
    pool.session("urgent3", "urgent", 15)
    pool.hub.stop(signal.SIGKILL)
    pool.hub.start()
    suspended_then_resumed(pool, "low3", marker, "urgent3")
    pool.delete("low3", "urgent3")


def test_of_three_classes_the_lowest_goes_first_and_equals_never_preempt(pool: Pool) -> None:
    pool.admin.apply(
        [
            {"apiVersion": "gu/v1", "kind": "Priority", "metadata": {"name": n}, "spec": s}
            for n, s in (("mid", {"value": 500}), ("top", {"value": 2000}))
        ]
    )
    half = pool.cores / 2
    mid = pool.session("mid1", "mid", 600, cpu=half)
    low = pool.session("low1", "batch", 600, cpu=half)
    pool.placement_in("mid1", "Running")
    pool.placement_in("low1", "Running")
    pool.session("mid2", "mid", 5, cpu=pool.cores)  # needs mid1's cpu too: equal, so it waits
    waiting = wait_for(
        lambda: (ps := pool.placements("mid2")) and ps[0]["status"].get("reason") and ps[0],
        timeout=10,
        what="mid2 waiting",
    )
    assert not waiting["spec"]["node"]
    assert pool.placements("mid1")[0]["status"]["state"] == "Running"
    assert pool.placements("low1")[0]["status"]["state"] == "Running"
    pool.delete("mid2")
    pool.session("top1", "top", 5, cpu=half)  # one half is enough: the low one goes
    victim = pool.placement_in("low1", "Suspended")
    assert victim["spec"]["preemption"]["session"] == "top1"
    assert pool.placements("mid1")[0]["status"]["state"] == "Running"
    assert workload_pids(mid) and workload_pids(low)  # suspended, not stopped
    pool.placement_in("top1", "Succeeded", timeout=60)
    pool.placement_in("low1", "Running")
    pool.delete("mid1", "low1", "top1")


def test_memory_a_suspended_victim_holds_is_not_given_to_another(pool: Pool) -> None:
    (provider,) = pool.admin.list("Provider")
    free_mib = provider["status"]["usage"]["memoryAvailableBytes"] // 2**20
    pool.session("big", "batch", 600, memory=int(free_mib * 0.5))
    pool.placement_in("big", "Running")
    pool.session("u-cpu", "urgent", 600, cpu=pool.cores - 0.5, memory=32)
    pool.placement_in("big", "Suspended")
    pool.placement_in("u-cpu", "Running")
    pool.session("u-mem", "urgent", 5, cpu=0.25, memory=int(free_mib * 0.6))
    waiting = wait_for(
        lambda: (ps := pool.placements("u-mem")) and ps[0]["status"].get("reason") and ps[0],
        timeout=10,
        what="u-mem waiting",
    )
    assert not waiting["spec"]["node"]
    assert "lack memory" in waiting["status"]["message"], waiting["status"]
    pool.delete("u-mem", "u-cpu", "big")
