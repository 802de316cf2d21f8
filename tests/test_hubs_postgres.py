"""Several hubs on one PostgreSQL store: real hub processes, a real agent, a real server.

Each test gets a database of its own in the session's throwaway cluster (``pg``) and
two hubs on it: hub A starts first (and so leads), hub B gets A's ``hub.key``,
``admin.key`` and ``admins.pub`` copied into its state dir, as an admin sets a cluster
up. What is checked is the issue's acceptance: any hub serves the API and sees every
change, the leader's death hands reconciling to the other within 10 s with nothing
acknowledged lost, a paused leader cannot write after its successor took over, and a
PostgreSQL crash loses no acknowledged apply.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.client import ApiError, Client
from tests.conftest import HubProcess, make_hub
from tests.helpers import run_gu, wait_for
from tests.pgcluster import PgCluster
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import RUN_SH, push_script_image


@dataclass
class Cluster:
    a: HubProcess
    b: HubProcess
    url: str
    tmp: Path

    def leader_of(self) -> tuple[HubProcess, HubProcess]:
        """(the leading hub, the other), by their logs."""
        return wait_for(
            lambda: next(
                ((h, o) for h, o in ((self.a, self.b), (self.b, self.a))
                 if "event=leader_elected" in h.logs()),
                None,
            ),
            timeout=15, what="a leader elected",
        )  # fmt: skip


def second_hub(
    first: HubProcess, tmp: Path, url: str, env: dict[str, str] | None = None
) -> HubProcess:
    """A hub of ``first``'s cluster: its keys copied in (0600), the same store."""
    other = make_hub(tmp, "--store", url)
    other.state_dir.mkdir(parents=True, mode=0o700)
    for name in ("hub.key", "admin.key", "admins.pub"):
        shutil.copy2(first.state_dir / name, other.state_dir / name)
    other.env.update(env or {})
    return other


@pytest.fixture
def cluster(pg: PgCluster, tmp_path: Path) -> Iterator[Cluster]:
    url = pg.database()
    a = make_hub(tmp_path / "a", "--store", url)
    a.start()
    b = second_hub(a, tmp_path / "b", url)
    try:
        wait_for(lambda: "event=leader_elected" in a.logs(), timeout=15, what="A leading")
        b.start()
        yield Cluster(a, b, url, tmp_path)
    finally:
        for hub in (a, b):
            with contextlib.suppress(Exception):
                hub.proc and hub.proc.send_signal(signal.SIGCONT)
            hub.stop()


def session(name: str, image: str, *args: str) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": "demo",
            "workload": {
                "runtime": "native",
                "image": {"hash": image},
                "command": ["/bin/sh", "run.sh"],
                "args": list(args),
                "resources": {"cpu": 0.1, "memoryMiB": 16},
            },
        },
    }


def placement_state(admin: Client, name: str) -> str | None:
    ps = admin.list("Placement", selector=f"gu/session={name}")
    return ps[0]["status"].get("state") if len(ps) == 1 else None


def test_two_hubs_serve_one_pool_and_the_survivor_takes_over_reconciling(
    cluster: Cluster, tmp_path: Path
) -> None:
    leader, other = cluster.leader_of()
    assert leader is cluster.a
    on_leader, on_other = leader.client(), other.client()
    # the image goes in through the other hub; the agent, on the leader first, pulls it
    # from the leader (which has it only from the shared store)
    image = push_script_image(on_other, tmp_path, "ticker", RUN_SH)
    on_leader.apply([
        {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "demo"}, "spec": {}},
        {"apiVersion": "gu/v1", "kind": "ImagePolicy", "metadata": {"name": "demo"},
         "spec": {"apps": ["demo"], "allowImages": [image]}},
    ])  # fmt: skip
    token = on_leader.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
    agent = AgentProcess(leader, tmp_path / "agent", tmp_path / "agent.log",
                         hub_url=f"{leader.url},{other.url}")  # fmt: skip
    agent.start("--join-token", token, "--heartbeat", "1", "--runtimes", "native")
    try:
        wait_for(lambda: [p for p in on_other.call("GET", "/peers") if p["ready"]],
                 timeout=30, what="the agent Ready, seen on the other hub")  # fmt: skip
        on_leader.apply([session("first", image, "m-first", "0")])
        wait_for(lambda: placement_state(on_other, "first") == "Running", timeout=30,
                 what="the first session Running, seen on the other hub")  # fmt: skip
        shown = run_gu("get", "sessions", env=other.env)
        assert shown.returncode == 0 and "first" in shown.stdout, shown.stderr
        wait_for(lambda: "tick" in run_gu("logs", "first", env=other.env).stdout, timeout=20,
                 what="the first session's output through the other hub")  # fmt: skip

        leader.kill()
        killed = time.monotonic()
        # acknowledged while no hub leads: kept, and placed once the other takes over
        on_other.apply([session("second", image, "m-second", "0")])
        wait_for(lambda: "event=leader_elected" in other.logs(), timeout=10,
                 what="the other hub leading within 10 s")  # fmt: skip
        took_over = time.monotonic() - killed
        wait_for(lambda: placement_state(on_other, "second") == "Running", timeout=30,
                 what="the session applied meanwhile Running")  # fmt: skip
        # the agent moved to the survivor and beats there: its lease moves on
        seen = on_other.call("GET", "/peers")[0]["lastSeen"]
        wait_for(lambda: on_other.call("GET", "/peers")[0]["lastSeen"] != seen,
                 timeout=10, what="heartbeats reaching the survivor")  # fmt: skip
        assert on_other.call("GET", "/peers")[0]["ready"]
        assert placement_state(on_other, "first") == "Running"  # untouched by the failover
        names = {o["metadata"]["name"] for o in on_other.list("Session")}
        assert names == {"first", "second"}
        assert on_other.get("ImagePolicy", "demo")["spec"]["allowImages"] == [image]
        print(f"the other hub led {took_over:.1f} s after the leader was killed")
    finally:
        with contextlib.suppress(Exception):
            for s in ("first", "second"):
                on_other.delete("Session", s)
            wait_for(lambda: not on_other.list("Placement"), timeout=30, what="placements gone")
        agent.stop()


def test_a_token_from_one_hub_is_good_on_the_other(cluster: Cluster) -> None:
    admin = cluster.a.client()
    token = admin.token()
    answer = httpx.get(cluster.b.url + "/v1/priorities",
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    # and a watch on B sees what is written through A
    rv = cluster.b.client().list_at("Priority")[1]
    admin.apply([{"apiVersion": "gu/v1", "kind": "Priority", "metadata": {"name": "p"},
                  "spec": {"value": 3}}])  # fmt: skip
    events = cluster.b.client().watch(rv, kinds=["Priority"], timeout=5)
    assert any((e.get("object") or {}).get("metadata", {}).get("name") == "p" for e in events)


def test_a_paused_leader_cannot_write_after_another_hub_took_over(
    pg: PgCluster, tmp_path: Path
) -> None:
    """The leader is paused (SIGSTOP) in the middle of a Session pass, just before its
    write (a test fault holds it there: ``controller.faults``); the other hub takes over
    and places the Session; resumed, the old leader's write is refused: the Session has
    its one placement, and no change of the old epoch comes after the new epoch's first."""
    url = pg.database()
    faults = tmp_path / "faults"
    a = make_hub(tmp_path / "a", "--store", url)
    a.env["GU_FAULTS_FILE"] = str(faults)
    a.start()
    b = second_hub(a, tmp_path / "b", url)
    agent: AgentProcess | None = None
    try:
        wait_for(lambda: "event=leader_elected" in a.logs(), timeout=15, what="A leading")
        b.start()
        admin = b.client()
        image = push_script_image(admin, tmp_path, "ticker", RUN_SH)
        admin.apply([
            {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "demo"}, "spec": {}},
            {"apiVersion": "gu/v1", "kind": "ImagePolicy", "metadata": {"name": "demo"},
             "spec": {"apps": ["demo"], "allowImages": [image]}},
        ])  # fmt: skip
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        agent = AgentProcess(b, tmp_path / "agent", tmp_path / "agent.log")
        agent.start("--join-token", token, "--heartbeat", "1", "--runtimes", "native")
        wait_for(lambda: [p for p in admin.call("GET", "/peers") if p["ready"]],
                 timeout=30, what="the agent Ready")  # fmt: skip
        faults.write_text("store.fenced-begin=4\n")
        admin.apply([session("s", image, "m-fenced", "0")])
        wait_for(lambda: "point=store.fenced-begin" in a.logs(), timeout=10,
                 what="A's pass held before its write")  # fmt: skip
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: "event=leader_elected" in b.logs(), timeout=20, what="B leading")
        wait_for(lambda: placement_state(admin, "s") == "Running", timeout=30,
                 what="B placing the Session, and the agent running it")  # fmt: skip
        a.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "event=write_fenced" in a.logs(), timeout=20,
                 what="the old leader's write refused")  # fmt: skip
        wait_for(lambda: "event=leader_lost" in a.logs(), timeout=10, what="A's term ended")
        time.sleep(1)  # (whatever else A would still write)
        assert len(admin.list("Placement", selector="gu/session=s")) == 1
        from controller.store.postgres import PostgresStore

        store = PostgresStore(url)
        try:
            writers = store.change_writers()
        finally:
            store.close()
        epochs = sorted({e for _, _, e in writers if e is not None})
        assert len(epochs) >= 2, writers
        old, new = epochs[0], epochs[-1]
        first_new = min(rv for rv, _, e in writers if e == new)
        assert all(rv < first_new for rv, _, e in writers if e == old), writers
        admin.delete("Session", "s")
        wait_for(lambda: not admin.list("Placement"), timeout=30, what="its placement gone")
    finally:
        if a.proc is not None:
            with contextlib.suppress(Exception):
                a.proc.send_signal(signal.SIGCONT)
        if agent is not None:
            agent.stop()
        a.stop()
        b.stop()


def test_a_postgresql_crash_loses_no_acknowledged_apply(pg: PgCluster, tmp_path: Path) -> None:
    """Applies go on while the server is killed (-9) and started again: every apply the
    hub acknowledged is there afterwards; one that could not be made failed with a 503
    (store unavailable: retry), not with anything worse."""
    url = pg.database()
    hub = make_hub(tmp_path, "--store", url)
    hub.start()
    acked: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def applying() -> None:
        admin = hub.client()
        for i in range(100_000):  # bounded by ``stop`` (about 10 s)
            if stop.is_set():
                return
            name = f"p{i}-{uuid.uuid4().hex[:4]}"
            try:
                admin.apply([{"apiVersion": "gu/v1", "kind": "Priority",
                              "metadata": {"name": name}, "spec": {"value": i}}])  # fmt: skip
                acked.append(name)
            except ApiError as exc:
                refused.append(f"{exc.status} {exc.message}")
                time.sleep(0.05)

    t = threading.Thread(target=applying)
    try:
        t.start()
        wait_for(lambda: len(acked) >= 20, timeout=20, what="some applies acknowledged")
        before = pg.pid()
        pg.kill()
        crashed_at = len(acked)
        time.sleep(1.5)
        pg.start()
        wait_for(lambda: len(acked) > crashed_at + 20, timeout=30,
                 what="applies acknowledged again after the restart")  # fmt: skip
    finally:
        stop.set()
        t.join(20)
    try:
        admin = hub.client()
        stored = {o["metadata"]["name"] for o in admin.list("Priority")}
        missing = [n for n in acked if n not in stored]
        assert not missing, f"{len(missing)} acknowledged applies lost: {missing[:5]}"
        assert pg.pid() != before  # the server did go down and come back
        # an apply during the outage waited for the server or was refused with a 503
        assert all(r.startswith("503") for r in refused), refused[:5]
    finally:
        hub.stop()
