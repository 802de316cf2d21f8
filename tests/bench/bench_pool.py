"""Benchmarks of the pool through the real hub API: many simulated agents, many placements.

Run: ``python tests/bench/bench_pool.py [--agents 1000] [--sessions 1000] [--count 10]
[--heartbeat-seconds 20] [--procs 2] [--no-watch] [--all-cpus] [--one-process]``. Prints
one JSON line per figure.

The simulated agents run in processes of their own (``pool_agents.py``, ``--procs``
of them), so the hub's figures are not the load generator's; CPU is measured per
process (the hub's API process and its engine process, as ``gu hub`` runs by default on
two CPUs or more, and the generators' together). ``--one-process``: the hub as
``gu hub --one-process`` (its engine in the API's process, the default before).

0. Heartbeat writes, in process: the store's cost of 1,000 heartbeats batched
   the way the hub writes them (``controller.heartbeats``), against one
   transaction per beat in the same run.
1. Enrolment: ``--agents`` simulated agents, each with its own Ed25519 key, enrol
   through the real API (challenge, signed join) and send one heartbeat with an
   inventory, so the hub sees that many Ready providers. Unless ``--no-watch``,
   each then holds a watch stream on its Placements, as a real agent does.
2. Scheduling throughput: ``--sessions`` Sessions of ``--count`` providers each
   are applied in batches; the figure is placements per second, from the first
   apply until the change feed has shown every placement bound to a node. Then
   the same number of placements again as Sessions of count 1. Baseline in the
   same run: the hub's plain apply rate for the same Sessions with no providers
   to place them on (what writing alone costs). With each: the hub's CPU meanwhile
   (``hubCpuPercent``, ``engineCpuPercent``: % of one core), the reconcile passes and
   the store commits it took per Session.
3. Heartbeat load: every agent heartbeats every 5 s for ``--heartbeat-seconds``
   (spread evenly, 200 requests/s for 1,000 agents; a larger pool beats as often as
   the hub asks, ``periodsAskedByHub``: 25 s for 5,000 agents) while a probe reads
   ``GET /peers/{id}/inf/cpu``; reported: heartbeat and probe p50/p99 latency, the
   change rows the beats caused (usage-only beats should cause none), the hub's
   CPU % and the generators', next to the probe's latency on the idle hub (measured
   once the reconcile queue is empty: ``settle_after_scheduling``).

All traffic goes to a hub this script starts on 127.0.0.1; it stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.client import Client, HubUnreachable  # noqa: E402
from tests.helpers import (  # noqa: E402
    engine_pid,
    metric_samples,
    reconcile_settled,
    start_hub_subprocess,
)

IMAGE = "sha3-256:" + "b" * 64


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "pool", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def start_hub(
    tmp: Path, all_cpus: bool = False, engine_process: bool | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    return start_hub_subprocess(
        tmp, node_grace=3600, all_cpus=all_cpus, engine_process=engine_process
    )


def sessions(n: int, count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "gu/v1",
            "kind": "Session",
            "metadata": {"name": f"{prefix}{i}"},
            "spec": {
                "app": "bench",
                "providers": {"count": count},
                "workload": {
                    "runtime": "native",
                    "image": {"hash": IMAGE},
                    "command": ["./run"],
                    "resources": {"cpu": 0.1, "memoryMiB": 16},
                },
            },
        }
        for i in range(n)
    ]


def policy_objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "bench"}, "spec": {}},
        {
            "apiVersion": "gu/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "bench"},
            "spec": {"apps": ["bench"], "allowImages": [IMAGE]},
        },
    ]


def count_bound(client: Client, since: int, prefix: str, want: int, limit: float) -> int:
    """Follow the change feed from ``since`` until ``want`` placements of Sessions named
    ``prefix…`` have a node (or ``limit`` seconds pass); how many did."""
    start = time.perf_counter()
    bound: set[str] = set()
    rv = since
    while time.perf_counter() - start < limit and len(bound) < want:
        try:
            for ev in client.watch(rv, kinds=["Placement"], timeout=2):
                rv = ev["resourceVersion"]
                obj = ev.get("object")
                if obj and obj["spec"].get("node") and obj["spec"]["session"].startswith(prefix):
                    bound.add(obj["metadata"]["name"])
                if len(bound) >= want:
                    break
        except HubUnreachable as exc:  # a busy hub answered too late: say so, go on
            print(f"bench_pool: {exc}", file=sys.stderr)
            time.sleep(0.5)
    return len(bound)


class Agents:
    """The simulated pool: ``procs`` processes of ``pool_agents.py``, a slice each."""

    def __init__(self, url: str, join: str, agents: int, procs: int, watch: bool) -> None:
        per = -(-agents // procs)
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("pool_agents.py")),
                    url,
                    join,
                    str(first),
                    str(min(per, agents - first)),
                    *(["--watch"] if watch else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for first in range(0, agents, per)
        ]
        self.nodes: list[str] = []

    def read(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulated agents (pid {proc.pid}) exited: {proc.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def ready(self) -> None:
        for proc in self.procs:
            self.nodes.extend(self.read(proc)["nodes"])

    def send(self, value: dict[str, Any]) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(value) + "\n")
            proc.stdin.flush()

    def beat(self, seconds: float) -> list[dict[str, Any]]:
        """The heartbeats' latencies over ``seconds`` (the agents beat all the time)."""
        self.send({"beat": seconds})
        return [self.read(proc) for proc in self.procs]

    def pause(self, paused: bool) -> None:
        self.send({"pause": paused})
        for proc in self.procs:
            self.read(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send({"quit": True})
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def hub_processes(hub_pid: int) -> dict[str, psutil.Process]:
    """The hub's process, and its engine's if it runs one (``--engine-process``)."""
    out = {"hub": psutil.Process(hub_pid)}
    engine = engine_pid(hub_pid)
    if engine is not None:
        out["engine"] = psutil.Process(engine)
    return out


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}


def counters(client: Client) -> tuple[float, float, float]:
    """The hub's reconcile passes, store commits and their seconds so far (/metrics)."""
    samples = metric_samples(client)
    return (
        sum(s.value for s in samples if s.name == "gu_reconciles_total"),
        sum(s.value for s in samples if s.name == "gu_store_commit_duration_seconds_count"),
        sum(s.value for s in samples if s.name == "gu_store_commit_duration_seconds_sum"),
    )


def schedule(
    client: Client, n: int, count: int, prefix: str, providers: int, hub_pid: int, baseline: float
) -> None:
    """Apply ``n`` Sessions of ``count`` placements; emit placements bound per second
    with the hub's CPU meanwhile, per process, and as a ratio to ``baseline`` (the same
    run's ``apply_sessions_baseline``: a slower host moves both), and the reconcile
    passes the hub ran for them, counted until its queue is empty: of every kind, so a
    Provider a placement is bound to counts too."""
    work = sessions(n, count, prefix)
    want = n * count
    since = client.call("GET", "/v1/sessions")["resourceVersion"]
    passes_before, commits_before, commit_seconds_before = counters(client)
    procs = hub_processes(hub_pid)
    cpu_before = cpu_seconds(procs)
    t = time.perf_counter()
    for i in range(0, len(work), 200):
        client.apply(work[i : i + 200])
    applied = time.perf_counter() - t
    bound = count_bound(client, since, prefix, want, 600)
    total = time.perf_counter() - t
    cpu = {f"{name}CpuPercent": round(100 * (after - cpu_before[name]) / total, 1)
           for name, after in cpu_seconds(procs).items()}  # fmt: skip
    emit(
        f"scheduling_throughput_count_{count}",
        bound / total,
        "placements/s",
        placements=bound,
        wanted=want,
        providers=providers,
        seconds=round(total, 2),
        appliedAfterSeconds=round(applied, 2),  # (the Sessions are applied 200 a call)
        ratioToApplyBaseline=round(bound / total / baseline, 3),
        **cpu,
    )
    reconcile_settled(client, 120)
    passes_now, commits_now, commit_seconds_now = counters(client)
    passes, commits = passes_now - passes_before, commits_now - commits_before
    commit_seconds = commit_seconds_now - commit_seconds_before
    emit(
        f"reconcile_passes_count_{count}",
        passes / n,
        "passes/Session (all kinds)",
        passes=int(passes),
    )
    emit(
        f"store_commits_count_{count}",
        commits / n,
        "commits/Session (of every process of the hub)",
        commits=int(commits),
        meanCommitMs=round(1000 * commit_seconds / commits, 2) if commits else None,
    )


async def probe_loop(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], seconds: float
) -> list[float]:
    out: list[float] = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        (await http.get(path, headers=headers)).raise_for_status()
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0.1)
    return out


def run(args: argparse.Namespace, url: str, client: Client, hub_pid: int) -> None:
    cpus = psutil.Process(hub_pid).cpu_affinity() or []
    emit("hub_cpus", len(cpus), "CPUs the hub may run on", cpus=cpus, allCpus=args.all_cpus)
    # baseline: the same Sessions applied while no provider exists to place them
    client.apply(policy_objects())
    base = sessions(min(args.sessions, 1000), args.count, "base-")
    t = time.perf_counter()
    for i in range(0, len(base), 200):
        client.apply(base[i : i + 200])
    dt = time.perf_counter() - t
    baseline = len(base) / dt
    emit("apply_sessions_baseline", baseline, "sessions/s", sessions=len(base))
    for obj in base:  # out of the way before providers appear
        client.delete("Session", obj["metadata"]["name"])

    join = client.call("POST", "/v1/jointokens", json={"ttl": 3600})["token"]
    t = time.perf_counter()
    agents = Agents(url, join, args.agents, args.procs, watch=not args.no_watch)
    try:
        agents.ready()
        emit(
            "enrol_and_first_heartbeat",
            args.agents / (time.perf_counter() - t),
            "agents/s",
            agents=args.agents,
            processes=len(agents.procs),
            watching=not args.no_watch,
        )
        deadline = time.monotonic() + 60
        ready = 0
        while time.monotonic() < deadline:
            ready = sum(1 for p in client.call("GET", "/peers") if p["ready"])
            if ready >= args.agents:
                break
            time.sleep(0.5)
        emit("providers_ready", ready, "providers")

        schedule(client, args.sessions, args.count, "s-", args.agents, hub_pid, baseline)
        if args.count != 1:
            schedule(client, args.sessions * args.count, 1, "one-", args.agents, hub_pid, baseline)

        # heartbeat load, with a probe of the Provider Information API
        asyncio.run(heartbeats(args, url, client, hub_pid, agents))
    finally:
        agents.stop()


async def heartbeats(
    args: argparse.Namespace, url: str, client: Client, hub_pid: int, agents: Agents
) -> None:
    path = f"/peers/{agents.nodes[0]}/inf/cpu"
    headers = {"Authorization": f"Bearer {client.token()}"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        idle: list[float] = []
        agents.pause(True)  # the idle baseline: the same hub with the pool quiet
        settle = await asyncio.to_thread(reconcile_settled, client, 120)
        emit("settle_after_scheduling", settle, "s", note="reconcile queue empty")
        await asyncio.sleep(0.5)
        for _ in range(5):  # warm-up: a new connection's first request is not the hub's
            (await http.get(path, headers=headers)).raise_for_status()
        for _ in range(50):
            t = time.perf_counter()
            (await http.get(path, headers=headers)).raise_for_status()
            idle.append(time.perf_counter() - t)
        agents.pause(False)
        rv = client.call("GET", "/v1/providers")["resourceVersion"]
        procs = hub_processes(hub_pid) | {
            f"agents-{i}": psutil.Process(pid) for i, pid in enumerate(agents.pids())
        }
        for p in procs.values():
            p.cpu_percent(None)
        probe = asyncio.create_task(probe_loop(http, path, headers, args.heartbeat_seconds))
        results = await asyncio.to_thread(agents.beat, args.heartbeat_seconds)
        probes = await probe
        cpu = {name: p.cpu_percent(None) for name, p in procs.items()}
        rows = client.call("GET", "/v1/providers")["resourceVersion"] - rv
    beats = [x for r in results for x in r["latencies"]]
    errors = sum(r["errors"] for r in results)
    periods = sorted({p for r in results for p in r.get("periods", [])})
    emit(
        "heartbeat_rate",
        len(beats) / args.heartbeat_seconds,
        "requests/s",
        agents=args.agents,
        wanted=round(args.agents / max(periods or [5.0]), 1),
        errors=errors,
        periodsAskedByHub=periods,
    )
    emit("heartbeat_latency_p50", pct(beats, 50) * 1000, "ms")
    emit("heartbeat_latency_p99", pct(beats, 99) * 1000, "ms")
    emit("change_rows_during_heartbeats", rows, "rows", beats=len(beats))
    emit("api_probe_latency_p99_under_load", pct(probes, 99) * 1000, "ms", probes=len(probes))
    emit("api_probe_latency_p99_idle_baseline", pct(idle, 99) * 1000, "ms")
    hub_cpu = {name: cpu.pop(name) for name in ("hub", "engine") if name in cpu}
    emit("hub_cpu_percent_under_heartbeats", sum(hub_cpu.values()), "% of one core",
         **{f"{name}Process": pct for name, pct in hub_cpu.items()})  # fmt: skip
    emit(
        "load_generator_cpu_percent",
        sum(cpu.values()),
        "% of one core",
        processes=len(cpu),
        watchStreams=0 if args.no_watch else args.agents,
        watchEvents=sum(r.get("watchEvents", 0) for r in results),
        watchErrors=sum(r.get("watchErrors", 0) for r in results),
        loopLagP99Ms=max(r.get("loopLagP99Ms", 0.0) for r in results),
    )


def bench_heartbeat_writes(directory: Path, beats: int = 1000) -> None:
    """The store's cost of ``beats`` heartbeats: batched as the hub writes them, against
    one transaction (one fsync) per beat, the baseline, in the same run."""
    from controller.heartbeats import HeartbeatBatcher
    from controller.store import SQLiteStore
    from tests.test_reconcilers_scheduling import add_provider

    store = SQLiteStore(directory / "beats.db")
    try:
        nodes = [add_provider(store, i + 1) for i in range(min(beats, 250))]

        def fields(n: int) -> dict[str, Any]:
            return {"lastHeartbeat": f"2026-01-01T00:00:{n % 60:02d}Z", "usage": {"workloads": n}}

        started = time.perf_counter()
        for n in range(beats):
            node = nodes[n % len(nodes)]
            with store.transaction():
                cur = store.get("Provider", node)
                store.update_status("Provider", node, {**cur["status"], **fields(n)})
        each = beats / (time.perf_counter() - started)
        batcher = HeartbeatBatcher(store)
        started = time.perf_counter()
        for n in range(beats):  # 200 beats per flush: 1,000 agents' beats of one second
            batcher.record(nodes[n % len(nodes)], fields(n + 1))
            if n % 200 == 199:
                batcher.flush()
        batcher.flush()
        batched = beats / (time.perf_counter() - started)
    finally:
        store.close()
    emit("heartbeat_store_writes_one_transaction_each_baseline", each, "beats/s", beats=beats)
    emit("heartbeat_store_writes_batched", batched, "beats/s", ratio=round(batched / each, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--heartbeat-seconds", type=float, default=20.0)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--no-watch", action="store_true", help="agents hold no watch streams")
    ap.add_argument(
        "--all-cpus", action="store_true", help="the hub as gu hub --all-cpus (not on one CPU)"
    )
    ap.add_argument(
        "--one-process",
        action="store_true",
        help="the hub as gu hub --one-process (its reconcile engine in the API's process)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gu-bench-") as d:
        bench_heartbeat_writes(Path(d))
        proc, url, cfg = start_hub(Path(d), args.all_cpus, False if args.one_process else None)
        try:
            client = Client.from_config(cfg)
            client.http.timeout = httpx.Timeout(300)
            run(args, url, client, proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
