"""The docker runtime against a real engine: images are busybox roots made with `docker import`.

One engine for the module (``docker_engine``: the one that answers, or a
private dockerd). Each test runs its own placement names; the fixture removes
every container this module's runtimes made.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtimes.base import Attachments, Capabilities, ImageRejected, NetworkAttachment, StartFailed
from runtimes.docker import DockerRuntime, image_id
from runtimes.docker.driver import LABEL_STATE
from specs.kinds import Workload
from tests.dockerd import Engine, import_busybox

HASH = "sha3-256:" + "cd" * 32


def workload(*argv: str, cpu: float = 0.5, memory: int = 64, **env: str) -> Workload:
    return Workload.model_validate(
        {
            "runtime": "docker",
            "image": {"hash": HASH},
            "command": list(argv[:1]),
            "args": list(argv[1:]),
            "env": {"GU_SESSION": "s1", "GU_NODE": "0xnode", **env},
            "resources": {"cpu": cpu, "memoryMiB": memory},
        }
    )


def wait_state(rt: DockerRuntime, name: str, states: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rt.inspect(name)
        if st.state in states:
            return st
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {states}; last {st}")


@pytest.fixture(scope="module")
def busybox(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(image id, its docker save tarball)."""
    ident = import_busybox(docker_engine, "gu-test/busybox:latest")
    out = tmp_path_factory.mktemp("img") / "busybox.tar"
    client = docker_engine.client()
    try:
        with open(out, "wb") as f:
            for chunk in client.images.get(ident).save(named=False):
                f.write(chunk)
    finally:
        client.close()
    return ident, out


@pytest.fixture
def runtime(docker_engine: Engine, tmp_path: Path) -> Iterator[DockerRuntime]:
    rt = DockerRuntime(tmp_path / "docker", docker_host=docker_engine.host, image_gc_delay=0.2)
    try:
        yield rt
    finally:
        for c in rt.client.containers.list(
            all=True, filters={"label": f"{LABEL_STATE}={rt.state_dir.resolve()}"}
        ):
            c.remove(force=True)


def test_the_image_id_is_read_from_the_saved_tarball(busybox: tuple[str, Path]) -> None:
    ident, tarball = busybox
    assert image_id(tarball) == ident


def test_the_image_id_is_read_from_an_oci_layout_too(
    busybox: tuple[str, Path], tmp_path: Path
) -> None:
    ident, tarball = busybox
    with tarfile.open(tarball) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
    config_digest = ident
    image_manifest = json.dumps(
        {"schemaVersion": 2, "config": {"digest": config_digest, "size": len(config)}, "layers": []}
    ).encode()
    import hashlib

    m_digest = "sha256:" + hashlib.sha256(image_manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": m_digest}]}).encode()
    oci = tmp_path / "oci.tar"
    with tarfile.open(oci, "w") as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
            (f"blobs/sha256/{m_digest.split(':')[1]}", image_manifest),
            (f"blobs/sha256/{ident.split(':')[1]}", config),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert image_id(oci) == ident


def test_a_file_that_is_no_docker_save_tarball_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "x.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("hello")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ImageRejected, match="not a `docker save` tarball"):
        image_id(bad)


def test_an_engine_that_does_not_answer_makes_the_runtime_unavailable(tmp_path: Path) -> None:
    rt = DockerRuntime(tmp_path / "d", docker_host="unix:///nonexistent/docker.sock")
    caps = rt.fingerprint()
    assert not caps.available
    assert "no Docker engine answers" in caps.reason and "--docker-host" in caps.reason


def test_the_fingerprint_reports_the_engine_version(runtime: DockerRuntime) -> None:
    caps = runtime.fingerprint()
    assert isinstance(caps, Capabilities) and caps.available
    assert caps.version == f"docker {runtime.client.version()['Version']}"
    assert caps.suspend_keeps_memory


def test_exit_code_and_both_streams_reach_the_status_and_logs(
    runtime: DockerRuntime, busybox: tuple[str, Path]
) -> None:
    _, tarball = busybox
    runtime.prepare(tarball, HASH)
    runtime.start("exit3", workload("sh", "-c", "echo hello; echo oops >&2; exit 3"), tarball)
    st = wait_state(runtime, "exit3", {"Succeeded", "Failed"})
    assert (st.state, st.exit_code, st.reason) == ("Failed", 3, "Error")
    assert st.finished_at is not None and st.started_at is not None
    assert runtime.logs("exit3") == b"hello\noops\n"
    # a tail shares its budget like the native runtime's: the end of each stream
    assert runtime.logs("exit3", tail_bytes=6) == b"lo\nps\n"
    assert runtime.logs("exit3", tail_bytes=0) == b""


def test_the_container_runs_the_verified_id_even_when_the_tag_is_repointed(
    runtime: DockerRuntime, busybox: tuple[str, Path], docker_engine: Engine
) -> None:
    ident, tarball = busybox
    runtime.prepare(tarball, HASH)
    other = import_busybox(docker_engine, "gu-test/impostor:latest", marker="impostor")
    assert other != ident
    client = docker_engine.client()
    try:
        client.images.get(other).tag(
            "gu-test/busybox", "latest"
        )  # the name now means another image
        runtime.start(
            "retag", workload("sh", "-c", "cat /etc/marker 2>/dev/null; echo ran"), tarball
        )
        wait_state(runtime, "retag", {"Succeeded"})
        container = client.containers.get("gu-retag")
        assert container.attrs["Image"] == ident
        assert runtime.logs("retag") == b"ran\n"
    finally:
        client.images.get(ident).tag("gu-test/busybox", "latest")
        client.close()


def test_limits_no_network_and_no_privileges(
    runtime: DockerRuntime, busybox: tuple[str, Path], docker_engine: Engine
) -> None:
    _, tarball = busybox
    runtime.prepare(tarball, HASH)
    runtime.start("limits", workload("sh", "-c", "ip link; sleep 30", cpu=0.5, memory=48), tarball)
    wait_state(runtime, "limits", {"Running"})
    attrs = runtime.client.containers.get("gu-limits").attrs
    host = attrs["HostConfig"]
    assert host["Memory"] == 48 << 20
    assert host["MemorySwap"] == 48 << 20  # no swap beyond the limit
    assert host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["Privileged"] is False
    assert host["Init"] is True  # docker-init as PID 1: SIGTERM reaches the workload
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == runtime.pids_limit
    assert host["RestartPolicy"]["Name"] in ("", "no")
    deadline = time.monotonic() + 10
    while b"lo:" not in runtime.logs("limits") and time.monotonic() < deadline:
        time.sleep(0.05)
    links = [line for line in runtime.logs("limits").decode().splitlines() if line[:1].isdigit()]
    assert len(links) == 1 and ": lo:" in links[0]
    assert runtime.stop("limits", grace=1).state == "Stopped"


def test_suspend_pauses_and_resume_unpauses_the_same_container(
    runtime: DockerRuntime, busybox: tuple[str, Path]
) -> None:
    _, tarball = busybox
    runtime.prepare(tarball, HASH)
    runtime.start("pause", workload("sh", "-c", "sleep 60"), tarball)
    wait_state(runtime, "pause", {"Running"})
    before = runtime.client.containers.get("gu-pause").id
    assert runtime.suspend("pause").state == "Suspended"
    assert runtime.client.containers.get("gu-pause").attrs["State"]["Paused"] is True
    assert runtime.resume("pause").state == "Running"
    after = runtime.client.containers.get("gu-pause")
    assert after.id == before and after.attrs["State"]["Paused"] is False
    # a suspended workload stops too (thawed first, then docker stop)
    runtime.suspend("pause")
    assert runtime.stop("pause", grace=1).state == "Stopped"


def test_a_memory_hog_is_oom_killed(runtime: DockerRuntime, busybox: tuple[str, Path]) -> None:
    _, tarball = busybox
    runtime.prepare(tarball, HASH)
    runtime.start(
        "hog",
        workload("sh", "-c", "dd if=/dev/zero of=/dev/null bs=128M count=4", memory=32),
        tarball,
    )
    st = wait_state(runtime, "hog", {"Succeeded", "Failed"})
    assert (st.state, st.reason) == ("Failed", "OOMKilled")


def test_a_new_runtime_adopts_the_running_container(
    runtime: DockerRuntime, busybox: tuple[str, Path], docker_engine: Engine
) -> None:
    _, tarball = busybox
    runtime.prepare(tarball, HASH)
    runtime.start("adopt-me", workload("sh", "-c", "sleep 60"), tarball)
    wait_state(runtime, "adopt-me", {"Running"})
    ident = runtime.client.containers.get("gu-adopt-me").id
    again = DockerRuntime(runtime.state_dir, docker_host=docker_engine.host)
    assert "adopt-me" in again.adopt()
    assert again.inspect("adopt-me").state == "Running"
    assert again.client.containers.get("gu-adopt-me").id == ident
    other = DockerRuntime(runtime.state_dir.parent / "someone-else", docker_host=docker_engine.host)
    assert other.adopt() == []  # only the containers of its own state dir


def test_remove_leaves_no_container_and_unused_loaded_images_go_after_the_delay(
    runtime: DockerRuntime, docker_engine: Engine, tmp_path: Path
) -> None:
    from docker.errors import ImageNotFound

    ident = import_busybox(docker_engine, "gu-test/gc:latest", marker="gc")
    client = docker_engine.client()
    tarball = tmp_path / "gc.tar"
    try:
        with open(tarball, "wb") as f:
            for chunk in client.images.get(ident).save(named=False):
                f.write(chunk)
        client.images.remove(ident, force=True)  # so the runtime loads it itself
        runtime.prepare(tarball, HASH)
        assert client.images.get(ident).id == ident
        runtime.start("gc", workload("sh", "-c", "echo once"), tarball)
        wait_state(runtime, "gc", {"Succeeded"})
        runtime.remove("gc")
        assert not runtime.client.containers.list(all=True, filters={"name": "gu-gc"})

        def gone() -> bool:
            try:
                client.images.get(ident)
            except ImageNotFound:
                return True
            return False

        deadline = time.monotonic() + 15
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone()
    finally:
        client.close()


def test_a_network_attachment_is_refused_until_vnets_reach_docker(
    runtime: DockerRuntime, busybox: tuple[str, Path]
) -> None:
    _, tarball = busybox
    net = NetworkAttachment("n", "10.0.0.2", "02:00:00:00:00:01", 1400, "230.0.0.1:5000")
    with pytest.raises(StartFailed, match="virtual network"):
        runtime.start("net", workload("true"), tarball, Attachments(network=net))
