"""Apply → placement Running: the end-to-end start latency of a native session.

Run: ``python tests/bench/bench_startup.py [--sessions 50]``. Starts a hub and one agent
on 127.0.0.1 (state in a temp dir), pushes a tiny native image, warms the agent's
image cache with one session, then applies ``--sessions`` sessions one at a time and
measures, for each, the time from the apply call to the change feed showing its
placement ``Running``. Baseline in the same run: ``NativeRuntime.start`` of the same
image in this process (what starting the program alone costs, with no hub or agent).
Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.client import Client  # noqa: E402
from runtimes.native import NativeRuntime  # noqa: E402
from specs.images import pack_native  # noqa: E402
from specs.kinds import Workload  # noqa: E402
from tests.helpers import free_port  # noqa: E402


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "startup", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def make_image(tmp: Path) -> Path:
    src = tmp / "prog"
    src.mkdir()
    run = src / "run.sh"
    run.write_text("#!/bin/sh\nsleep 30\n")
    run.chmod(0o755)
    out = tmp / "prog.tar.gz"
    pack_native(src, out)
    return out


def session(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": "bench",
            "workload": {
                "runtime": "native",
                "image": {"hash": image},
                "command": ["./run.sh"],
                "resources": {"cpu": 0.1, "memoryMiB": 32},
            },
        },
    }


def wait_running(client: Client, name: str, since: int, limit: float = 30) -> float:
    """Seconds until a placement of Session ``name`` is Running (from the feed)."""
    start = time.perf_counter()
    for ev in client.watch(since, kinds=["Placement"], timeout=limit):
        obj = ev.get("object")
        if (
            obj
            and obj["spec"].get("session") == name
            and (obj.get("status") or {}).get("state") == "Running"
        ):
            return time.perf_counter() - start
    raise TimeoutError(f"session {name} did not run within {limit}s")


def baseline(image: Path, tmp: Path, n: int) -> list[float]:
    rt = NativeRuntime(tmp / "baseline-rt")
    wl = Workload.model_validate(
        {"runtime": "native", "image": {"hash": "sha3-256:" + "0" * 64}, "command": ["./run.sh"]}
    )
    times = []
    for i in range(n):
        t = time.perf_counter()
        rt.start(f"b{i}", wl, image)
        times.append(time.perf_counter() - t)
        rt.remove(f"b{i}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gu-bench-") as d:
        tmp = Path(d)
        image_file = make_image(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, GU_CONFIG=str(tmp / "hub" / "admin-config.yaml"))
        env["GU_LOG_LEVEL"] = "WARNING"
        gu = [sys.executable, "-m", "controller.cli.main"]
        procs = [
            subprocess.Popen(
                [*gu, "hub", "--state-dir", str(tmp / "hub"), "--listen", f"127.0.0.1:{port}"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        try:
            for _ in range(200):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            client = Client.from_config(tmp / "hub" / "admin-config.yaml")
            join = client.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
            procs.append(
                subprocess.Popen(
                    [
                        *gu,
                        "agent",
                        "--hub",
                        url,
                        "--join-token",
                        join,
                        "--state-dir",
                        str(tmp / "agent"),
                        "--heartbeat",
                        "1",
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            image = client.call("POST", "/v1/images", content=image_file.read_bytes())["hash"]
            client.apply(
                [
                    {
                        "apiVersion": "gu/v1",
                        "kind": "App",
                        "metadata": {"name": "bench"},
                        "spec": {},
                    },
                    {
                        "apiVersion": "gu/v1",
                        "kind": "ImagePolicy",
                        "metadata": {"name": "bench"},
                        "spec": {"apps": ["bench"], "allowImages": [image]},
                    },
                ]
            )
            for _ in range(100):
                if any(p["ready"] for p in client.call("GET", "/peers")):
                    break
                time.sleep(0.2)
            # warm the agent's image cache
            rv = client.call("GET", "/v1/placements")["resourceVersion"]
            client.apply([session("warm", image)])
            wait_running(client, "warm", rv)
            client.delete("Session", "warm")

            latencies = []
            for i in range(args.sessions):
                name = f"s{i}"
                rv = client.call("GET", "/v1/placements")["resourceVersion"]
                t = time.perf_counter()
                client.apply([session(name, image)])
                wait_running(client, name, rv)
                latencies.append(time.perf_counter() - t)
                client.delete("Session", name)  # keep one workload at a time
            emit("apply_to_running_p50", pct(latencies, 50) * 1000, "ms", sessions=len(latencies))
            emit("apply_to_running_p99", pct(latencies, 99) * 1000, "ms", sessions=len(latencies))
            base = baseline(image_file, tmp, min(args.sessions, 20))
            emit("runtime_start_p50_baseline", pct(base, 50) * 1000, "ms")
            emit("runtime_start_p99_baseline", pct(base, 99) * 1000, "ms")
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
