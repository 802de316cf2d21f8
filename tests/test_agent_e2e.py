"""End to end: one real hub, three real agent processes (separate state dirs, loopback).

The pool is built once for the module: a hub, three agents enrolled with a
join token and heartbeating every second, an App and an ImagePolicy, and one
native image (a shell loop) pushed to the hub. Each test runs its own Session
with its own marker string in the workload's arguments, so a psutil scan for
the marker finds exactly that test's processes — the proof that nothing runs
twice and nothing is left behind. Every wait has a deadline; the finalizers
delete the sessions, stop the agents and the hub, and kill any process still
carrying a marker of this module.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from controller.client import ApiError, Client
from specs.images import pack_native
from tests.conftest import HubProcess, make_hub
from tests.helpers import run_gu, wait_for
from tests.test_agent import AgentProcess

RUN_SH = """#!/bin/sh
# $1: a marker to find these processes by; $2: how many ticks (0 = forever)
i=0
while [ "$2" = 0 ] || [ "$i" -lt "$2" ]; do
  i=$((i + 1))
  echo "tick $i $1 on $GU_NODE"
  sleep 0.2
done
echo "done $1"
"""
CRASH_SH = """#!/bin/sh
# $1: a marker; $2: a file counting the runs (each run has a fresh folder)
n=$(cat "$2" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$2"
echo "run $n $1"
exit 1
"""
MARK_PREFIX = f"gu-e2e-{uuid.uuid4().hex[:8]}"


@dataclass
class Pool:
    hub: HubProcess
    admin: Client
    agents: list[AgentProcess]
    image: str

    def agent(self, node: str) -> AgentProcess:
        return next(a for a in self.agents if a.node_id == node)


def marker_pids(marker: str) -> set[int]:
    """Processes whose command line carries ``marker`` (shims and shells of one session)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.add(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def workload_pids(marker: str) -> set[int]:
    """Only the workload's own shells (not their shims, which are Python)."""
    out = set()
    for pid in marker_pids(marker):
        try:
            if "python" not in psutil.Process(pid).name():
                out.add(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def tear_down(hub: HubProcess, admin: Client, agents: list[AgentProcess], prefix: str) -> None:
    """Delete every Session, stop the agents and the hub, kill what carries ``prefix``."""
    try:
        for s in admin.list("Session"):
            admin.delete("Session", s["metadata"]["name"])
        wait_for(lambda: not admin.list("Placement"), timeout=30, what="placements to go")
    except Exception:
        pass  # the processes are killed below whatever the hub did
    for a in agents:
        a.stop(signal.SIGKILL)
    admin.close()
    hub.stop()
    for pid in marker_pids(prefix):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def push_script_image(admin: Client, tmp: Path, name: str, script: str) -> str:
    """Pack ``script`` as ``run.sh`` of a native image, push it, and return its hash."""
    folder = tmp / name
    folder.mkdir()
    (folder / "run.sh").write_text(script)
    (folder / "run.sh").chmod(0o755)
    image = pack_native(folder, tmp / f"{name}.tar.gz")
    with open(tmp / f"{name}.tar.gz", "rb") as f:
        pushed = admin.request("POST", "/v1/images", content=f).json()
    assert pushed["hash"] == image
    return image


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("pool")
    hub = make_hub(tmp)
    hub.start()
    agents: list[AgentProcess] = []
    admin = hub.client()
    try:
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        for i in range(3):
            a = AgentProcess(hub, tmp / f"agent-{i}", tmp / f"agent-{i}.log")
            a.start("--join-token", token, "--name", f"box-{i}", "--heartbeat", "1")
            agents.append(a)
        image = push_script_image(admin, tmp, "loop", RUN_SH)
        admin.apply(
            [
                {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "e2e"}, "spec": {}},
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "e2e"},
                    "spec": {"apps": ["e2e"], "allowImages": [image]},
                },
            ]
        )
        yield Pool(hub, admin, agents, image)
    finally:
        tear_down(hub, admin, agents, MARK_PREFIX)


def run_session(
    pool: Pool, name: str, marker: str, ticks: int, providers: int, restart: str = "Never"
) -> None:
    pool.admin.apply(
        [
            {
                "apiVersion": "gu/v1",
                "kind": "Session",
                "metadata": {"name": name},
                "spec": {
                    "app": "e2e",
                    "providers": {"count": providers},
                    "workload": {
                        "runtime": "native",
                        "image": {"hash": pool.image},
                        "command": ["./run.sh"],
                        "args": [marker, str(ticks)],
                        "resources": {"cpu": 0.1, "memoryMiB": 32},
                    },
                    "restartPolicy": restart,
                },
            }
        ]
    )


def placements(pool: Pool, session: str) -> list[dict[str, Any]]:
    return pool.admin.list("Placement", selector=f"gu/session={session}")


def states(pool: Pool, session: str) -> list[str]:
    return sorted(p.get("status", {}).get("state", "Pending") for p in placements(pool, session))


def all_ready(pool: Pool) -> list[dict[str, Any]] | None:
    peers = pool.admin.call("GET", "/peers")
    return peers if len(peers) == 3 and all(p["ready"] for p in peers) else None


def session_gone(pool: Pool, name: str) -> bool:
    try:
        pool.admin.get("Session", name)
    except ApiError as exc:
        return exc.status == 404
    return False


# --------------------------------------------------------------------- tests


def test_three_agents_are_ready_peers_whose_inventory_agrees_with_psutil(pool: Pool) -> None:
    peers = wait_for(lambda: all_ready(pool), timeout=30, what="3 ready peers")
    assert sorted(p["name"] for p in peers) == ["box-0", "box-1", "box-2"]
    assert sorted(p["nodeId"] for p in peers) == sorted(a.node_id for a in pool.agents)
    total_mem_gib = psutil.virtual_memory().total / 2**30
    threads = psutil.cpu_count(logical=True)
    cores = psutil.cpu_count(logical=False) or threads
    for p in peers:
        base = f"/peers/{p['nodeId']}/inf"
        cpu = pool.admin.call("GET", f"{base}/cpu")
        mem = pool.admin.call("GET", f"{base}/mem")
        storage = pool.admin.call("GET", f"{base}/storage")
        os_info = pool.admin.call("GET", f"{base}/os")
        assert cpu["cores"] == cores and cpu["threads"] == threads
        assert abs(mem["total"] - total_mem_gib) <= 0.01 * total_mem_gib
        disk = psutil.disk_usage(str(pool.agents[0].state_dir)).total / 2**30
        assert abs(storage["totalGib"] - disk) <= 0.01 * disk
        assert os_info["name"] == "Linux"


def test_a_session_on_two_providers_runs_shows_its_output_and_succeeds(pool: Pool) -> None:
    wait_for(lambda: all_ready(pool), timeout=30, what="3 ready peers")
    marker = f"{MARK_PREFIX}-two"
    run_session(pool, "two", marker, ticks=25, providers=2)
    running = wait_for(
        lambda: (
            (ps := placements(pool, "two"))
            and len(ps) == 2
            and all(p["status"].get("state") == "Running" for p in ps)
            and ps
        ),
        timeout=30,
        what="2 Running placements",
    )
    nodes = {p["spec"]["node"] for p in running}
    assert len(nodes) == 2 and nodes <= {a.node_id for a in pool.agents}
    logs = wait_for(
        lambda: (
            (text := pool.admin.request("GET", "/v1/sessions/two/logs").text)
            and all(f"{marker} on {n}" in text for n in nodes)
            and text
        ),
        timeout=20,
        what="both placements' output in the session logs",
    )
    assert "tick 1" in logs
    wait_for(
        lambda: states(pool, "two") == ["Succeeded", "Succeeded"],
        timeout=30,
        what="both placements to succeed",
    )
    final = pool.admin.request("GET", "/v1/sessions/two/logs").text
    assert final.count(f"done {marker}") == 2
    assert all(p["status"]["exitCode"] == 0 for p in placements(pool, "two"))
    wait_for(
        lambda: pool.admin.get("Session", "two")["status"].get("phase") == "Succeeded",
        timeout=20,
        what="the Session to be Succeeded",
    )
    pool.admin.delete("Session", "two")
    wait_for(lambda: session_gone(pool, "two"), timeout=30, what="Session two to go")


def test_an_agent_killed_with_sigkill_adopts_its_running_workload_on_restart(pool: Pool) -> None:
    wait_for(lambda: all_ready(pool), timeout=30, what="3 ready peers")
    marker = f"{MARK_PREFIX}-adopt"
    run_session(pool, "adopt", marker, ticks=0, providers=1)
    (placement,) = wait_for(
        lambda: (
            (ps := placements(pool, "adopt")) and ps[0]["status"].get("state") == "Running" and ps
        ),
        timeout=30,
        what="a Running placement",
    )
    before = wait_for(lambda: workload_pids(marker), timeout=10, what="the workload's process")
    assert len(before) == 1
    agent = pool.agent(placement["spec"]["node"])

    agent.stop(signal.SIGKILL)
    time.sleep(1.0)
    assert workload_pids(marker) == before  # a dead agent leaves its workload alone

    agent.start("--heartbeat", "1")  # same state dir, no join token
    wait_for(lambda: "event=adopted count=1" in agent.log(), timeout=20, what="the adoption")
    wait_for(
        lambda: agent.log().count("event=heartbeat_ok beats=1") >= 2,
        timeout=20,
        what="the restarted agent's first heartbeat",
    )
    time.sleep(3.0)  # a few resync passes: long enough to see a second copy if one came
    after = placements(pool, "adopt")[0]
    assert after["status"]["state"] == "Running"
    assert after["status"]["startedAt"] == placement["status"]["startedAt"]
    assert after["status"]["restarts"] == 0
    assert workload_pids(marker) == before  # same PID, never started twice
    assert "event=workload_started" not in agent.log().split("event=adopted")[-1]

    pool.admin.delete("Session", "adopt")
    wait_for(lambda: not marker_pids(marker), timeout=30, what="the workload to be gone")


def test_deleting_a_session_leaves_no_workload_processes(pool: Pool) -> None:
    wait_for(lambda: all_ready(pool), timeout=30, what="3 ready peers")
    marker = f"{MARK_PREFIX}-del"
    run_session(pool, "del", marker, ticks=0, providers=3)
    wait_for(
        lambda: states(pool, "del") == ["Running"] * 3, timeout=30, what="3 Running placements"
    )
    assert len(workload_pids(marker)) == 3
    pool.admin.delete("Session", "del")
    wait_for(lambda: session_gone(pool, "del"), timeout=30, what="Session del to go")
    assert placements(pool, "del") == []
    wait_for(lambda: not marker_pids(marker), timeout=15, what="no process with the marker")
    for a in pool.agents:
        runtime_dir = Path(a.state_dir) / "runtimes" / "native"
        assert not any(d.name.startswith("del-") for d in runtime_dir.iterdir())


def run_number(text: str, marker: str) -> int:
    runs = [int(line.split()[1]) for line in text.splitlines() if line.endswith(marker)]
    assert len(runs) == 1, text
    return runs[0]


def test_a_restarted_workload_keeps_the_previous_runs_output(pool: Pool, tmp_path: Path) -> None:
    wait_for(lambda: all_ready(pool), timeout=30, what="3 ready peers")
    crash = push_script_image(pool.admin, tmp_path, "crash", CRASH_SH)
    policy = pool.admin.get("ImagePolicy", "e2e")
    pool.admin.apply([{**policy, "spec": {**policy["spec"], "allowImages": [pool.image, crash]}}])
    marker = f"{MARK_PREFIX}-crash"
    session = {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": "crash"},
        "spec": {
            "app": "e2e",
            "workload": {
                "runtime": "native",
                "image": {"hash": crash},
                "command": ["./run.sh"],
                "args": [marker, str(tmp_path / "runs")],
                "resources": {"cpu": 0.1, "memoryMiB": 16},
            },
            "restartPolicy": "OnFailure",
        },
    }
    pool.admin.apply([session])
    logs = "/v1/sessions/crash/logs"
    # the previous copy first: a restart between the two reads only widens the gap
    previous, current = wait_for(
        lambda: (
            (prev := pool.admin.request("GET", logs, params={"previous": "true"}).text)
            and (cur := pool.admin.request("GET", logs).text)
            and (prev, cur)
        ),
        timeout=30,
        what="a restart in place with both runs' output on the hub",
    )
    assert run_number(previous, marker) < run_number(current, marker)
    shown = run_gu("logs", "crash", "--previous", env=pool.hub.env)
    assert shown.returncode == 0 and f" {marker}" in shown.stdout, shown.stderr
    pool.admin.delete("Session", "crash")
    wait_for(lambda: session_gone(pool, "crash"), timeout=30, what="Session crash to go")
