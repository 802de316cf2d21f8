"""Benchmarks of the declarative core: apply throughput, no-op re-apply, resync, watch latency.

Run: ``python tests/bench/bench_core.py [--objects 10000] [--batch 500]``. Prints one JSON
line per figure. Each figure is paired with a baseline measured in the same run:

- apply through the real hub API (HTTP, validation, auth) vs ``Store.apply`` in-process
  (what the database alone costs);
- a no-op re-apply and a full resync of converged objects: time, and rows written
  (``resourceVersion`` delta, which must be 0);
- watch latency, write → event seen by an HTTP watcher, vs the same write's own
  round trip (what the watcher adds on top of the apply itself).

With ``--store postgresql://…`` (or ``--store auto``: a throwaway cluster this script
starts, ``tests/pgcluster.py``) the API figures and scheduling through the real
controller (``--providers`` × ``--sessions`` count-1 Sessions) are measured on SQLite
and on PostgreSQL in the same run, each PostgreSQL figure with its ratio to SQLite's;
then the failover time of two hubs on that store over ``--kills`` kills: ``kill -9`` of
the leader → a Priority applied through the survivor reconciled (its Ready condition),
the killed hub started again each time.

Traffic goes only to hubs and a database this script starts on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.client import Client  # noqa: E402
from controller.reconcile.engine import Controller  # noqa: E402
from controller.reconcilers import register_all  # noqa: E402
from controller.store import SQLiteStore, is_store_url  # noqa: E402
from tests.helpers import reconcile_settled, start_hub_subprocess  # noqa: E402


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(
        json.dumps(
            {"bench": "core", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
        ),
        flush=True,
    )


def objects(n: int, salt: str = "") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            out.append(
                {
                    "apiVersion": "gu/v1",
                    "kind": "Priority",
                    "metadata": {"name": f"p{i}", "labels": {"bench": "core"}},
                    "spec": {"value": i, "description": salt},
                }
            )
        else:
            out.append(
                {
                    "apiVersion": "gu/v1",
                    "kind": "App",
                    "metadata": {"name": f"a{i}", "labels": {"bench": "core"}},
                    "spec": {"description": f"app {i}{salt}"},
                }
            )
    return out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def bench_store_baseline(n: int, batch: int, tmp: Path) -> None:
    store = SQLiteStore(tmp / "baseline.db")
    objs = objects(n)
    t = time.perf_counter()
    for i in range(0, n, batch):
        store.apply(objs[i : i + batch], apply_set="bench")
    dt = time.perf_counter() - t
    emit("store_apply_baseline", n / dt, "objects/s", seconds=round(dt, 3), objects=n)
    store.close()


def bench_resync(n: int, tmp: Path) -> None:
    """Converge n objects with the real reconcilers, then time a full resync and count writes."""
    store = SQLiteStore(tmp / "resync.db")
    objs = objects(n)
    for i in range(0, n, 500):
        store.apply(objs[i : i + 500], apply_set="bench")

    async def run() -> tuple[float, int, float]:
        controller = Controller(store, resync_period=3600)
        register_all(controller)
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))

        async def drained(at_least: int, limit: float) -> float:
            """Wait until ``at_least`` reconciles ran and the queue stayed idle a moment."""
            start = time.perf_counter()
            quiet = 0
            while time.perf_counter() - start < limit:
                st = controller.stats()
                idle = st["queue_length"] == 0 and st["in_flight"] == 0
                quiet = quiet + 1 if idle and st["reconciles"] >= at_least else 0
                if quiet >= 3:
                    break
                await asyncio.sleep(0.01)
            return time.perf_counter() - start

        converge = await drained(n, 300)
        rv = store.resource_version
        before = controller.stats()["reconciles"]
        t = time.perf_counter()
        await controller.resync()
        await drained(before + n, 300)
        dt = time.perf_counter() - t
        written = store.resource_version - rv
        stop.set()
        await task
        return dt, written, converge

    dt, written, converge = asyncio.run(run())
    emit("initial_convergence", converge, "s", objects=n)
    emit("full_resync", dt, "s", objects=n, rows_written=written)
    emit("full_resync_rows_written", written, "rows", objects=n)
    store.close()


ALL_CPUS = False  # (--all-cpus: the hubs as gu hub --all-cpus)


def start_hub(tmp: Path, store: str | None = None) -> tuple[subprocess.Popen[bytes], str, Path]:
    return start_hub_subprocess(tmp, store=store, all_cpus=ALL_CPUS)


FIGURES: dict[str, dict[str, float]] = {}
"""figure → {store label → value}: what the PostgreSQL figures are compared with."""


def emit_for(label: str, figure: str, value: float, unit: str, higher: bool, **extra: Any) -> None:
    """``emit``, and with a store label, recorded to compare (the ratio on PostgreSQL's)."""
    if not label:
        emit(figure, value, unit, **extra)
        return
    FIGURES.setdefault(figure, {})[label] = value
    base = FIGURES[figure].get("sqlite")
    if label != "sqlite" and base:
        ratio = value / base if higher else base / value
        extra["ratio_to_sqlite"] = round(ratio, 3)
        extra["better_is"] = "higher" if higher else "lower"
    emit(f"{figure}_{label}", value, unit, store=label, **extra)


def bench_api(n: int, batch: int, tmp: Path, store: str | None = None, label: str = "") -> None:
    proc, _url, cfg = start_hub(tmp, store)
    try:
        client = Client.from_config(cfg)
        client.http.timeout = httpx.Timeout(120)
        objs = objects(n)
        t = time.perf_counter()
        for i in range(0, n, batch):
            client.apply(objs[i : i + batch], apply_set="bench")
        dt = time.perf_counter() - t
        emit_for(label, "api_apply", n / dt, "objects/s", True, seconds=round(dt, 3), objects=n,
                 batch=batch)  # fmt: skip

        # the reconcilers write their first status first (a second's sleep was too short
        # for 10,000 objects: their writes were counted as the re-apply's)
        reconcile_settled(client, 120)
        rv = client.list("Priority")[0]["metadata"]["resourceVersion"] if n > 1 else 0
        rv_before = client.call("GET", "/v1/priorities")["resourceVersion"]
        t = time.perf_counter()
        actions: dict[str, int] = {}
        for i in range(0, n, batch):
            for r in client.apply(objs[i : i + batch], apply_set="bench")["results"]:
                actions[r["action"]] = actions.get(r["action"], 0) + 1
        dt = time.perf_counter() - t
        rv_after = client.call("GET", "/v1/priorities")["resourceVersion"]
        del rv
        emit_for(label, "api_noop_reapply", dt, "s", False, objects=n, actions=actions,
                 rows_written=rv_after - rv_before)  # fmt: skip

        bench_watch(client, label=label)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def bench_watch(client: Client, writes: int = 200, label: str = "") -> None:
    start_rv = client.call("GET", "/v1/priorities")["resourceVersion"]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    ready = threading.Event()

    def watcher() -> None:
        for ev in client.watch(start_rv, kinds=["Priority"], timeout=60):
            ready.set()
            obj = ev.get("object")
            if obj and ev["type"] == "ADDED" and obj["metadata"]["name"].startswith("w"):
                seen[obj["metadata"]["name"]] = time.perf_counter()
                if len(seen) >= writes:
                    return

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    time.sleep(0.3)
    roundtrips: list[float] = []
    for i in range(writes):
        name = f"w{i}"
        obj = {
            "apiVersion": "gu/v1",
            "kind": "Priority",
            "metadata": {"name": name},
            "spec": {"value": i},
        }
        t = time.perf_counter()
        sent[name] = t
        client.apply([obj])
        roundtrips.append(time.perf_counter() - t)
    th.join(30)
    lat = [seen[k] - sent[k] for k in sent if k in seen]
    ms = lambda v: v * 1000  # noqa: E731
    emit_for(label, "watch_latency_p50", ms(percentile(lat, 50)), "ms", False, events=len(lat))
    emit_for(label, "watch_latency_p99", ms(percentile(lat, 99)), "ms", False, events=len(lat))
    emit_for(label, "apply_roundtrip_p50_baseline", ms(percentile(roundtrips, 50)), "ms", False)
    emit_for(label, "apply_roundtrip_p99_baseline", ms(percentile(roundtrips, 99)), "ms", False)


def bench_stores(args: argparse.Namespace, tmp: Path) -> None:
    """The same figures on SQLite and on PostgreSQL, then failover time on PostgreSQL."""
    from tests.bench.bench_scheduler import bench_controller
    from tests.pgcluster import PgCluster

    cluster = PgCluster() if args.store == "auto" else None
    try:
        fresh_db = cluster.database if cluster else (lambda: args.store)
        for label in ("sqlite", "postgresql"):
            url = None if label == "sqlite" else fresh_db()
            bench_api(args.objects, args.batch, tmp / f"api-{label}", url, label)
            from controller.store import open_store

            (tmp / f"sched-{label}").mkdir()
            store = open_store(fresh_db()) if url else None
            rate = bench_controller(tmp / f"sched-{label}", args.providers, args.sessions, 1,
                                    store=store, label=f"_{label}")  # fmt: skip
            emit_for(label, "scheduling", rate, "placements/s", True,
                     providers=args.providers, sessions=args.sessions)  # fmt: skip
        if args.kills:
            bench_failover(fresh_db(), tmp / "failover", args.kills)
    finally:
        if cluster is not None:
            cluster.close()


def bench_failover(url: str, tmp: Path, kills: int) -> None:
    """``kill -9`` of the leader → a Priority applied through the other hub reconciled."""
    import shutil
    import signal

    from specs.identity import load_private_key

    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def start(name: str) -> None:
        proc, hub_url, _cfg = start_hub_subprocess(tmp / name, store=url, log=True)
        procs[name] = (proc, hub_url)

    tmp.mkdir(parents=True)
    start("a")
    for _ in range(200):  # A leads first (bounded: 20 s)
        if "event=leader_elected" in (tmp / "a" / "hub.log").read_text():
            break
        time.sleep(0.1)
    (tmp / "b" / "hub").mkdir(parents=True, mode=0o700)
    for f in ("hub.key", "admin.key", "admins.pub"):
        shutil.copy2(tmp / "a" / "hub" / f, tmp / "b" / "hub" / f)
    start("b")
    key = load_private_key(tmp / "a" / "hub" / "admin.key")
    leader, other = "a", "b"
    took: list[float] = []
    try:
        for i in range(kills):
            client = Client(procs[other][1], key)
            client.list("Priority")  # logged in before the kill
            procs[leader][0].send_signal(signal.SIGKILL)
            procs[leader][0].wait(10)
            killed = time.perf_counter()
            name = f"failover-{i}"
            client.apply([{"apiVersion": "gu/v1", "kind": "Priority",
                           "metadata": {"name": name}, "spec": {"value": i}}])  # fmt: skip
            for _ in range(600):  # bounded: 60 s
                conds = client.get("Priority", name)["status"].get("conditions") or []
                if any(c.get("type") == "Ready" for c in conds):
                    break
                time.sleep(0.05)
            took.append(time.perf_counter() - killed)
            client.close()
            start(leader)  # back, as a follower
            leader, other = other, leader
        emit("failover", percentile(took, 50), "s", kills=kills,
             p99_s=round(percentile(took, 99), 3), max_s=round(max(took), 3),
             each=[round(t, 2) for t in took], goal_s=10)  # fmt: skip
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--store", metavar="URL", help="postgresql://… or auto (see the doc)")
    ap.add_argument("--providers", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--all-cpus", action="store_true", help="hubs as gu hub --all-cpus")
    args = ap.parse_args()
    if args.store and args.store != "auto" and not is_store_url(args.store):
        ap.error(f"--store {args.store}: give a postgresql:// URL or auto (SQLite is the default)")
    global ALL_CPUS
    ALL_CPUS = args.all_cpus
    with tempfile.TemporaryDirectory(prefix="gu-bench-") as d:
        tmp = Path(d)
        if args.store:
            bench_stores(args, tmp)
            return
        bench_store_baseline(args.objects, args.batch, tmp)
        bench_resync(args.objects, tmp)
        bench_api(args.objects, args.batch, tmp)


if __name__ == "__main__":
    main()
