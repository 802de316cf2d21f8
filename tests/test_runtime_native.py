"""The native runtime against real processes: images are tiny ``/bin/sh`` programs.

Every wait polls against a deadline, and every test's workloads are removed
(killed) by the ``runtime`` fixture's finalizer, whatever the test did.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from runtimes import (
    ImageRejected,
    NativeRuntime,
    Runtime,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
)
from runtimes.native.shim import SHIM_BOOT
from specs.kinds import Workload

REPO = Path(__file__).resolve().parent.parent
HASH = "sha3-256:" + "ab" * 32

COUNTER = """#!/bin/sh
i=0
while true; do i=$((i+1)); echo "$i"; sleep 0.02; done
"""


# ----------------------------------------------------------------- helpers


def make_image(
    path: Path,
    files: dict[str, str],
    extra: Iterable[tarfile.TarInfo] = (),
    plain: dict[str, str] | None = None,
) -> Path:
    """A .tar.gz of executable ``files`` and non-executable ``plain`` files (name → content),
    plus raw ``extra`` members to test refusals."""
    with tarfile.open(path, "w:gz") as tar:
        for mode, group in ((0o755, files), (0o644, plain or {})):
            for name, content in group.items():
                data = content.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = mode
                tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def workload(
    command: list[str],
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    memory_mib: int = 256,
    cpu: float = 1.0,
) -> Workload:
    return Workload(
        runtime="native",
        image={"hash": HASH},
        command=command,
        args=args or [],
        env=env or {},
        resources={"cpu": cpu, "memoryMiB": memory_mib},
    )


def wait_for(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_state(
    rt: NativeRuntime, name: str, states: set[str], timeout: float = 5.0
) -> WorkloadStatus:
    box: list[WorkloadStatus] = []

    def reached() -> bool:
        box[:] = [rt.inspect(name)]
        return box[0].state in states

    wait_for(reached, timeout, f"{name} to reach {states}")
    return box[0]


def live_group(pgid: int) -> list[psutil.Process]:
    """Processes of the group that still run (a zombie holds nothing; reaping orphans is init's job)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def proc_record(rt: NativeRuntime, name: str) -> dict:
    return json.loads((rt.state_dir / name / "proc.json").read_text())


@pytest.fixture
def image(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def build(
        files: dict[str, str],
        extra: Iterable[tarfile.TarInfo] = (),
        plain: dict[str, str] | None = None,
    ) -> Path:
        return make_image(tmp_path / f"image{next(counter)}.tar.gz", files, extra, plain)

    return build


def _cleanup(state_dir: Path) -> None:
    """Kill and remove whatever a test left, even if the runtime under test misbehaves."""
    if not state_dir.exists():
        return
    for rec_file in state_dir.glob("*/proc.json"):
        try:
            pgid = json.loads(rec_file.read_text())["pgid"]
        except (OSError, ValueError, KeyError):
            continue
        rt = NativeRuntime(state_dir)
        try:
            rt.remove(rec_file.parent.name)
        finally:
            for proc in live_group(pgid):
                proc.kill()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    _cleanup(path)


@pytest.fixture
def runtime(state_dir: Path) -> NativeRuntime:
    return NativeRuntime(state_dir)


# ----------------------------------------------------------------- running


def test_native_runtime_is_a_runtime(runtime: NativeRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.name == "native"
    caps = runtime.fingerprint()
    assert caps.available
    assert caps.suspend_keeps_memory
    assert caps.details["cgroups"] == (runtime.cgroup_version or "none")


def test_exit_zero_succeeds_and_output_reaches_the_logs(runtime, image) -> None:
    img = image({"run.sh": "#!/bin/sh\necho hello out\necho hello err >&2\n"})
    runtime.prepare(img, HASH)
    runtime.start("ok", workload(["./run.sh"]), img)
    status = wait_state(runtime, "ok", {"Succeeded", "Failed"})
    assert (status.state, status.exit_code, status.reason) == ("Succeeded", 0, "Completed")
    assert status.started_at and status.finished_at and status.finished_at >= status.started_at
    assert runtime.logs("ok") == b"hello out\nhello err\n"
    assert runtime.logs("ok", tail_bytes=8) == b"out\nerr\n"


def test_nonzero_exit_fails_with_its_exit_code(runtime, image) -> None:
    img = image({"run.sh": "#!/bin/sh\nexit 3\n"})
    runtime.start("three", workload(["./run.sh"]), img)
    status = wait_state(runtime, "three", {"Succeeded", "Failed"})
    assert (status.state, status.exit_code, status.reason) == ("Failed", 3, "Error")


def test_env_and_args_reach_the_program_in_its_folder(runtime, image) -> None:
    img = image({"run.sh": '#!/bin/sh\necho "$1|$2|$GREETING|$HOME|$(pwd)|$LANG"\n'})
    runtime.start(
        "env", workload(["./run.sh"], args=["a b", "c"], env={"GREETING": "hi there"}), img
    )
    wait_state(runtime, "env", {"Succeeded"})
    root = str((runtime.state_dir / "env" / "root").resolve())
    assert runtime.logs("env").decode() == f"a b|c|hi there|{root}|{root}|C.UTF-8\n"


def test_relative_command_resolves_inside_the_image(runtime, image) -> None:
    img = image({"bin/prog": "#!/bin/sh\necho from bin\n"})
    runtime.start("rel", workload(["bin/prog"]), img)
    assert wait_state(runtime, "rel", {"Succeeded", "Failed"}).state == "Succeeded"
    assert runtime.logs("rel") == b"from bin\n"


def test_bare_command_is_looked_up_on_path(runtime, image) -> None:
    img = image({"unused": ""})
    runtime.start("sh", workload(["sh", "-c", "echo $0"], args=[]), img)
    wait_state(runtime, "sh", {"Succeeded"})
    assert runtime.logs("sh") == b"sh\n"


@pytest.mark.parametrize(
    ("member", "why"),
    [("../evil", "'..'"), ("/tmp/gu-evil-absolute", "absolute path")],
)
def test_tarball_escaping_its_folder_is_refused(runtime, image, tmp_path, member, why) -> None:
    info = tarfile.TarInfo(member)
    info.size = 1
    img = image({"run.sh": "#!/bin/sh\n"}, extra=[info])
    with pytest.raises(ImageRejected, match=why):
        runtime.prepare(img, HASH)
    with pytest.raises(ImageRejected, match=why):
        runtime.start("evil", workload(["./run.sh"]), img)
    assert not (runtime.state_dir / "evil").exists()
    assert not (runtime.state_dir / "evil.tar.gz").exists()
    assert not Path("/tmp/gu-evil-absolute").exists()
    with pytest.raises(WorkloadNotFound):
        runtime.inspect("evil")


def test_device_files_and_escaping_links_are_refused(runtime, image) -> None:
    dev = tarfile.TarInfo("null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    for extra in ([dev], [link]):
        img = image({"run.sh": "#!/bin/sh\n"}, extra=extra)
        with pytest.raises(ImageRejected):
            runtime.start("dev", workload(["./run.sh"]), img)
        assert not (runtime.state_dir / "dev").exists()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([], "command is empty"),
        (["./missing.sh"], "not found in the image"),
        (["no-such-program-gu"], "not found on PATH"),
        (["./data.txt"], "not executable"),
        (["../../escape.sh"], "outside the image"),
    ],
)
def test_bad_command_fails_to_start_with_a_clear_message(runtime, image, command, message):
    img = image({"run.sh": "#!/bin/sh\n"}, plain={"data.txt": "just data\n"})
    with pytest.raises(StartFailed, match=message):
        runtime.start("bad", workload(command), img)
    assert not (runtime.state_dir / "bad").exists()


def test_starting_a_name_twice_is_refused_until_removed(runtime, image) -> None:
    img = image({"run.sh": "#!/bin/sh\necho once\n"})
    runtime.start("twice", workload(["./run.sh"]), img)
    with pytest.raises(WorkloadExists):
        runtime.start("twice", workload(["./run.sh"]), img)
    runtime.remove("twice")
    with pytest.raises(WorkloadNotFound):
        runtime.inspect("twice")
    runtime.remove("twice")  # idempotent
    runtime.start("twice", workload(["./run.sh"]), img)
    assert wait_state(runtime, "twice", {"Succeeded"}).exit_code == 0


# ----------------------------------------------------------------- stopping


def test_stop_ends_the_whole_process_group(runtime, image) -> None:
    img = image({"run.sh": "#!/bin/sh\nsleep 300 &\nwhile true; do sleep 0.1; done\n"})
    status = runtime.start("loop", workload(["./run.sh"]), img)
    assert status.state == "Running"
    pgid = status.pid
    assert pgid is not None
    wait_for(lambda: len(live_group(pgid)) >= 3, what="shim, sh and the sleeps to run")
    t0 = time.monotonic()
    final = runtime.stop("loop", grace=5.0)
    assert time.monotonic() - t0 < 4.0  # SIGTERM was enough
    assert (final.state, final.reason) == ("Stopped", "Stopped")
    assert final.exit_code == 128 + signal.SIGTERM
    assert live_group(pgid) == []
    assert runtime.inspect("loop").state == "Stopped"


def test_stop_uses_sigkill_after_grace_when_sigterm_is_ignored(runtime, image) -> None:
    img = image({"run.sh": "#!/bin/sh\ntrap '' TERM\necho ready\nwhile true; do sleep 0.1; done\n"})
    status = runtime.start("stubborn", workload(["./run.sh"]), img)
    wait_for(lambda: runtime.logs("stubborn") == b"ready\n", what="the trap to be set")
    t0 = time.monotonic()
    final = runtime.stop("stubborn", grace=0.6)
    elapsed = time.monotonic() - t0
    assert 0.6 <= elapsed < 5.0
    assert final.state == "Stopped"
    assert final.exit_code == 128 + signal.SIGKILL
    assert "SIGKILL" in final.message
    assert status.pid is not None and live_group(status.pid) == []


def test_stop_of_a_finished_workload_keeps_its_result(runtime, image) -> None:
    img = image({"run.sh": "#!/bin/sh\nexit 5\n"})
    runtime.start("done", workload(["./run.sh"]), img)
    wait_state(runtime, "done", {"Failed"})
    final = runtime.stop("done")
    assert (final.state, final.exit_code) == ("Failed", 5)


# ----------------------------------------------------------------- suspend


@pytest.mark.parametrize("cgroups", ["auto", "v2", "none"])
def test_suspend_freezes_and_resume_continues(state_dir, image, cgroups) -> None:
    """auto: the v1 freezer here; v2: ``cgroup.freeze``; none: SIGSTOP of the group."""
    runtime = NativeRuntime(state_dir, cgroups=cgroups)
    if cgroups == "v2" and runtime.cgroup_version != "v2":
        pytest.skip("no writable cgroup v2 hierarchy on this machine")
    runtime.start("count", workload(["./run.sh"]), image({"run.sh": COUNTER}))
    wait_for(lambda: len(runtime.logs("count")) > 10, what="the counter to count")

    status = runtime.suspend("count")
    assert (status.state, status.reason) == ("Suspended", "Suspended")
    assert runtime.inspect("count").state == "Suspended"
    frozen_at = len(runtime.logs("count"))
    time.sleep(0.5)
    assert len(runtime.logs("count")) == frozen_at, "a suspended workload made progress"

    assert runtime.resume("count").state == "Running"
    wait_for(lambda: len(runtime.logs("count")) > frozen_at + 10, what="progress after resume")
    assert runtime.stop("count", grace=2.0).state == "Stopped"


def test_stop_works_on_a_suspended_workload(runtime, image) -> None:
    status = runtime.start("frozen", workload(["./run.sh"]), image({"run.sh": COUNTER}))
    assert runtime.suspend("frozen").state == "Suspended"
    t0 = time.monotonic()
    final = runtime.stop("frozen", grace=3.0)
    assert time.monotonic() - t0 < 2.5  # thawed, then SIGTERM did it
    assert (final.state, final.exit_code) == ("Stopped", 128 + signal.SIGTERM)
    assert status.pid is not None and live_group(status.pid) == []


# ----------------------------------------------------------------- adopt

_AGENT = """
import sys, time
from pathlib import Path
from runtimes.native import NativeRuntime
from specs.kinds import Workload
rt = NativeRuntime(Path(sys.argv[1]))
status = rt.start(sys.argv[2], Workload.model_validate_json(sys.argv[3]), Path(sys.argv[4]))
print(status.pid, flush=True)
time.sleep(120)
"""


def start_in_agent_then_kill_9(state_dir: Path, name: str, wl: Workload, img: Path) -> int:
    """Start a workload from a separate agent process, then ``kill -9`` that agent."""
    agent = subprocess.Popen(
        [sys.executable, "-c", _AGENT, str(state_dir), name, wl.model_dump_json(), str(img)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([agent.stdout], [], [], 15)
        assert ready, "the agent process did not start the workload in time"
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
    finally:
        agent.kill()
        agent.wait(timeout=5)
    return pid


def test_new_instance_adopts_a_running_workload_with_the_same_pid(state_dir, image) -> None:
    img = image({"run.sh": COUNTER})
    pid = start_in_agent_then_kill_9(state_dir, "survivor", workload(["./run.sh"]), img)
    assert psutil.pid_exists(pid), "the workload died with its agent"

    fresh = NativeRuntime(state_dir)
    assert fresh.adopt() == ["survivor"]
    status = fresh.inspect("survivor")
    assert (status.state, status.pid) == ("Running", pid)
    before = len(fresh.logs("survivor"))
    wait_for(lambda: len(fresh.logs("survivor")) > before, what="output after adoption")

    final = fresh.stop("survivor", grace=3.0)
    assert (final.state, final.exit_code) == ("Stopped", 128 + signal.SIGTERM)
    assert live_group(pid) == []


def test_adopt_in_the_same_process_keeps_the_pid(runtime, image) -> None:
    status = runtime.start("kept", workload(["./run.sh"]), image({"run.sh": COUNTER}))
    fresh = NativeRuntime(runtime.state_dir)
    assert fresh.adopt() == ["kept"]
    assert fresh.inspect("kept").pid == status.pid
    assert fresh.stop("kept", grace=2.0).state == "Stopped"
    assert status.pid is not None and live_group(status.pid) == []


def test_exit_code_is_recorded_while_no_agent_watches(state_dir, image) -> None:
    img = image({"run.sh": "#!/bin/sh\nsleep 0.5\necho bye\nexit 7\n"})
    start_in_agent_then_kill_9(state_dir, "lonely", workload(["./run.sh"]), img)

    fresh = NativeRuntime(state_dir)
    assert fresh.adopt() == ["lonely"]
    status = wait_state(fresh, "lonely", {"Succeeded", "Failed"})
    assert (status.state, status.exit_code, status.reason) == ("Failed", 7, "Error")
    assert fresh.logs("lonely") == b"bye\n"


def test_killed_workload_without_exit_code_is_reported_killed(runtime, image) -> None:
    status = runtime.start("victim", workload(["./run.sh"]), image({"run.sh": COUNTER}))
    assert status.pid is not None
    for proc in live_group(status.pid):
        proc.kill()  # shim and program at once: nobody can record an exit code
    final = wait_state(runtime, "victim", {"Failed"})
    assert (final.exit_code, final.reason) == (None, "Killed")


def test_adopt_skips_folders_without_a_valid_record(runtime, image) -> None:
    (runtime.state_dir / "debris").mkdir(parents=True)
    (runtime.state_dir / "broken").mkdir()
    (runtime.state_dir / "broken" / "proc.json").write_text("{not json")
    runtime.start("real", workload(["./run.sh"]), image({"run.sh": "#!/bin/sh\n"}))
    assert NativeRuntime(runtime.state_dir).adopt() == ["real"]


# ----------------------------------------------------------------- limits


def memory_cgroup(runtime: NativeRuntime, name: str) -> Path:
    cgroup = proc_record(runtime, name)["cgroup"]
    if not cgroup:
        pytest.skip("no writable cgroup on this machine: workloads run without limits")
    if cgroup["version"] == "v1":
        if "memory" not in cgroup["dirs"]:
            pytest.skip("the cgroup v1 memory hierarchy is not writable here")
        return Path(cgroup["dirs"]["memory"])
    path = Path(cgroup["dirs"]["unified"])
    if not (path / "memory.max").exists():
        pytest.skip("the cgroup v2 memory controller is not delegated to gu here")
    return path


def test_memory_and_cpu_limits_apply_when_a_cgroup_is_writable(runtime, image) -> None:
    status = runtime.start(
        "limited", workload(["./run.sh"], memory_mib=64, cpu=0.5), image({"run.sh": COUNTER})
    )
    mem = memory_cgroup(runtime, "limited")
    limit_file = mem / (
        "memory.limit_in_bytes" if mem.joinpath("memory.limit_in_bytes").exists() else "memory.max"
    )
    assert int(limit_file.read_text()) == 64 * 1024 * 1024
    child = json.loads((runtime.state_dir / "limited" / "child.json").read_text())["pid"]
    procs = {int(p) for p in (mem / "cgroup.procs").read_text().split()}
    assert child in procs
    assert status.pid not in procs  # the shim left: its memory is not the workload's
    cg = proc_record(runtime, "limited")["cgroup"]
    if cg["version"] == "v1" and "cpu" in cg["dirs"]:
        assert int(Path(cg["dirs"]["cpu"], "cpu.cfs_quota_us").read_text()) == 50_000
    runtime.remove("limited")
    assert not mem.exists()


def test_a_workload_over_its_memory_limit_is_oom_killed(runtime, image) -> None:
    img = image({"hog.py": "import time\nb = b'x' * (256 << 20)\ntime.sleep(5)\n"})
    runtime.start("hog", workload([sys.executable, "-I", "hog.py"], memory_mib=64), img)
    memory_cgroup(runtime, "hog")
    status = wait_state(runtime, "hog", {"Succeeded", "Failed"}, timeout=10)
    assert (status.state, status.exit_code, status.reason) == ("Failed", 137, "OOMKilled")


def test_a_shim_without_its_record_runs_nothing(tmp_path) -> None:
    """An agent that dies between spawning the shim and recording it leaves no program."""
    wd = tmp_path / "orphan"
    wd.mkdir()
    marker = tmp_path / "ran"
    (wd / "launch.json").write_text(
        json.dumps(
            {
                "argv": ["sh", "-c", f"touch {marker}"],
                "executable": "/bin/sh",
                "env": {"PATH": "/usr/bin:/bin"},
                "cwd": str(wd),
            }
        )
    )
    (wd / "proc.json").write_text(json.dumps({"pid": 1}))  # somebody else's record
    boot = SHIM_BOOT
    done = subprocess.run(
        [sys.executable, "-I", "-c", boot, str(REPO / "runtimes"), str(wd)],
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert b"shim.not_recorded" in done.stderr
    assert not marker.exists()
    assert not (wd / "exit_code").exists()
