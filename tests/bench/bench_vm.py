"""gVMkit's costs, each against a baseline measured in the same run (JSON lines).

``python tests/bench/bench_vm.py [--runs 10] [--assets DIR]``

1. Boot to the entrypoint: ``VmRuntime.start`` of a busybox ``.gvmi`` until the
   guest's init says ``started`` (and until ``inspect`` says Running, what the
   agent reports), p50/p99 over ``--runs``; baseline: the bare
   ``qemu-system-x86_64 -kernel … -initrd …`` boot of a trivial init that
   prints one line on the serial console, exec to that line.
2. Footprint on disk: QEMU's binary, the libraries it loads and the firmware
   it reads, plus the kernel and initramfs; against the Docker engine's
   binaries (dockerd, containerd, its shim, runc, docker-init, docker-proxy,
   the CLI) and their libraries, where they are installed.
3. Host RSS of one idle VM (QEMU's VmRSS) against one idle container's
   processes (the shim and the container's), where an engine answers.
4. ``.gvmi`` size against a one-layer ``docker save``-style tarball of the same
   folder.
5. Apply → placement Running through a hub and an agent (``--vm-accel tcg``), one
   Session at a time, p50/p99 over ``--runs``; baseline: the driver's own
   start → Running of figure 1 (``added_p50``/``added_p99`` are the hub's and the
   agent's cost over it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.client import Client
from runtimes.vm import VmRuntime
from runtimes.vm.assets import cpio, find_assets, gz
from specs import gvmi
from specs.kinds import Workload
from tests.bench.bench_docker import wait_running
from tests.dockerd import find_or_start, import_busybox
from tests.helpers import start_hub_subprocess
from tests.vmkit import busybox_root, qemu_pids

ROOT = Path(__file__).resolve().parents[2]


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(
        json.dumps(
            {"bench": "vm", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
        ),
        flush=True,
    )


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def bare_boot(kernel: Path, initrd: Path) -> float:
    """Exec of bare QEMU to the trivial init's line on the serial console."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic",
            "-accel", "tcg", "-m", "256", "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1", "-no-reboot",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    took = float("nan")
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if b"gu-bench-up" in line:
            took = time.perf_counter() - t
            break
        if time.monotonic() > deadline:
            break
    proc.kill()
    proc.wait()
    return took


def boots(rt: VmRuntime, image: Path, runs: int) -> tuple[list[float], list[float]]:
    to_init, to_running = [], []
    w = Workload.model_validate(
        {
            "runtime": "vm",
            "image": {"hash": "sha3-256:" + "0" * 64},
            "resources": {"cpu": 1, "memoryMiB": 256},
        }
    )
    for i in range(runs):
        name = f"bench-{i}"
        t = time.perf_counter()
        rt.start(name, w, image)
        status = rt.state_dir / name / "status"
        seen_init = None
        for _ in range(1200):  # bounded: 120 s
            if seen_init is None and status.read_bytes().startswith(b"started"):
                seen_init = time.perf_counter() - t
            if seen_init is not None and rt.inspect(name).state == "Running":
                break
            time.sleep(0.01)
        to_running.append(time.perf_counter() - t)
        to_init.append(seen_init if seen_init is not None else float("nan"))
        rt.remove(name)
    return to_init, to_running


def closure(binaries: list[str]) -> int:
    """Bytes of the binaries and every shared library they load (ldd)."""
    files: set[str] = set()
    for b in binaries:
        path = shutil.which(b) or b
        if not os.path.exists(path):
            continue
        files.add(os.path.realpath(path))
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split("=>")
            lib = (parts[1] if len(parts) > 1 else parts[0]).split("(")[0].strip()
            if lib.startswith("/"):
                files.add(os.path.realpath(lib))
    return sum(os.path.getsize(f) for f in files)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_container_rss_kib() -> int | None:
    """VmRSS of one idle busybox container's processes (its shim and its ``sleep``),
    where an engine answers or can be started; else None."""
    engine = find_or_start()
    if engine is None:
        return None
    try:
        image = import_busybox(engine, "gu-bench/vm-rss:latest")
        client = engine.client()
        try:
            c = client.containers.run(image, ["sleep", "600"], detach=True, network_mode="none")
            try:
                for _ in range(100):
                    c.reload()
                    if c.attrs["State"]["Status"] == "running":
                        break
                    time.sleep(0.05)
                time.sleep(2)
                pid = int(c.attrs["State"]["Pid"])
                shim = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                return rss_kib(pid) + rss_kib(shim)
            finally:
                c.remove(force=True)
        finally:
            client.close()
    finally:
        engine.stop()


def through_the_hub(tmp: Path, image: Path, assets: Path, runs: int) -> list[float]:
    """Apply → placement Running for ``runs`` Sessions one at a time (each deleted, and
    its QEMU gone, before the next)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        hub, url, config = start_hub_subprocess(tmp)
        procs.append(hub)
        client = Client.from_config(config)
        with open(image, "rb") as f:
            digest = client.request("POST", "/v1/images", content=f).json()["hash"]
        client.apply(
            [
                {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "bench"}, "spec": {}},
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "bench"},
                    "spec": {"apps": ["bench"], "allowImages": [digest]},
                },
            ]
        )
        join = client.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "agent.main", "--hub", url, "--join-token", join,
                    "--state-dir", str(tmp / "agent"), "--heartbeat", "1",
                    "--runtimes", "vm", "--vm-assets", str(assets), "--vm-accel", "tcg",
                ],
                env=dict(os.environ, GU_LOG_LEVEL="WARNING"),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        for _ in range(300):
            if any(p["ready"] for p in client.call("GET", "/peers")):
                break
            time.sleep(0.1)
        took = []
        for i in range(runs + 1):  # the first pulls the image into the agent's cache
            name = f"vm{i}"
            rv = client.call("GET", "/v1/placements")["resourceVersion"]
            before = qemu_pids()
            t = time.perf_counter()
            client.apply(
                [
                    {
                        "apiVersion": "gu/v1",
                        "kind": "Session",
                        "metadata": {"name": name},
                        "spec": {
                            "app": "bench",
                            "workload": {
                                "runtime": "vm",
                                "image": {"hash": digest},
                                "resources": {"cpu": 1, "memoryMiB": 256},
                            },
                        },
                    }
                ]
            )
            wait_running(client, name, rv)
            if i:
                took.append(time.perf_counter() - t)
            started = qemu_pids() - before
            client.delete("Session", name)
            for _ in range(600):  # bounded: 60 s
                if not client.list("Placement") and not (qemu_pids() & started):
                    break
                time.sleep(0.1)
        return took
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--assets", type=Path, default=ROOT / ".venv" / "vmkit-assets")
    args = ap.parse_args()
    assets = find_assets(args.assets)
    with tempfile.TemporaryDirectory(prefix="gu-bench-vm-") as tmp_name:
        tmp = Path(tmp_name)
        root = busybox_root(tmp / "root", "exec /bin/busybox sleep 600\n")
        image = tmp / "idle.gvmi"
        gvmi.build_from_dir(root, image, gvmi.Metadata(entrypoint=["/bin/sh", "/run.sh"]))

        # 1. boot
        trivial = tmp / "trivial.img"
        trivial.write_bytes(
            gz(cpio([
                ("bin", 0o040755, b""),
                ("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()),
                ("init", 0o100755, b"#!/bin/busybox sh\n/bin/busybox echo gu-bench-up\n/bin/busybox poweroff -f\n"),
            ]))
        )  # fmt: skip
        bare = [bare_boot(assets.kernel, trivial) for _ in range(args.runs)]
        rt = VmRuntime(tmp / "state", assets_dir=args.assets, accel="tcg")
        to_init, to_running = boots(rt, image, args.runs)
        emit("bare_qemu_boot_p50_baseline", pct(bare, 50) * 1000, "ms", runs=args.runs)
        emit("bare_qemu_boot_p99_baseline", pct(bare, 99) * 1000, "ms")
        emit(
            "boot_to_entrypoint_p50",
            pct(to_init, 50) * 1000,
            "ms",
            ratio=round(pct(to_init, 50) / pct(bare, 50), 2),
            accel="tcg",
        )
        emit(
            "boot_to_entrypoint_p99",
            pct(to_init, 99) * 1000,
            "ms",
            ratio=round(pct(to_init, 99) / pct(bare, 99), 2),
        )
        emit("start_to_running_p50", pct(to_running, 50) * 1000, "ms")
        emit("start_to_running_p99", pct(to_running, 99) * 1000, "ms")

        # 2. footprint
        firmware = [
            p
            for p in (
                "/usr/share/seabios/bios-256k.bin",
                "/usr/share/qemu/linuxboot_dma.bin",
                "/usr/share/qemu/kvmvapic.bin",
            )
            if os.path.exists(p)
        ]
        vm_bytes = closure(["qemu-system-x86_64"]) + sum(os.path.getsize(p) for p in firmware)
        vm_bytes += assets.kernel.stat().st_size + assets.initramfs.stat().st_size
        docker_bins = [
            "dockerd",
            "containerd",
            "containerd-shim-runc-v2",
            "runc",
            "docker-init",
            "docker-proxy",
            "docker",
        ]
        docker_bytes = closure(docker_bins)
        if docker_bytes:
            emit("footprint_docker_engine_baseline", docker_bytes / 1e6, "MB", binaries=docker_bins)
        emit(
            "footprint_gvmkit",
            vm_bytes / 1e6,
            "MB",
            ratio=round(vm_bytes / docker_bytes, 3) if docker_bytes else None,
        )

        # 3. RSS of one idle VM
        rt.start(
            "idle",
            Workload.model_validate(
                {
                    "runtime": "vm",
                    "image": {"hash": "sha3-256:" + "0" * 64},
                    "resources": {"cpu": 1, "memoryMiB": 256},
                }
            ),
            image,
        )
        for _ in range(600):
            st = rt.inspect("idle")
            if st.state == "Running":
                break
            time.sleep(0.1)
        time.sleep(2)
        assert st.pid is not None
        vm_rss = rss_kib(st.pid)
        rt.remove("idle")
        container_rss = idle_container_rss_kib()
        if container_rss is not None:
            emit("idle_container_rss_baseline", container_rss / 1024, "MiB")
        emit(
            "idle_vm_host_rss",
            vm_rss / 1024,
            "MiB",
            memoryMiB=256,
            ratio=round(vm_rss / container_rss, 2) if container_rss else None,
        )

        # 4. image size
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(root, arcname=".")
        emit("docker_save_style_tar_size_baseline", len(buf.getvalue()) / 1e6, "MB")
        emit(
            "gvmi_size",
            image.stat().st_size / 1e6,
            "MB",
            ratio=round(image.stat().st_size / len(buf.getvalue()), 3),
        )

        # 5. apply → Running through a hub and an agent
        hub = through_the_hub(tmp / "pool", image, args.assets, args.runs)
        emit("apply_to_running_p50", pct(hub, 50) * 1000, "ms", runs=len(hub), accel="tcg")
        emit("apply_to_running_p99", pct(hub, 99) * 1000, "ms")
        emit(
            "added_p50",
            (pct(hub, 50) - pct(to_running, 50)) * 1000,
            "ms",
            baseline="start_to_running_p50",
        )
        emit(
            "added_p99",
            (pct(hub, 99) - pct(to_running, 99)) * 1000,
            "ms",
            baseline="start_to_running_p99",
        )


if __name__ == "__main__":
    main()
