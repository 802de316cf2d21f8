"""The hub's reconcile engine in a process of its own (``gu hub --engine-process``).

In one process the API's event loop and the reconcile worker share one interpreter
lock: each of the worker's SQLite calls and commits hands it to the loop and back,
and the two take turns on one CPU. Here the engine runs in a child process, on a CPU
of its own where the machine has two, over the same SQLite file
(``SQLiteStore(shared=True)``: a cross-process writer lock, the rv read at each
transaction's start, commits announced to the other process).

What the two processes share, and how:

- **the store**: the file; each process's commit wakes the other's listeners (the
  engine's feed, the API's watch streams);
- **liveness**: the API process hears the heartbeats; it writes the leases it heard
  to the store every ``SHARED_CHECKPOINT_SECONDS`` and the engine reads them as often,
  as hubs sharing PostgreSQL do (so usage reaches the scheduler within about a
  second, and the engine judges expiries from what it read);
- **images**: the directory; the engine learns of uploads from the image store's
  generation file (``ImageStore.current_generation``);
- **the hub's key**: the file (the engine signs admissions with it);
- **statistics**: the engine writes its ``Controller.stats()`` and a ``PassTally`` (its
  passes and its store commits) to ``engine-stats.json`` in the state dir every
  ``STATS_SECONDS``; ``/metrics`` serves them, the commits added to the API's.

The hub starts the child, stops it with SIGTERM when it stops, and starts it again
if it dies (``Hub._run_engine_process``; the store loses nothing: each group commit
is atomic). The child is killed the moment its parent ends (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from controller.admission import AdmissionSigner, session_policy
from controller.images import ImageStore
from controller.liveness import Liveness
from controller.liveness import keep as keep_leases
from controller.metrics import PassTally
from controller.process import GC_THRESHOLDS, setup_logging
from controller.reconcile.engine import Controller
from controller.reconcilers import register_all
from controller.store.sqlite import SQLiteStore
from specs.identity import load_private_key
from specs.logfmt import kv

log = logging.getLogger("gu.hub.engine")

STATS_FILE = "engine-stats.json"
STATS_SECONDS = 0.5
"""How often the engine reports its figures (``/metrics`` serves the last report)."""
COMMIT_WINDOW = 0.05
COMMIT_MAX = 256
"""The engine's group commits here: longer than in one process (``engine.COMMIT_WINDOW``,
10 ms, 64 passes), since a group ends as soon as the API's process waits for the
writer lock (``Store.writer_waiting``), and each commit's fsync is time this process
has nothing else to do. Measured (``bench_pool.py``, 1,000 agents, 10,000 Sessions of
1, December 2026, same session): 1,605 / 1,664 placements/s against 1,552 / 1,565 with
the one-process values, the Sessions' apply not slower (1.05-1.6 s against 1.14 s);
0.1 s and 512 passes gave no more (1,643 / 1,638)."""

LEASE_SECONDS = 1.0
"""How often the engine reads the leases the API process wrote (and the API writes them)."""


def read_stats(state_dir: Path) -> dict[str, Any] | None:
    """What the engine process last wrote of itself (None: nothing yet, or unreadable)."""
    try:
        data = json.loads((state_dir / STATS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_stats(state_dir: Path, controller: Controller, passes: PassTally) -> None:
    path = state_dir / STATS_FILE
    tmp = path.with_suffix(".tmp")
    body = {
        "pid": os.getpid(),
        "time": time.time(),
        **controller.stats(),
        "passes": passes.report(),
    }
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


async def _run(args: argparse.Namespace) -> bool:
    """Run the engine until SIGTERM (True) or until a part of it ends by itself (False)."""
    state = Path(args.state_dir)
    store = SQLiteStore(state / "hub.db", shared=True)
    images = ImageStore(state / "images", reader=True)
    key = load_private_key(state / "hub.key")
    liveness = Liveness(default_period=args.heartbeat)
    liveness.load(store)
    passes = PassTally()
    store.time_commits(passes.commits.observe)
    controller = Controller(
        store,
        workers=args.workers,
        resync_period=args.resync,
        observe=passes.observe,
        commit_window=COMMIT_WINDOW,
        commit_max=COMMIT_MAX,
    )
    register_all(
        controller,
        node_grace=args.node_grace,
        heartbeat=args.heartbeat,
        policy=session_policy(images, AdmissionSigner(key)),
        liveness=liveness,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = args.parent

    async def housekeeping() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_SECONDS)
            if os.getppid() != parent:  # the hub is gone: so is its engine
                log.warning(kv("engine_orphaned", action="stopping"))
                stop.set()
            try:
                await asyncio.to_thread(_write_stats, state, controller, passes)
            except Exception as exc:  # (figures are not worth stopping the engine for)
                log.warning(kv("engine_stats_unwritten", error=exc))

    tasks = [
        asyncio.create_task(controller.run(stop), name="reconcile"),
        asyncio.create_task(
            keep_leases(
                liveness,
                store,
                lambda node: controller.enqueue("Provider", node),
                stop,
                checkpoint_every=float("inf"),  # (it hears no heartbeat: nothing to write)
                load_every=LEASE_SECONDS,
            ),
            name="liveness",
        ),
        asyncio.create_task(housekeeping(), name="stats"),
    ]
    log.info(kv("engine_started", pid=os.getpid(), workers=args.workers))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stopped = stop.is_set()
        for task in done:
            if not stopped:
                log.error(kv("engine_task_ended", task=task.get_name(), error=task.exception()))
        return stopped
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=10)
        store.close()
        log.info(kv("engine_stopped"))


def _die_with_parent() -> None:
    """Be killed the moment the hub's process ends (Linux ``PR_SET_PDEATHSIG``): a hub
    killed with -9 and started again must not meet its old engine still writing. (Its
    transactions are atomic: a kill loses only the passes of an uncommitted group.)"""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> None:
    """The engine process's entry point (started by the hub, not by users)."""
    parser = argparse.ArgumentParser(prog="gu-engine")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--node-grace", type=float, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--resync", type=float, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    if os.getppid() != args.parent:  # (it ended before the line above took effect)
        sys.exit(1)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.cpu})
    setup_logging(os.environ.get("GU_LOG_LEVEL", "INFO"))
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    sys.exit(0 if asyncio.run(_run(args)) else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
