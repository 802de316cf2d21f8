"""Preemption's costs, each against a baseline measured in the same run (JSON lines).

``python tests/bench/bench_preempt.py [--runs 20] [--providers 1000] [--urgent 100]``

1. Latency end to end (a real hub and one real agent, native runtime, loopback): a
   batch Session fills the provider (cpu = its cores, counting forever); the clock
   starts at the apply of an urgent Session of the same size and stops when the
   change feed shows the victim ``Suspended`` and then the urgent placement
   ``Running``; p50/p99 over ``--runs``. Baseline: apply → ``Running`` of the same
   urgent Session on the free provider.
2. Scheduler cost (in-process: the real Session reconciler on a real Store):
   ``--providers`` providers, each full of low-priority placements (4 per provider),
   then ``--urgent`` urgent Sessions each needing a whole provider, one reconcile
   each (every one preempts): decisions/s. Baseline: the same reconciler placing
   ``--urgent`` Sessions of the same size on as many free providers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.client import Client  # noqa: E402
from controller.store import Store  # noqa: E402
from specs.images import pack_native  # noqa: E402
from tests.bench.bench_scheduler import IMAGE, world  # noqa: E402
from tests.helpers import start_hub_subprocess  # noqa: E402

COUNT_SH = "#!/bin/sh\ni=0\nwhile :; do i=$((i + 1)); echo $i; sleep 0.1; done\n"


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "preempt", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def session(name: str, image: str, priority: str, cpu: float, args: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": "bench",
            "priority": priority,
            "workload": {
                "runtime": "native",
                "image": {"hash": image},
                "command": ["./run.sh"],
                "args": args,
                "resources": {"cpu": cpu, "memoryMiB": 32},
            },
        },
    }


def wait_states(
    client: Client,
    since: int,
    start: float,
    wanted: list[Callable[[dict[str, Any]], bool]],
    limit: float = 60,
) -> list[float]:
    """Seconds after ``start`` at which each of ``wanted``, in order, held for a Placement
    change (the change feed from ``since``)."""
    seen: list[float] = []
    for ev in client.watch(since, kinds=["Placement"], timeout=limit):
        obj = ev.get("object")
        if obj and wanted[len(seen)](obj):
            seen.append(time.perf_counter() - start)
            if len(seen) == len(wanted):
                return seen
    raise TimeoutError(f"only {len(seen)} of {len(wanted)} states within {limit}s")


def state_of(session_name: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: (
        o["spec"].get("session") == session_name and (o.get("status") or {}).get("state") == state
    )


def delete_all(client: Client) -> None:
    for s in client.list("Session"):
        client.delete("Session", s["metadata"]["name"])
    for _ in range(600):  # bounded: 60 s
        if not client.list("Placement"):
            return
        time.sleep(0.1)
    raise TimeoutError("placements were not deleted within 60 s")


def latency(tmp: Path, runs: int) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        hub, url, config = start_hub_subprocess(tmp)
        procs.append(hub)
        client = Client.from_config(config)
        folder = tmp / "count"
        folder.mkdir()
        (folder / "run.sh").write_text(COUNT_SH)
        (folder / "run.sh").chmod(0o755)
        image = pack_native(folder, tmp / "count.tar.gz")
        with open(tmp / "count.tar.gz", "rb") as f:
            client.request("POST", "/v1/images", content=f)
        client.apply(
            [
                {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "bench"}, "spec": {}},
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "bench"},
                    "spec": {"apps": ["bench"], "allowImages": [image]},
                },
                {
                    "apiVersion": "gu/v1",
                    "kind": "Priority",
                    "metadata": {"name": "batch"},
                    "spec": {"value": 0, "onPreempted": "Suspend"},
                },
                {
                    "apiVersion": "gu/v1",
                    "kind": "Priority",
                    "metadata": {"name": "urgent"},
                    "spec": {"value": 1000},
                },
            ]
        )
        join = client.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "agent.main", "--hub", url, "--join-token", join,
                    "--state-dir", str(tmp / "agent"), "--heartbeat", "1",
                    "--runtimes", "native",
                ],
                env=dict(os.environ, GU_LOG_LEVEL="WARNING"),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        peer = None
        for _ in range(300):
            peer = next((p for p in client.call("GET", "/peers") if p["ready"]), None)
            if peer:
                break
            time.sleep(0.1)
        assert peer is not None, "the agent did not become Ready"
        cores = client.call("GET", f"/peers/{peer['nodeId']}/inf/cpu")["cores"]

        plain: list[float] = []
        suspended: list[float] = []
        urgent_running: list[float] = []
        for i in range(runs + 1):  # the first run pulls the image into the agent's cache
            rv = client.call("GET", "/v1/placements")["resourceVersion"]
            t = time.perf_counter()
            client.apply([session(f"u{i}", image, "urgent", cores, ["3"])])
            (took,) = wait_states(client, rv, t, [state_of(f"u{i}", "Running")])
            if i:
                plain.append(took)
            delete_all(client)

            rv = client.call("GET", "/v1/placements")["resourceVersion"]
            client.apply([session(f"low{i}", image, "batch", cores, [])])
            wait_states(client, rv, time.perf_counter(), [state_of(f"low{i}", "Running")])
            rv = client.call("GET", "/v1/placements")["resourceVersion"]
            t = time.perf_counter()
            client.apply([session(f"p{i}", image, "urgent", cores, ["3"])])
            got = wait_states(
                client, rv, t, [state_of(f"low{i}", "Suspended"), state_of(f"p{i}", "Running")]
            )
            if i:
                suspended.append(got[0])
                urgent_running.append(got[1])
            delete_all(client)
        n = len(plain)
        emit("plain_apply_to_running_p50_baseline", pct(plain, 50) * 1000, "ms", runs=n)
        emit("plain_apply_to_running_p99_baseline", pct(plain, 99) * 1000, "ms", runs=n)
        emit("apply_to_victim_suspended_p50", pct(suspended, 50) * 1000, "ms", runs=n)
        emit("apply_to_victim_suspended_p99", pct(suspended, 99) * 1000, "ms", runs=n)
        emit(
            "apply_to_urgent_running_p50",
            pct(urgent_running, 50) * 1000,
            "ms",
            ratio=round(pct(urgent_running, 50) / pct(plain, 50), 2),
        )
        emit(
            "apply_to_urgent_running_p99",
            pct(urgent_running, 99) * 1000,
            "ms",
            ratio=round(pct(urgent_running, 99) / pct(plain, 99), 2),
            goal="<= 1000 ms",
        )
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _sessions(prefix: str, n: int, priority: str, cpu: float) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "gu/v1",
            "kind": "Session",
            "metadata": {"name": f"{prefix}{i:05d}"},
            "spec": {
                "app": "bench",
                "priority": priority,
                "workload": {
                    "runtime": "native",
                    "image": {"hash": IMAGE},
                    "resources": {"cpu": cpu, "memoryMiB": 256},
                },
            },
        }
        for i in range(n)
    ]


def _decisions(store: Store, reconcile: Callable[[str, str], Any], prefix: str) -> float:
    names = [s["metadata"]["name"] for s in store.list("Session")]
    names = [n for n in names if n.startswith(prefix)]
    start = time.perf_counter()
    for name in names:
        reconcile("Session", name)
    return len(names) / (time.perf_counter() - start)


def scheduler_cost(tmp: Path, providers: int, urgent: int) -> None:
    priorities = [
        {"kind": "Priority", "metadata": {"name": "low"}, "spec": {"value": 0}},
        {"kind": "Priority", "metadata": {"name": "urgent"}, "spec": {"value": 1000}},
    ]
    # baseline: free providers
    (tmp / "free").mkdir()
    store, controller = world(tmp / "free", providers)
    store.apply(priorities)
    store.apply(_sessions("u", urgent, "urgent", 32), finalizers=lambda kind: ["gu/placements"])
    free_rate = _decisions(store, controller.reconcile, "u")
    bound = sum(1 for p in store.list("Placement") if p["spec"]["node"])
    store.close()

    # full: 4 low placements of 8 cores on each 32-core provider
    (tmp / "full").mkdir()
    store, controller = world(tmp / "full", providers)
    store.apply(priorities)
    low = []
    for s in _sessions("l", providers, "low", 8):
        s["spec"]["providers"] = {"count": 4}
        low.append(s)
    store.apply(low, finalizers=lambda kind: ["gu/placements"])
    _decisions(store, controller.reconcile, "l")
    store.apply(_sessions("u", urgent, "urgent", 32), finalizers=lambda kind: ["gu/placements"])
    full_rate = _decisions(store, controller.reconcile, "u")
    placements = store.list("Placement")
    preempted = sum(1 for p in placements if p["spec"].get("preemption"))
    urgent_bound = sum(
        1 for p in placements if p["spec"]["session"].startswith("u") and p["spec"]["node"]
    )
    store.close()
    emit("place_on_free_providers_baseline", free_rate, "decisions/s", sessions=urgent, bound=bound)
    emit(
        "place_by_preempting",
        full_rate,
        "decisions/s",
        sessions=urgent,
        bound=urgent_bound,
        victims=preempted,
        providers=providers,
        low_placements=4 * providers,
        ratio=round(full_rate / free_rate, 3),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--providers", type=int, default=1000)
    ap.add_argument("--urgent", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gu-bench-preempt-") as d:
        tmp = Path(d)
        (tmp / "e2e").mkdir()
        latency(tmp / "e2e", args.runs)
        (tmp / "sched").mkdir()
        scheduler_cost(tmp / "sched", args.providers, args.urgent)


if __name__ == "__main__":
    main()
