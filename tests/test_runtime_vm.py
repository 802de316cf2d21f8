"""gVMkit: the .gvmi format (no VM), then real QEMU VMs under TCG (few: each boots in ~3 s).

One VM serves several assertions: the counter VM is suspended and resumed, checked
for network backends over QMP, adopted by a second driver instance, stopped and
removed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent.main import AgentConfigError, build_runtimes
from runtimes.base import ImageRejected, StartFailed
from runtimes.registry import RuntimeOptions
from runtimes.vm import VmRuntime
from runtimes.vm.driver import Qmp
from specs import gvmi
from specs.kinds import Workload
from tests.vmkit import busybox_root, need, qemu_pids, vm_assets

HASH = "sha3-256:" + "ab" * 32


def workload(*command: str, memory: int = 256, **env: str) -> Workload:
    return Workload.model_validate(
        {
            "runtime": "vm",
            "image": {"hash": HASH},
            "command": list(command),
            "env": env,
            "resources": {"cpu": 1, "memoryMiB": memory},
        }
    )


def wait_state(rt: VmRuntime, name: str, states: set[str], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = rt.inspect(name)
        if st.state in states:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached {states}; last {st}")


# ------------------------------------------------------------------ format


@pytest.fixture
def root(tmp_path: Path) -> Path:
    need("mksquashfs")
    return busybox_root(tmp_path / "root", "echo hi\n")


def test_a_folder_builds_to_the_same_bytes_twice_and_reads_back(root: Path, tmp_path: Path) -> None:
    meta = gvmi.Metadata(entrypoint=["/bin/sh", "/run.sh"], env={"A": "1"}, workingDir="/tmp")
    h1 = gvmi.build_from_dir(root, tmp_path / "a.gvmi", meta)
    os.utime(root / "run.sh", (1, 1))  # times and owners do not matter
    h2 = gvmi.build_from_dir(root, tmp_path / "b.gvmi", meta)
    assert h1 == h2
    assert (tmp_path / "a.gvmi").read_bytes() == (tmp_path / "b.gvmi").read_bytes()
    image = gvmi.read(tmp_path / "a.gvmi")
    assert image.metadata == meta
    assert image.squashfs_size % 4096 == 0
    assert gvmi.verify_squashfs(image)
    assert (tmp_path / "a.gvmi").read_bytes()[:4] == b"hsqs"
    assert image.metadata.argv([], []) == ["/bin/sh", "/run.sh"]
    assert image.metadata.argv(["/bin/echo"], ["x"]) == ["/bin/echo", "x"]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda b: b[:-10], "wrong magic"),
        (lambda b: b[:-64] + b"\x00" * 8 + b[-56:], "wrong magic"),
        (lambda b: b[:-100] + bytes([b[-100] ^ 1]) + b[-99:], "checksum"),
        (lambda b: b[:100], "too short"),
    ],
    ids=["truncated", "magic", "metadata-flipped", "tiny"],
)
def test_a_damaged_image_is_refused_with_what_is_wrong(
    root: Path, tmp_path: Path, damage: Any, says: str
) -> None:
    good = tmp_path / "good.gvmi"
    gvmi.build_from_dir(root, good, gvmi.Metadata(entrypoint=["/run.sh"]))
    bad = tmp_path / "bad.gvmi"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(gvmi.GvmiError, match=says):
        gvmi.read(bad)
    with pytest.raises(ImageRejected, match=says):
        VmRuntime(tmp_path / "state").prepare(bad, HASH)


def _tar(entries: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """A layer: (name, file bytes | None for a dir, symlink target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_archive(path: Path, layers: list[bytes], config: dict[str, Any]) -> Path:
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        names = []
        for i, layer in enumerate(layers):
            names.append(f"l{i}/layer.tar")
            add(names[-1], layer)
        add("config.json", json.dumps({"config": config}).encode())
        add("manifest.json", json.dumps([{"Config": "config.json", "Layers": names}]).encode())
    return path


def test_a_docker_archive_applies_layers_with_whiteouts_and_keeps_the_run_config(
    tmp_path: Path,
) -> None:
    need("mksquashfs")
    base = _tar(
        [
            ("etc", None, None),
            ("etc/gone", b"x", None),
            ("data", None, None),
            ("data/old", b"o", None),
            ("keep", b"k", None),
        ]
    )
    top = _tar(
        [
            ("etc/.wh.gone", b"", None),
            ("data/.wh..wh..opq", b"", None),
            ("data/new", b"n", None),
            ("link", None, "keep"),
        ]
    )
    archive = docker_archive(
        tmp_path / "img.tar",
        [base, top],
        {
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo"],
            "Env": ["PATH=/bin", "X=a=b"],
            "WorkingDir": "/data",
            "User": "1000:1000",
            "Labels": {"l": "v"},
        },
    )
    rootdir = tmp_path / "root"
    rootdir.mkdir()
    meta = gvmi.read_docker_archive(archive, rootdir.resolve())
    assert sorted(str(p.relative_to(rootdir)) for p in rootdir.rglob("*")) == [
        "data",
        "data/new",
        "etc",
        "keep",
        "link",
    ]
    assert os.readlink(rootdir / "link") == "keep"
    assert meta == gvmi.Metadata(
        entrypoint=["/bin/sh"],
        cmd=["-c", "echo"],
        env={"PATH": "/bin", "X": "a=b"},
        workingDir="/data",
        user="1000:1000",
        labels={"l": "v"},
    )
    h1 = gvmi.build_from_docker_archive(archive, tmp_path / "a.gvmi")
    h2 = gvmi.build_from_docker_archive(archive, tmp_path / "b.gvmi")
    assert h1 == h2 and gvmi.read(tmp_path / "a.gvmi").metadata == meta


@pytest.mark.parametrize(
    "layer",
    [
        [("../evil", b"x", None)],
        [("out", None, "/"), ("out/etc/evil", b"x", None)],
    ],
    ids=["dotdot", "through-a-link"],
)
def test_a_layer_escaping_the_root_is_refused_and_nothing_is_written(
    tmp_path: Path, layer: list[tuple[str, bytes | None, str | None]]
) -> None:
    archive = docker_archive(tmp_path / "img.tar", [_tar(layer)], {})
    out = tmp_path / "x.gvmi"
    with pytest.raises(gvmi.GvmiError, match="root"):
        gvmi.build_from_docker_archive(archive, out)
    assert not out.exists() and not (tmp_path / "evil").exists()


# --------------------------------------------------------------------- VMs


@pytest.mark.parametrize(
    ("user", "out"),
    [
        ("1000:1000", "1000 1000"),
        ("app", "1234 777"),
        ("app:staff", "1234 50"),
        ("1234", "1234 777"),
        ("42", "42 0"),
        ("nosuch", "is not in its /etc/passwd"),
        ("app:nogroup", "is not in its /etc/group"),
    ],
)
def test_the_image_user_is_resolved_in_the_guest_root_as_docker_does(
    tmp_path: Path, user: str, out: str
) -> None:
    # the guest's own run.sh and busybox, in a chroot on the host (no VM needed)
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    from runtimes.vm.driver import run_script

    r = tmp_path / "r"
    for d in (".gu", "etc", "tmp", "dev"):
        (r / d).mkdir(parents=True)
    bb = shutil.which("busybox")
    assert bb, "busybox-static is installed by make setup"
    shutil.copy(bb, r / ".gu" / "busybox")
    (r / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1234:777::/:/bin/sh\n")
    (r / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    argv = ["/.gu/busybox", "sh", "-c", "echo $(/.gu/busybox id -u) $(/.gu/busybox id -g)"]
    script = run_script(argv, {}, "/tmp", user, "h").replace("/mnt/root", str(r))
    proc = subprocess.run(
        [bb, "sh", "-c", script + "gu_run"], capture_output=True, text=True, timeout=10
    )
    said = proc.stdout + proc.stderr
    assert out in said, said
    assert (proc.returncode == 0) == ("not in" not in out)


@pytest.fixture(scope="module")
def assets() -> Path:
    return vm_assets()


@pytest.fixture
def rt(assets: Path, tmp_path: Path) -> Any:
    runtime = VmRuntime(tmp_path / "vm", assets_dir=assets, accel="tcg")
    yield runtime
    for name in runtime.adopt():
        runtime.remove(name)


def image(tmp_path: Path, script: str, name: str = "img", **meta: Any) -> Path:
    root = busybox_root(tmp_path / name, script)
    out = tmp_path / f"{name}.gvmi"
    gvmi.build_from_dir(root, out, gvmi.Metadata(entrypoint=["/bin/sh", "/run.sh"], **meta))
    return out


def test_a_vm_exits_with_its_code_and_its_two_streams(rt: VmRuntime, tmp_path: Path) -> None:
    img = image(
        tmp_path,
        'echo hello-from-vm; echo oops >&2; echo "$GREETING at $(pwd) as $(/bin/busybox id -u)"; '
        "/bin/busybox ip -o link | /bin/busybox cut -d: -f2; exit 7\n",
        workingDir="/tmp",
        user="1000:1000",
    )
    caps = rt.fingerprint()
    assert caps.available and caps.accel == "tcg" and caps.version, caps
    rt.start("exit7", workload(GREETING="hi"), img)
    st = wait_state(rt, "exit7", {"Succeeded", "Failed"})
    assert (st.state, st.exit_code, st.reason) == ("Failed", 7, "Error")
    out = rt.logs("exit7")
    # the image's env (the workload's over it), workingDir and user apply in the guest
    assert out.startswith(b"hello-from-vm\nhi at /tmp as 1000\n")
    assert out.endswith(b"oops\n")
    # no network device at all: the guest has only lo
    assert [x.strip() for x in out.split(b"\n")[2:-2]] == [b"lo"]
    rt.remove("exit7")
    assert not (tmp_path / "vm" / "exit7").exists()


def test_suspend_resume_network_adopt_stop_and_remove_on_one_vm(
    rt: VmRuntime, tmp_path: Path, assets: Path
) -> None:
    img = image(
        tmp_path,
        "trap 'echo got-term; exit 0' TERM\n"
        "i=0; while :; do i=$((i+1)); echo $i; /bin/busybox usleep 100000; done\n",
    )
    before = qemu_pids()
    rt.start("counter", workload(), img)
    st = wait_state(rt, "counter", {"Running"})
    pid = st.pid
    assert pid is not None and pid not in before

    def count() -> int:
        lines = rt.logs("counter").split()
        return int(lines[-1]) if lines else 0

    deadline = time.monotonic() + 30
    while count() < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count() >= 5

    qmp = Qmp(tmp_path / "vm" / "counter" / "qmp.sock")
    assert qmp.cmd("human-monitor-command", **{"command-line": "info network"}).strip() == ""
    assert not [
        d
        for d in qmp.cmd("query-pci")[0]["devices"]
        if d["class_info"].get("desc") == "Ethernet controller"
    ]

    st = rt.suspend("counter")
    assert st.state == "Suspended" and qmp.cmd("query-status")["status"] == "paused"
    time.sleep(0.3)
    frozen = count()
    time.sleep(1.0)
    assert count() == frozen  # not advancing while paused

    st = rt.resume("counter")
    assert st.state == "Running" and st.pid == pid
    deadline = time.monotonic() + 20
    while count() <= frozen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert frozen < count() < frozen + 50  # it went on from where it stopped

    # a new agent process: the same VM, adopted, not started again
    again = VmRuntime(tmp_path / "vm", assets_dir=assets, accel="tcg")
    assert again.adopt() == ["counter"]
    st = again.inspect("counter")
    assert st.state == "Running" and st.pid == pid

    st = again.stop("counter", grace=5)
    assert st.state == "Stopped", st
    # a graceful stop reached the entrypoint inside the guest as SIGTERM
    assert again.logs("counter").endswith(b"got-term\n") and st.exit_code == 0
    assert pid not in qemu_pids()
    again.remove("counter")
    assert not (tmp_path / "vm" / "counter").exists()
    assert qemu_pids() <= before


def test_a_guest_that_panics_or_hangs_is_failed_with_a_reason_that_says_which(
    assets: Path, tmp_path: Path
) -> None:
    """Real faults, both VMs at once: the kernel panicked through sysrq (QEMU exits:
    panic=-1, -no-reboot), and every guest process but init and the workload stopped
    (the heartbeat with them), with a short heartbeat deadline."""
    rt = VmRuntime(tmp_path / "vm", assets_dir=assets, accel="tcg", heartbeat_deadline=5)
    before = qemu_pids()
    panic = image(tmp_path, "echo c > /proc/sysrq-trigger; /bin/busybox sleep 60\n", "panic")
    hang = image(
        tmp_path,
        "echo frozen; /bin/busybox sleep 1; /bin/busybox kill -STOP -1\n"
        "while :; do /bin/busybox sleep 1; done\n",
        "hang",
    )
    try:
        rt.start("panic", workload(), panic)
        rt.start("hang", workload(), hang)
        st = wait_state(rt, "panic", {"Succeeded", "Failed"})
        assert (st.state, st.reason) == ("Failed", "GuestCrashed"), st
        assert "Kernel panic" in st.message, st.message  # the console's tail says why
        st = wait_state(rt, "hang", {"Succeeded", "Failed"})
        assert (st.state, st.reason) == ("Failed", "GuestHung"), st
        assert "no heartbeat from the guest for 5 s" in st.message
        assert rt.logs("hang") == b"frozen\n"  # it had run, then went silent
        assert rt.inspect("hang").reason == "GuestHung"  # the verdict stays
        assert qemu_pids() <= before  # the hung VM was killed
    finally:
        for name in rt.adopt():
            rt.remove(name)


def test_kvm_asked_for_where_it_does_not_boot_is_refused_clearly(
    assets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the agent sees it at start: ``--vm-accel kvm`` where a KVM guest does not boot
    (here: /dev/kvm exists, the guest hangs) is not offered, and says why; asked for by
    name (``--runtimes vm``) it stops the agent with that reason; ``auto`` falls back to
    TCG and says which it chose."""
    caplog.set_level(logging.INFO)
    kvm = RuntimeOptions(vm_accel="kvm", vm_assets=assets)
    offered = build_runtimes(tmp_path / "a", None, kvm)
    if "vm" in offered.drivers:  # a host where KVM boots
        assert offered.capabilities["vm"].accel == "kvm"
        return
    assert "native" in offered.drivers
    said = [
        m
        for m in (r.getMessage() for r in caplog.records)
        if "runtime_unavailable" in m and "runtime=vm" in m
    ]
    assert len(said) == 1, said
    assert "a KVM guest does not boot here" in said[0] and "--vm-accel tcg" in said[0]
    with pytest.raises(AgentConfigError, match="a KVM guest does not boot here"):
        build_runtimes(tmp_path / "b", ["native", "vm"], kvm)
    caplog.clear()
    auto = build_runtimes(tmp_path / "c", ["vm"], RuntimeOptions(vm_accel="auto", vm_assets=assets))
    caps = auto.capabilities["vm"]
    assert caps.available and caps.accel == "tcg"
    assert caps.details["accelNote"].startswith("kvm probe failed")
    chose = [r.getMessage() for r in caplog.records if "vm_accel" in r.getMessage()]
    assert chose and "accel=tcg" in chose[-1] and "kvm probe failed" in chose[-1], chose


def test_missing_assets_say_what_to_run(tmp_path: Path) -> None:
    need("qemu-system-x86_64")
    caps = VmRuntime(tmp_path / "vm", assets_dir=tmp_path / "none").fingerprint()
    assert not caps.available and "gu vmkit assets" in caps.reason
    with pytest.raises(StartFailed, match="gu vmkit assets"):
        VmRuntime(tmp_path / "vm", assets_dir=tmp_path / "none").start(
            "x", workload(), tmp_path / "nothing.gvmi"
        )
    assert shutil.which("qemu-system-x86_64")


def test_the_same_folder_through_docker_runs_the_same_in_a_vm(
    rt: VmRuntime, tmp_path: Path, docker_engine: Any
) -> None:
    """A folder built with --from-dir, and the same folder imported into Docker, saved
    and built with --from-docker-archive: the same run config and the same output."""
    root = busybox_root(tmp_path / "root", 'echo "same $(cat /marker) $*"\n')
    (root / "marker").write_text("m1")
    from_dir = tmp_path / "dir.gvmi"
    gvmi.build_from_dir(root, from_dir, gvmi.Metadata(entrypoint=["/bin/sh", "/run.sh"], cmd=["x"]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=".")
    client = docker_engine.client()
    archive = tmp_path / "saved.tar"
    try:
        client.api.import_image_from_data(
            buf.getvalue(),
            repository="gu-test/vm-same",
            tag="latest",
            changes=['ENTRYPOINT ["/bin/sh", "/run.sh"]', 'CMD ["x"]'],
        )
        image = client.images.get("gu-test/vm-same:latest")
        with open(archive, "wb") as f:
            for chunk in image.save(named=False):
                f.write(chunk)
        client.images.remove(image.id, force=True)
    finally:
        client.close()
    from_docker = tmp_path / "docker.gvmi"
    gvmi.build_from_docker_archive(archive, from_docker)
    meta = gvmi.read(from_docker).metadata
    assert meta.argv([], []) == gvmi.read(from_dir).metadata.argv([], []) == [
        "/bin/sh", "/run.sh", "x"
    ]  # fmt: skip
    outputs = []
    for name, img in (("from-dir", from_dir), ("from-docker", from_docker)):
        rt.start(name, workload(), img)
        st = wait_state(rt, name, {"Succeeded", "Failed"})
        assert st.state == "Succeeded", st
        outputs.append(rt.logs(name))
        rt.remove(name)
    assert outputs == [b"same m1 x\n", b"same m1 x\n"]
