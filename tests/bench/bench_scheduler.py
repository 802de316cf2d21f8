"""Benchmark of scheduling: Sessions → Placements through the real reconciler and Store.

Run: ``python tests/bench/bench_scheduler.py [--providers 1000] [--placements 10000]``.
Prints one JSON line per figure (``{"bench": "scheduler", "figure", "value", "unit", …}``).

World: ``--providers`` Provider objects with inventories (32 cores, 64 GiB), Ready (set by
the real Provider reconciler), and an App. Then, in a fresh store each time:

- ``controller_*``: the Sessions are applied in one transaction while the real
  ``Controller`` runs (change feed → queue → workers → Session reconciler → Store), and
  the clock stops when every placement exists and every Session's status lists them.
  Two shapes: ``placements/10`` sessions × count 10, and ``placements`` × count 1.
- ``direct_*``: the same Session reconciler called in a loop on one thread (no queue,
  no feed): what scheduling and writing cost without the engine around them.
- ``grouped_passes_*``: Sessions of 1 passed on one thread, grouped into commits as the
  engine groups them, in µs per pass; ``_policy`` is the pass as the hub runs it (the
  ImagePolicy check, a signed admission per placement), against the same without.
- ``waiting_*``: Sessions applied while no provider exists, so every one waits in the
  Session wait queue; passes per second until the engine has passed them all. Two
  sizes, a fifth of ``--placements`` and all of them: the same rate at both is cost
  per Session that does not grow with the number waiting (it did, O(waiting) a pass).
- ``backlog_*``: a fifth of ``--placements`` Sessions wait with no provider; then
  ``--providers`` providers join in one write (the workers of a hub on SQLite):
  placements bound per second until all are, and the passes it took (a change of
  capacity wakes the waiting Sessions that fit, and each that binds the next).
- ``scheduler_only``: ``schedule`` + ``RankedNodes.allocate`` alone, no store.
- ``resync_noop``: a second pass over every converged Session, queued on the running
  controller as the periodic resync queues them (must write 0 rows).

Baselines in the same run, same number of placements, same object shape:
``baseline_store_create`` (one ``store.create`` per transaction, i.e. one fsync each) and
``baseline_store_create_batched`` (10 per transaction, the grouping a count-10 pass uses).

What limits it (measured on the dev box, 2 cores): ``schedule`` itself places several
hundred thousand a second over 1,000 providers, so the cost is the Store. One Session pass
is ~12 statements (read, create, status, event, change log) and their JSON; ``direct_*``
commits each pass on its own (the fsync is about a third of a count-1 pass). The
Controller groups the passes that are ready into one commit (``Controller._work``):
Sessions of count 1 went from about 530/s to about 1,500/s through it with that, count
10 from about 2,700/s to 4,400/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.admission import AdmissionSigner, session_policy  # noqa: E402
from controller.hub import RECONCILE_WORKERS  # noqa: E402
from controller.images import ImageStore  # noqa: E402
from controller.reconcile.engine import Controller  # noqa: E402
from controller.reconcilers import register_all  # noqa: E402
from controller.reconcilers.placement import new_placement, placement_name  # noqa: E402
from controller.scheduler import NodeView, RankedNodes, schedule  # noqa: E402
from controller.store import SQLiteStore, Store  # noqa: E402
from specs.identity import generate_key  # noqa: E402
from specs.kinds import CpuInfo, Inventory, OsInfo, Session, Usage  # noqa: E402

IMAGE = "sha3-256:" + "ab" * 32
GIB = 1024**3
HEARTBEAT = 3600.0  # providers stay Ready for the whole run without beating


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(
        json.dumps(
            {
                "bench": "scheduler",
                "figure": figure,
                "value": round(value, 3),
                "unit": unit,
                **extra,
            }
        ),
        flush=True,
    )


def nid(i: int) -> str:
    return "0x" + f"{i:040x}"


def inventory() -> dict[str, Any]:
    return {
        "os": {"name": "Linux", "version": "6.1"},
        "cpu": {"architecture": "x86_64", "bit": [64], "cores": 32, "threads": 64},
        "memoryBytes": 64 * GIB,
        "storageBytes": 500 * GIB,
        "runtimes": ["native"],
    }


def world_providers(providers: int, now: str | None = None) -> list[dict[str, Any]]:
    """``providers`` Provider objects with inventories, heartbeating at ``now``."""
    beat = now or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [
        {
            "kind": "Provider",
            "metadata": {"name": nid(i + 1)},
            "spec": {
                "nodeId": nid(i + 1),
                "publicKey": "ed25519:" + base64.b64encode(i.to_bytes(32, "big")).decode(),
            },
            "status": {
                "inventory": inventory(),
                "usage": {"memoryAvailableBytes": 60 * GIB},
                "lastHeartbeat": beat,
            },
        }
        for i in range(providers)
    ]


def world(
    tmp: Path,
    providers: int,
    workers: int = 4,
    store: Store | None = None,
    policy: bool = False,
) -> tuple[Store, Controller]:
    """A fresh store (``store``, or SQLite in ``tmp``) with Ready providers and an App, and
    a controller with every reconciler; with ``policy`` also an ImagePolicy allowing the
    image and the hub's policy hook (each bound placement gets a signed admission)."""
    store = store if store is not None else SQLiteStore(tmp / "hub.db")
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with store.transaction():
        store.create({"kind": "App", "metadata": {"name": "bench"}, "spec": {}})
        if policy:
            store.create(
                {
                    "kind": "ImagePolicy",
                    "metadata": {"name": "bench"},
                    "spec": {"apps": ["bench"], "allowImages": [IMAGE]},
                }
            )
        for provider in world_providers(providers, now):
            store.create(provider)
    controller = Controller(store, workers=workers, resync_period=3600)
    hook = (
        session_policy(ImageStore(tmp / "images"), AdmissionSigner(generate_key()))
        if policy
        else None
    )
    register_all(controller, heartbeat=HEARTBEAT, policy=hook)
    for p in store.list("Provider"):
        controller.reconcile("Provider", p["metadata"]["name"])
    return store, controller


def sessions(n: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "gu/v1",
            "kind": "Session",
            "metadata": {"name": f"s{i:05d}"},
            "spec": {
                "app": "bench",
                "providers": {"count": count},
                "workload": {
                    "runtime": "native",
                    "image": {"hash": IMAGE},
                    "resources": {"cpu": 0.5, "memoryMiB": 256},
                },
            },
        }
        for i in range(n)
    ]


def converged(store: Store, n_sessions: int, n_placements: int) -> bool:
    if store.count("Placement") < n_placements:
        return False
    listed = sum(len(s["status"].get("placements") or []) for s in store.list("Session"))
    return listed >= n_placements and store.count("Session") == n_sessions


def passed(controller: Controller, before: int, n: int) -> bool:
    """Whether ``n`` passes ran since the count was ``before`` and the engine is idle."""
    stats = controller.stats()
    return (
        stats["reconciles"] - before >= n and not stats["queue_length"] and not stats["in_flight"]
    )


def bench_controller(
    tmp: Path,
    providers: int,
    n_sessions: int,
    count: int,
    workers: int = 4,
    store: Store | None = None,
    label: str = "",
) -> float:
    """Placements per second through the real controller (and prints its figures)."""
    store, controller = world(tmp, providers, workers, store)
    total = n_sessions * count
    objs = sessions(n_sessions, count)

    async def resync_noop() -> tuple[float, int]:
        """Every Session queued again on the running controller, as the periodic resync
        queues them (so its passes are grouped into commits as the hub's are): seconds
        until all have run and the queue is empty, and the rows they wrote."""
        await asyncio.sleep(0.5)  # (the last status writes' own wake-ups run first)
        rv = store.resource_version
        before = controller.stats()["reconciles"]
        start = time.perf_counter()
        for obj in objs:
            controller.enqueue("Session", obj["metadata"]["name"])
        while not passed(controller, before, n_sessions):
            assert time.perf_counter() - start < 600, "the resync did not finish in 10 min"
            await asyncio.sleep(0.005)
        return time.perf_counter() - start, store.resource_version - rv

    async def body() -> tuple[float, dict[str, Any], tuple[float, int]]:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        await asyncio.sleep(0.2)  # the initial list is done
        applied = time.perf_counter()
        store.apply(objs, finalizers=lambda kind: ["gu/placements"])
        start = time.perf_counter()  # scheduling starts once the Sessions are committed
        emit(f"apply_{n_sessions}_sessions", (start - applied) * 1000, "ms", note="not counted")
        try:
            while not converged(store, n_sessions, total):
                assert time.perf_counter() - start < 600, "scheduling did not finish in 10 min"
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            stats = controller.stats()
            return elapsed, stats, await resync_noop()
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    elapsed, stats, (resync_seconds, resync_rows) = asyncio.run(body())
    bound = sum(1 for p in store.list("Placement") if p["spec"]["node"])
    emit(
        f"controller_{n_sessions}x{count}{label}",
        total / elapsed,
        "placements/s",
        placements=total,
        bound=bound,
        providers=providers,
        seconds=round(elapsed, 3),
        workers=workers,
        reconciles=stats["reconciles"],
        conflicts=stats["conflicts"],
        errors=stats["errors"],
    )
    emit(
        f"resync_noop_{n_sessions}x{count}{label}",
        resync_seconds * 1000,
        "ms",
        sessions=n_sessions,
        rows_written=resync_rows,
    )
    store.close()
    return total / elapsed


def bench_waiting(tmp: Path, n_sessions: int) -> None:
    """Passes per second of ``n_sessions`` Sessions that all wait (no provider at all)."""
    store, controller = world(tmp, 0)
    objs = sessions(n_sessions, 1)

    async def body() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        await asyncio.sleep(0.2)  # the initial list is done
        store.apply(objs, finalizers=lambda kind: ["gu/placements"])
        start = time.perf_counter()
        before = controller.stats()["reconciles"]
        try:
            while not passed(controller, before, n_sessions):
                assert time.perf_counter() - start < 600, "the passes did not end in 10 min"
                await asyncio.sleep(0.01)
            return time.perf_counter() - start
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    elapsed = asyncio.run(body())
    waiting = sum(1 for p in store.list("Placement") if not p["spec"].get("node"))
    emit(
        f"waiting_{n_sessions}",
        n_sessions / elapsed,
        "passes/s",
        sessions=n_sessions,
        waiting=waiting,
        seconds=round(elapsed, 3),
    )
    store.close()


def bench_backlog(tmp: Path, providers: int, n_sessions: int) -> None:
    """Sessions of 1 waiting for providers that then join at once: binds per second."""
    store, controller = world(tmp, 0, workers=RECONCILE_WORKERS)
    objs = sessions(n_sessions, 1)
    ready = world_providers(providers)

    def bound() -> int:
        return sum(1 for p in store.list("Placement") if p["spec"]["node"])

    async def body() -> tuple[float, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        await asyncio.sleep(0.2)  # the initial list is done
        store.apply(objs, finalizers=lambda kind: ["gu/placements"])
        start = time.perf_counter()
        try:
            while store.count("Placement") < n_sessions or controller.stats()["queue_length"]:
                assert time.perf_counter() - start < 600, "the Sessions did not all wait"
                await asyncio.sleep(0.05)
            before = controller.stats()["reconciles"]
            joined = time.perf_counter()
            with store.transaction():
                for provider in ready:
                    store.create(provider)
            while bound() < n_sessions:
                assert time.perf_counter() - joined < 600, "the backlog did not drain in 10 min"
                await asyncio.sleep(0.1)
            return time.perf_counter() - joined, controller.stats()["reconciles"] - before
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    elapsed, passes = asyncio.run(body())
    emit(
        f"backlog_{n_sessions}_join_{providers}",
        n_sessions / elapsed,
        "placements/s",
        sessions=n_sessions,
        providers=providers,
        seconds=round(elapsed, 3),
        passes=passes,
    )
    store.close()


def bench_direct(tmp: Path, providers: int, n_sessions: int, count: int) -> None:
    store, controller = world(tmp, providers)
    store.apply(sessions(n_sessions, count), finalizers=lambda kind: ["gu/placements"])
    names = [s["metadata"]["name"] for s in store.list("Session")]
    start = time.perf_counter()
    for name in names:
        controller.reconcile("Session", name)
    elapsed = time.perf_counter() - start
    total = store.count("Placement")
    emit(
        f"direct_{n_sessions}x{count}",
        total / elapsed,
        "placements/s",
        placements=total,
        providers=providers,
        seconds=round(elapsed, 3),
    )
    store.close()


def bench_grouped_passes(tmp: Path, providers: int, n_sessions: int, policy: bool) -> None:
    """Session passes of count 1 on one thread, grouped as the engine groups them (64 to
    a commit, no savepoint of their own): what a pass costs, without queue or feed. With
    ``policy`` the pass is the hub's (its ImagePolicy check and one signed admission per
    placement); without, the baseline of the same run."""
    store, controller = world(tmp, providers, policy=policy)
    store.apply(sessions(n_sessions, 1), finalizers=lambda kind: ["gu/placements"])
    names = store.names("Session")
    start = time.perf_counter()
    for i in range(0, len(names), 64):
        with store.transaction():
            for name in names[i : i + 64]:
                controller.reconcile("Session", name)
    elapsed = time.perf_counter() - start
    bound = sum(1 for p in store.list("Placement") if p["spec"]["node"])
    emit(
        f"grouped_passes_{n_sessions}x1{'_policy' if policy else ''}",
        elapsed / n_sessions * 1e6,
        "us/pass",
        bound=bound,
        providers=providers,
        passes_per_second=round(n_sessions / elapsed),
    )
    store.close()


def bench_scheduler_only(providers: int, n_sessions: int, count: int) -> None:
    inv = Inventory(
        os=OsInfo(name="Linux", version="6.1"),
        cpu=CpuInfo(architecture="x86_64", bit=[64], cores=32, threads=64),
        memoryBytes=64 * GIB,
        storageBytes=500 * GIB,
        runtimes=["native"],  # as every agent reports: the scheduler places by runtime
    )
    usage = Usage(memoryAvailableBytes=60 * GIB)
    nodes = RankedNodes(
        NodeView(node_id=nid(i + 1), inventory=inv, usage=usage, ready=True)
        for i in range(providers)
    )
    session = Session.model_validate(sessions(1, count)[0])
    start = time.perf_counter()
    placed = 0
    for _ in range(n_sessions):
        decision = schedule(session, nodes, count)
        for node in decision.nodes:
            nodes.allocate(node, 0.5, 256)
        placed += len(decision.nodes)
    elapsed = time.perf_counter() - start
    emit(
        f"scheduler_only_{n_sessions}x{count}", placed / elapsed, "placements/s", placements=placed
    )


def bench_baseline(tmp: Path, providers: int, total: int, batch: int) -> None:
    store, _ = world(tmp, providers)
    spec = {
        "app": "bench",
        "workload": {
            "runtime": "native",
            "image": {"hash": IMAGE, "url": None},
            "command": [],
            "args": [],
            "env": {},
            "resources": {"cpu": 0.5, "memoryMiB": 256},
        },
        "restartPolicy": "Never",
        "network": None,
    }
    objs = [
        new_placement(
            placement_name(f"s{i // 10:05d}"),
            f"s{i // 10:05d}",
            spec,
            nid(i % providers + 1),
            "Running",
        )
        for i in range(total)
    ]
    start = time.perf_counter()
    for i in range(0, total, batch):
        with store.transaction():
            for obj in objs[i : i + batch]:
                store.create(obj)
    elapsed = time.perf_counter() - start
    figure = "baseline_store_create" if batch == 1 else "baseline_store_create_batched"
    emit(figure, total / elapsed, "placements/s", placements=total, per_transaction=batch)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--providers", type=int, default=1000)
    parser.add_argument("--placements", type=int, default=10_000)
    args = parser.parse_args()
    n = args.placements
    with tempfile.TemporaryDirectory(prefix="gu-bench-sched-") as d:
        tmp = Path(d)
        runs = 0

        def fresh() -> Path:
            nonlocal runs
            runs += 1
            path = tmp / f"run{runs}"
            path.mkdir()
            return path

        bench_baseline(fresh(), args.providers, n, 1)
        bench_baseline(fresh(), args.providers, n, 10)
        bench_scheduler_only(args.providers, n // 10, 10)
        bench_scheduler_only(args.providers, n, 1)
        bench_direct(fresh(), args.providers, n // 10, 10)
        bench_direct(fresh(), args.providers, n, 1)
        bench_grouped_passes(fresh(), args.providers, min(n, 3000), policy=False)
        bench_grouped_passes(fresh(), args.providers, min(n, 3000), policy=True)
        bench_controller(fresh(), args.providers, n // 10, 10)
        bench_controller(fresh(), args.providers, n, 1)
        bench_waiting(fresh(), max(n // 5, 1))
        bench_waiting(fresh(), n)
        bench_backlog(fresh(), args.providers, max(n // 2, 1))


if __name__ == "__main__":
    main()
