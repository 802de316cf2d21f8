"""A real Docker engine for the tests: the one that answers, or one we start (and stop).

``docker_engine()`` (a session fixture in ``conftest.py``) returns the engine's
address. If ``DOCKER_HOST`` or the usual socket answers, that engine is used.
Otherwise, as root with ``dockerd`` installed (``.ci/system.sh`` installs
``docker.io``), a private dockerd is started with the vfs storage driver on
its own socket, data root and exec root under one temp folder, with no bridge
and no iptables rules (workloads run with ``--network none``): it never meets
a system engine, and the fixture stops it, and only it, at the end.

Test images are built locally (no registry is reachable): a folder with a
static busybox and its applet links, ``docker import``-ed as ``gu-test/busybox``.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "sleep", "cat", "ls", "ip", "head", "dd", "true", "false", "yes", "env")


@dataclass
class Engine:
    """A Docker engine the tests may use; ``started`` when the tests own it."""

    host: str
    started: subprocess.Popen[bytes] | None = None
    root: Path | None = None

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, timeout=120)

    def stop(self) -> None:
        """Stop the dockerd we started (nothing otherwise)."""
        if self.started is None:
            return
        with_containers = self.client()
        try:
            for c in with_containers.containers.list(all=True):
                c.remove(force=True)
        except Exception:
            pass
        finally:
            with_containers.close()
        self.started.send_signal(signal.SIGTERM)
        try:
            self.started.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait(timeout=10)
        if self.root is not None:
            # vfs layers can be large; the engine is gone, so is everything it kept
            subprocess.run(["umount", "-R", str(self.root)], capture_output=True, check=False)
            shutil.rmtree(self.root, ignore_errors=True)


def _answers(host: str) -> bool:
    try:
        import docker

        client = docker.DockerClient(base_url=host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def find_or_start() -> Engine | None:
    """An engine to test against, or None when there is none and none can be started."""
    for host in filter(None, (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock")):
        if _answers(host):
            return Engine(host)
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
    )
    if dockerd is None or os.geteuid() != 0:
        return None
    root = Path(tempfile.mkdtemp(prefix="gu-dockerd-"))
    sock = root / "docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the engine
    proc = subprocess.Popen(
        [
            dockerd,
            "--host",
            f"unix://{sock}",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "--storage-driver",
            "vfs",
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    host = f"unix://{sock}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if sock.exists() and _answers(host):
            return Engine(host, proc, root)
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=10)
    tail = (root / "dockerd.log").read_bytes()[-2000:].decode(errors="replace")
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"dockerd did not come up in 60 s: {tail}")


def busybox_rootfs_tar(marker: str = "") -> bytes:
    """A root file system with a static busybox and its applets, as an uncompressed tar
    (``marker`` adds ``/etc/marker`` with that text, which makes it another image)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        if marker:
            text = marker.encode()
            info = tarfile.TarInfo("etc/marker")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def import_busybox(engine: Engine, tag: str, *, marker: str = "") -> str:
    """``docker import`` the busybox root as ``tag`` (a ``marker`` file makes another image)."""
    rootfs = busybox_rootfs_tar(marker)
    repo, _, version = tag.partition(":")
    client = engine.client()
    try:
        client.api.import_image_from_data(
            rootfs,
            repository=repo,
            tag=version or "latest",
            changes=['CMD ["/bin/sh"]', "ENV PATH=/bin"],
        )
        return str(client.images.get(tag).id)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.dockerd import TAG --host URL``: make the busybox test image (the demo)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.dockerd")
    parser.add_argument("command", choices=["import"])
    parser.add_argument("tag")
    parser.add_argument("--host", required=True)
    args = parser.parse_args(argv)
    print(import_busybox(Engine(args.host), args.tag))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
