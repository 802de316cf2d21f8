"""Benchmarks of the pool through the real hub API: many simulated agents, many placements.

Run: ``python tests/bench/bench_pool.py [--agents 1000] [--sessions 1000] [--count 10]
[--heartbeat-seconds 20]``. Prints one JSON line per figure.

0. Heartbeat writes, in process: the store's cost of 1,000 heartbeats batched
   the way the hub writes them (``controller.heartbeats``), against one
   transaction per beat in the same run.
1. Enrolment: ``--agents`` simulated agents, each with its own Ed25519 key, enrol
   through the real API (challenge, signed join) and send one heartbeat with an
   inventory, so the hub sees that many Ready providers.
2. Scheduling throughput: ``--sessions`` Sessions of ``--count`` providers each
   are applied in batches; the figure is placements created per second, from the
   first apply until the change feed has shown every placement bound to a node.
   Baseline in the same run: the hub's plain apply rate for the same Sessions
   with no providers to place them on (what writing alone costs).
3. Heartbeat load: every agent heartbeats every 5 s for ``--heartbeat-seconds``
   (spread evenly, 200 requests/s for 1,000 agents) while a probe reads
   ``GET /peers/{id}/inf/cpu``; reported: heartbeat and probe p50/p99 latency and
   the hub process's CPU %, next to the probe's latency on the idle hub.

All traffic goes to a hub this script starts on 127.0.0.1; it stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
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

from controller.client import Client  # noqa: E402
from specs.identity import (  # noqa: E402
    LOGIN_PAYLOAD_TYPE,
    generate_key,
    login_body,
    public_key_str,
    sign,
)
from tests.helpers import start_hub_subprocess  # noqa: E402

IMAGE = "sha3-256:" + "b" * 64


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "pool", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def inventory(i: int) -> dict[str, Any]:
    gib = 1 << 30
    return {
        "inventory": {
            "os": {"name": "Linux", "version": platform.release()},
            "cpu": {"architecture": "x86", "bit": [32, 64], "cores": 8, "threads": 16},
            "memoryBytes": 32 * gib,
            "storageBytes": 500 * gib,
            "runtimes": ["native"],
        },
        "usage": {
            "cpuPercent": float(i % 50),
            "memoryAvailableBytes": 24 * gib,
            "storageFreeBytes": 300 * gib,
            "workloads": 0,
        },
    }


def start_hub(tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    return start_hub_subprocess(tmp, node_grace=3600)


async def enrol(http: httpx.AsyncClient, join: str, i: int) -> tuple[str, str]:
    key = generate_key()
    pub = public_key_str(key)
    chal = (
        await http.post("/v1/auth/challenge", json={"publicKey": pub, "purpose": "enroll"})
    ).json()
    expiry = int(time.time()) + 60
    body = login_body(chal["hubId"], chal["nonce"], "enroll", expiry)
    resp = await http.post(
        "/v1/agents/enroll",
        json={
            "publicKey": pub,
            "nonce": chal["nonce"],
            "expiry": expiry,
            "signature": sign(key, LOGIN_PAYLOAD_TYPE, body),
            "joinToken": join,
            "name": f"sim-{i}",
            "labels": {"sim": "yes"},
        },
    )
    resp.raise_for_status()
    answer = resp.json()
    return answer["nodeId"], answer["token"]


async def heartbeat(http: httpx.AsyncClient, token: str, i: int) -> float:
    t = time.perf_counter()
    resp = await http.post(
        "/v1/agents/heartbeat", json=inventory(i), headers={"Authorization": f"Bearer {token}"}
    )
    resp.raise_for_status()
    return time.perf_counter() - t


async def gather_bounded(coros: list[Any], limit: int = 32) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


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


def count_bound(client: Client, want: int, limit: float) -> tuple[int, float]:
    """Follow the change feed until ``want`` placements have a node; (bound, seconds)."""
    start = time.perf_counter()
    bound: set[str] = set()
    rv = 0
    while time.perf_counter() - start < limit and len(bound) < want:
        for ev in client.watch(rv, kinds=["Placement"], timeout=2):
            rv = ev["resourceVersion"]
            obj = ev.get("object")
            if obj and obj["spec"].get("node"):
                bound.add(obj["metadata"]["name"])
            if len(bound) >= want:
                break
    return len(bound), time.perf_counter() - start


async def run(args: argparse.Namespace, url: str, client: Client, hub_pid: int) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        # baseline: the same Sessions applied while no provider exists to place them
        client.apply(policy_objects())
        base = sessions(min(args.sessions, 1000), args.count, "base-")
        t = time.perf_counter()
        for i in range(0, len(base), 200):
            client.apply(base[i : i + 200])
        dt = time.perf_counter() - t
        emit("apply_sessions_baseline", len(base) / dt, "sessions/s", sessions=len(base))
        for obj in base:  # out of the way before providers appear
            client.delete("Session", obj["metadata"]["name"])

        join = client.call("POST", "/v1/jointokens", json={"ttl": 3600})["token"]
        t = time.perf_counter()
        agents = await gather_bounded([enrol(http, join, i) for i in range(args.agents)])
        await gather_bounded([heartbeat(http, tok, i) for i, (_, tok) in enumerate(agents)])
        dt = time.perf_counter() - t
        emit("enrol_and_first_heartbeat", args.agents / dt, "agents/s", agents=args.agents)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = sum(1 for p in client.call("GET", "/peers") if p["ready"])
            if ready >= args.agents:
                break
            await asyncio.sleep(0.5)
        emit("providers_ready", ready, "providers")

        # scheduling throughput
        work = sessions(args.sessions, args.count, "s-")
        want = args.sessions * args.count
        t = time.perf_counter()
        for i in range(0, len(work), 200):
            client.apply(work[i : i + 200])
        applied = time.perf_counter() - t
        bound, seconds = await asyncio.to_thread(count_bound, client, want, 600)
        total = applied + seconds
        emit(
            "scheduling_throughput",
            bound / total,
            "placements/s",
            placements=bound,
            wanted=want,
            providers=args.agents,
            seconds=round(total, 2),
        )

        # heartbeat load
        probe_node = agents[0][0]
        headers = {"Authorization": f"Bearer {client.token()}"}
        idle: list[float] = []
        for _ in range(50):
            t = time.perf_counter()
            await http.get(f"/peers/{probe_node}/inf/cpu", headers=headers)
            idle.append(time.perf_counter() - t)
        hub = psutil.Process(hub_pid)
        hub.cpu_percent(None)
        beats: list[float] = []
        probes: list[float] = []
        interval = 5.0
        stop_at = time.perf_counter() + args.heartbeat_seconds

        async def agent_loop(i: int, token: str) -> None:
            await asyncio.sleep(interval * i / len(agents))
            while time.perf_counter() < stop_at:
                beats.append(await heartbeat(http, token, i))
                await asyncio.sleep(interval)

        async def probe_loop() -> None:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                await http.get(f"/peers/{probe_node}/inf/cpu", headers=headers)
                probes.append(time.perf_counter() - t)
                await asyncio.sleep(0.1)

        await asyncio.gather(
            probe_loop(), *(agent_loop(i, tok) for i, (_, tok) in enumerate(agents))
        )
        cpu = hub.cpu_percent(None)
        emit(
            "heartbeat_rate", len(beats) / args.heartbeat_seconds, "requests/s", agents=len(agents)
        )
        emit("heartbeat_latency_p50", pct(beats, 50) * 1000, "ms")
        emit("heartbeat_latency_p99", pct(beats, 99) * 1000, "ms")
        emit("api_probe_latency_p99_under_load", pct(probes, 99) * 1000, "ms", probes=len(probes))
        emit("api_probe_latency_p99_idle_baseline", pct(idle, 99) * 1000, "ms")
        emit("hub_cpu_percent_under_heartbeats", cpu, "% of one core")


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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gu-bench-") as d:
        bench_heartbeat_writes(Path(d))
        proc, url, cfg = start_hub(Path(d))
        try:
            client = Client.from_config(cfg)
            client.http.timeout = httpx.Timeout(300)
            asyncio.run(run(args, url, client, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
