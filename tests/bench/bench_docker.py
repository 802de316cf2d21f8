"""Docker runtime: apply → container Running, against ``docker run`` on the same engine.

Run: ``python tests/bench/bench_docker.py [--sessions 20] [--size-mib 50]``. Uses the
engine that answers (``DOCKER_HOST`` or the usual socket) or, as root, a private vfs
dockerd it starts and stops (``tests/dockerd.py``). Starts a hub and one agent with
``--docker-host`` on 127.0.0.1 and measures:

- ``apply_to_running``: for ``--sessions`` Sessions one at a time, with the image
  already loaded, the time from the apply call to the change feed showing the
  placement ``Running``; baseline in the same run: create + start of a container from
  the same image id through the same engine (the SDK's ``docker run -d``), until it
  runs. ``added_p99`` is gu's cost over it.
- ``first_run``: a ``--size-mib`` image the agent has never seen (not in its cache,
  not on the engine): apply → Running, i.e. pull from the hub + verify + load + start;
  baseline: ``docker load`` of the same tarball + ``docker run -d``.

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.cli.images import save_docker_image  # noqa: E402
from controller.client import Client  # noqa: E402
from tests.dockerd import Engine, busybox_rootfs_tar, find_or_start, import_busybox  # noqa: E402
from tests.helpers import start_hub_subprocess  # noqa: E402


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "docker", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def session(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": "bench",
            "workload": {
                "runtime": "docker",
                "image": {"hash": image},
                "command": ["sleep", "300"],
                "resources": {"cpu": 0.1, "memoryMiB": 32},
            },
        },
    }


def wait_running(client: Client, name: str, since: int, limit: float = 120) -> float:
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


def apply_and_wait(client: Client, name: str, image: str) -> float:
    rv = client.call("GET", "/v1/placements")["resourceVersion"]
    t = time.perf_counter()
    client.apply([session(name, image)])
    wait_running(client, name, rv)
    return time.perf_counter() - t


def delete_and_wait(client: Client, name: str, engine: Engine) -> None:
    """Delete the Session; wait until its placement and its container are gone (so the
    next start does not share the engine with a removal, as the baseline never does)."""
    client.delete("Session", name)
    docker = engine.client()
    try:
        for _ in range(600):
            # the low-level list: the high-level one inspects each, racing the removal
            if not client.list("Placement") and not docker.api.containers(
                all=True, filters={"label": "gu.placement"}
            ):
                return
            time.sleep(0.05)
    finally:
        docker.close()


def run_until_running(engine: Engine, image_id: str) -> float:
    """The baseline start: create + start a container by id, until the engine says running."""
    client = engine.client()
    try:
        t = time.perf_counter()
        c = client.containers.run(image_id, ["sleep", "300"], detach=True, network_mode="none")
        while True:
            c.reload()
            if c.attrs["State"]["Status"] == "running":
                break
            time.sleep(0.005)
        took = time.perf_counter() - t
        c.remove(force=True)
        return took
    finally:
        client.close()


def big_image(engine: Engine, size_mib: int) -> str:
    """A busybox root plus ``size_mib`` of random bytes, imported; returns its id."""
    rootfs = busybox_rootfs_tar()
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(rootfs)) as src,
        tarfile.open(fileobj=buf, mode="w") as out,
    ):
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        blob = os.urandom(size_mib << 20)
        info = tarfile.TarInfo("data/blob")
        info.size = len(blob)
        out.addfile(info, io.BytesIO(blob))
    client = engine.client()
    try:
        client.api.import_image_from_data(
            buf.getvalue(), repository="gu-bench/big", tag="latest", changes=["ENV PATH=/bin"]
        )
        return str(client.images.get("gu-bench/big:latest").id)
    finally:
        client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size-mib", type=int, default=50)
    args = ap.parse_args()
    engine = find_or_start()
    if engine is None:
        print(json.dumps({"bench": "docker", "skipped": "no Docker engine"}), flush=True)
        return
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gu-bench-docker-") as d:
            tmp = Path(d)
            hub, url, config = start_hub_subprocess(tmp)
            procs.append(hub)
            client = Client.from_config(config)
            join = client.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
            env = dict(os.environ, GU_LOG_LEVEL="WARNING")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "agent.main", "--hub", url, "--join-token", join,
                        "--state-dir", str(tmp / "agent"), "--heartbeat", "1",
                        "--docker-host", engine.host,
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            small_id = import_busybox(engine, "gu-bench/busybox:latest")
            small = save_docker_image(small_id, tmp / "small.tar", engine.host)
            big_id = big_image(engine, args.size_mib)
            big = save_docker_image(big_id, tmp / "big.tar", engine.host)
            for path in (tmp / "small.tar", tmp / "big.tar"):
                with open(path, "rb") as f:
                    client.request("POST", "/v1/images", content=f)
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
                        "spec": {"apps": ["bench"], "allowImages": [small, big]},
                    },
                ]
            )
            for _ in range(150):
                if any(p["ready"] for p in client.call("GET", "/peers")):
                    break
                time.sleep(0.2)

            apply_and_wait(client, "warm", small)  # image in the agent's cache and engine
            delete_and_wait(client, "warm", engine)
            gu: list[float] = []
            for i in range(args.sessions):
                gu.append(apply_and_wait(client, f"s{i}", small))
                delete_and_wait(client, f"s{i}", engine)
            base = [run_until_running(engine, small_id) for _ in range(args.sessions)]
            n = len(gu)
            emit("apply_to_running_p50", pct(gu, 50) * 1000, "ms", sessions=n)
            emit("apply_to_running_p99", pct(gu, 99) * 1000, "ms", sessions=n)
            emit("docker_run_p50_baseline", pct(base, 50) * 1000, "ms", runs=n)
            emit("docker_run_p99_baseline", pct(base, 99) * 1000, "ms", runs=n)
            emit(
                "added_p99",
                (pct(gu, 99) - pct(base, 99)) * 1000,
                "ms",
                ratio_p50=round(pct(gu, 50) / pct(base, 50), 2),
                goal="<= 150 ms",
            )

            docker = engine.client()
            try:
                docker.images.remove(big_id, force=True)  # so the agent loads it itself
                first = apply_and_wait(client, "big", big)
                delete_and_wait(client, "big", engine)
                docker.images.remove(big_id, force=True)
                t = time.perf_counter()
                with open(tmp / "big.tar", "rb") as f:
                    docker.images.load(f)
                load = time.perf_counter() - t
                run = run_until_running(engine, big_id)
            finally:
                docker.close()
            emit("first_run", first * 1000, "ms", size_mib=args.size_mib)
            emit(
                "docker_load_and_run_baseline",
                (load + run) * 1000,
                "ms",
                size_mib=args.size_mib,
                ratio=round(first / (load + run), 2),
            )
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.stop()


if __name__ == "__main__":
    main()
