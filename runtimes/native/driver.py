"""The native driver: ``NativeRuntime``, the verbs of ``runtimes.base.Runtime``.

``start`` unpacks the image (``runtimes.native.tarball``), resolves the
command, creates the workload's cgroups (``runtimes.cgroups``), writes
``launch.json`` and starts the shim (``runtimes.native.shim``), then records
it in ``proc.json``. Every other verb reads the records and ``/proc`` again
(``runtimes.native.records``, ``runtimes.procs``), so a new agent process
(``adopt()``) answers exactly as the old one would: the pid plus the kernel's
start time tell "our shim is alive" from "a recycled pid". Exit code present →
Succeeded/Failed; processes gone without one → Failed, reason "Killed"; a
``stopped`` marker written by ``stop`` → Stopped.

Signals: ``stop`` sends SIGTERM to the shim, which relays it to its whole
process group exactly once, and to anything in the cgroup outside that group.
After ``grace`` seconds everything but the shim gets SIGKILL, the shim records
137 and exits (or is killed too if it does not). Suspend uses the freezer and
falls back to SIGSTOP of the process group.

Why one module of some 600 lines: it is one class, the driver's verbs and the
process bookkeeping they share (liveness by pid + start ticks, the group, the
cgroup); the parts that stand alone (records, shim, tarball, cgroups, /proc)
are in their own modules already.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from runtimes.base import (
    NO_ATTACHMENTS,
    Attachments,
    Capabilities,
    InvalidName,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
    check_name,
    read_logs,
    read_tail,
)
from runtimes.cgroups import CgroupLayout, CgroupMode, Cgroups
from runtimes.native.records import (
    CHILD_FILE,
    EXIT_FILE,
    LAUNCH_FILE,
    PROC_FILE,
    ROOT_DIR,
    SHIM_LOG,
    STDERR_FILE,
    STDOUT_FILE,
    STOP_FILE,
    Record,
    exit_message,
    now,
    read_exit,
    read_json,
    stop_message,
    write_json,
)
from runtimes.native.shim import SHIM_BOOT
from runtimes.native.tarball import EMPTY_COMMAND, open_checked, resolve_command, unpack
from runtimes.procs import group_members, proc_stat, signal_pids, start_ticks
from specs.logfmt import kv

if TYPE_CHECKING:
    from specs.kinds import Workload

log = logging.getLogger("gu.runtime.native")

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_POLL = 0.05
# How long start() waits for the shim to report the program running (or dead).
_START_TIMEOUT = 10.0
# After SIGKILL: how long to wait for processes to vanish and the shim to record.
_KILL_TIMEOUT = 3.0
_FREEZE_TIMEOUT = 5.0


def expose(root: Path, source: Path, path: str) -> None:
    """Make ``source`` appear at ``root/path`` (a symlink; ``path`` is relative, checked by
    the spec); StartFailed when the image already has something there."""
    target = root / path
    if target.exists() or target.is_symlink():
        raise StartFailed(
            f"the image already has {path!r}; an input or the outputs cannot go there "
            "(choose another path)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)


class NativeRuntime:
    """Runs ``.tar.gz`` program folders as process groups, in cgroups where possible.

    ``cgroups`` picks the cgroup backend: "auto" (v1 when v1 controllers are
    mounted, else v2), "v1", "v2" or "none" (no limits; suspend by SIGSTOP).
    Not thread-safe per workload: the agent serializes the calls for one name.
    """

    name: str = "native"

    def __init__(self, state_dir: Path, *, cgroups: CgroupMode = "auto") -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._layout = CgroupLayout.detect(cgroups)
        # Shims this instance started: kept so they can be reaped (no zombies).
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._prepared: set[str] = set()

    # -------------------------------------------------------------- verbs

    def fingerprint(self) -> Capabilities:
        """Available on Linux (it needs /proc, sessions and, optionally, cgroups).

        A suspended workload keeps its memory: the freezer (or SIGSTOP) stops
        the processes but leaves them resident.
        """
        if not sys.platform.startswith("linux"):
            return Capabilities(
                available=False, reason=f"the native runtime needs Linux, not {sys.platform}"
            )
        return Capabilities(
            available=True,
            version=f"python {sys.version_info.major}.{sys.version_info.minor}",
            suspend_keeps_memory=True,
            details={"cgroups": self.cgroup_version or "none"},
        )

    @property
    def cgroup_version(self) -> str | None:
        """ "v1", "v2" or None when workloads run without cgroup limits."""
        return self._layout.version if self._layout else None

    def prepare(self, image_path: Path, image_hash: str) -> None:
        """Check that the image is a readable, safe tarball (no unpacking yet)."""
        if image_hash in self._prepared:
            return
        tar, members = open_checked(Path(image_path))
        tar.close()
        self._prepared.add(image_hash)
        log.info(kv("image.checked", hash=image_hash, members=len(members)))

    def start(
        self,
        name: str,
        workload: Workload,
        image_path: Path,
        attachments: Attachments = NO_ATTACHMENTS,
    ) -> WorkloadStatus:
        """Unpack the image, start the shim and wait (bounded) until the program runs.

        Returns the status right after start: "Running", or already
        "Succeeded"/"Failed" for a program that ended at once. Raises
        :class:`WorkloadExists`, :class:`ImageRejected`, :class:`StartFailed`
        (also for attachments: a native workload has no virtual network). Exposed
        folders (a Session's inputs and outputs) appear as symlinks at their paths in
        the program's folder.
        """
        if attachments.network is not None:
            raise StartFailed(
                f"the native runtime cannot join virtual network {attachments.network.network!r}: "
                "only runtime: vm workloads may name a network"
            )
        wd = self._workdir(name)
        if (wd / PROC_FILE).exists():
            raise WorkloadExists(self.name, name)
        if wd.exists():
            # A start that died before proc.json: its shim runs nothing (it
            # waits for that record), so the folder is debris.
            shutil.rmtree(wd)
        argv = [*workload.command, *workload.args]
        if not workload.command:
            raise StartFailed(EMPTY_COMMAND)
        cgroups: Cgroups | None = None
        try:
            wd.mkdir(mode=0o700)
            root = wd / ROOT_DIR
            root.mkdir(mode=0o755)
            unpack(Path(image_path), root)
            for folder in attachments.folders:
                expose(root, folder.source, folder.path)
            env = {"PATH": _DEFAULT_PATH, "HOME": str(root), "LANG": "C.UTF-8", **workload.env}
            executable = resolve_command(workload.command, root, env)
            if self._layout is not None:
                res = workload.resources
                cgroups = self._layout.create(self._cgroup_leaf(name), res.cpu, res.memoryMiB)
            else:
                log.info(kv("workload.no_limits", name=name, reason="no writable cgroup"))
            dirs = list(cgroups.dirs.values()) if cgroups else []
            leave = list(cgroups.leave.values()) if cgroups else []
            launch = {
                "argv": argv,
                "executable": executable,
                "env": env,
                "cwd": str(root),
                "cgroup_dirs": [str(d) for d in dirs],
                "cgroup_procs": [str(d / "cgroup.procs") for d in dirs],
                "leave_procs": [str(d / "cgroup.procs") for d in leave],
            }
            write_json(wd / LAUNCH_FILE, launch)
            record = self._spawn_shim(name, wd, argv, workload.image.hash, cgroups)
        except BaseException:
            if cgroups is not None:
                cgroups.kill()
                cgroups.remove()
            shutil.rmtree(wd, ignore_errors=True)
            raise
        status = self._wait_started(name, wd, record)
        log.info(
            kv(
                "workload.started",
                name=name,
                pid=record.pid,
                state=status.state,
                cgroup=cgroups.version if cgroups else "none",
                argv0=argv[0],
            )
        )
        return status

    def inspect(self, name: str) -> WorkloadStatus:
        """Read the workload's state from its files, /proc and its cgroups."""
        return self._status(self._load(name))

    def suspend(self, name: str) -> WorkloadStatus:
        """Freeze the workload (cgroup freezer, else SIGSTOP of its process group)."""
        rec = self._load(name)
        status = self._status(rec)
        if status.state not in ("Running", "Starting"):
            return status
        cg = rec.cgroups
        how = "SIGSTOP"
        if cg is not None and cg.can_freeze:
            try:
                cg.set_frozen(True)
                how = "freezer"
            except OSError as exc:
                log.warning(kv("workload.freeze_failed", name=name, error=exc))
        if how == "freezer" and cg is not None:
            ok = self._wait(lambda: cg.freezer_state() == "FROZEN", _FREEZE_TIMEOUT)
        else:
            self._signal_group(rec, signal.SIGSTOP, include_shim=True)
            ok = self._wait(lambda: self._sigstopped(rec), _FREEZE_TIMEOUT)
        log.info(kv("workload.suspended", name=name, pid=rec.pid, method=how, complete=ok))
        return self._status(rec)

    def resume(self, name: str) -> WorkloadStatus:
        """Thaw the freezer and SIGCONT what was stopped; a running workload is left as is."""
        rec = self._load(name)
        self._thaw(rec)
        log.info(kv("workload.resumed", name=name, pid=rec.pid))
        return self._status(rec)

    def stop(self, name: str, grace: float = 10.0) -> WorkloadStatus:
        """SIGTERM the workload, SIGKILL it after ``grace`` seconds, leave nothing behind.

        Returns "Stopped" (with the exit code the shim recorded, e.g. 143 or
        137); a workload that had already ended keeps its final status.
        """
        rec = self._load(name)
        wd = self._workdir(name)
        status = self._status(rec)
        if status.finished:
            self._kill_leftovers(rec)
            return status
        marker: dict[str, Any] = {
            "requested_at": now().isoformat(),
            "grace": grace,
            "signal": "SIGTERM",
        }
        write_json(wd / STOP_FILE, marker)
        # Frozen or stopped processes would not act on SIGTERM until thawed.
        self._thaw(rec)
        if self._shim_alive(rec):
            # The shim relays it to the whole process group, once per process.
            signal_pids([rec.pid], signal.SIGTERM)
        else:
            self._signal_group(rec, signal.SIGTERM, include_shim=False)
        # Also what left the process group (setsid) but not the cgroup.
        if rec.cgroups is not None:
            strays = [p for p in rec.cgroups.pids() if getattr(proc_stat(p), "pgid", 0) != rec.pgid]
            signal_pids(strays, signal.SIGTERM)
        log.info(kv("workload.stopping", name=name, pid=rec.pid, grace=grace))
        if not self._wait(lambda: not self._anything_alive(rec), max(grace, 0.0)):
            marker["signal"] = "SIGKILL"
            write_json(wd / STOP_FILE, marker)
            log.info(kv("workload.kill", name=name, pid=rec.pid, after=grace))

            def spare_shim() -> bool:
                self._kill_all(rec, include_shim=False)
                return not self._shim_alive(rec)

            # Let the shim record the program's 137 before it goes too.
            self._wait(spare_shim, _KILL_TIMEOUT)

            if not self._kill_until_gone(rec):
                log.error(kv("workload.kill_incomplete", name=name, pid=rec.pid))
        marker["finished_at"] = now().isoformat()
        write_json(wd / STOP_FILE, marker)
        status = self._status(rec)
        log.info(
            kv(
                "workload.stopped",
                name=name,
                pid=rec.pid,
                exit_code=status.exit_code,
                signal=marker["signal"],
            )
        )
        return status

    def logs(self, name: str, tail_bytes: int | None = None) -> bytes:
        """stdout.log followed by stderr.log; with ``tail_bytes``, the end of each
        (the budget shared as ``runtimes.base.tail_budget`` says)."""
        wd = self._workdir(name)
        if not (wd / PROC_FILE).exists():
            raise WorkloadNotFound(self.name, name)
        return read_logs(wd / STDOUT_FILE, wd / STDERR_FILE, tail_bytes)

    def remove(self, name: str) -> None:
        """Kill the workload at once if it still runs (call stop() first to be polite),
        then delete its cgroups and its folder. Removing an unknown name does nothing."""
        wd = self._workdir(name)
        rec = Record.load(wd / PROC_FILE)
        if rec is not None:
            if not self._status(rec).finished:
                self.stop(name, grace=0.0)
            self._kill_leftovers(rec)
            if rec.cgroups is not None:
                rec.cgroups.remove()
            self._reap(rec.pid)
            self._children.pop(rec.pid, None)
        if wd.exists():
            shutil.rmtree(wd, ignore_errors=True)
            log.info(kv("workload.removed", name=name))

    def adopt(self) -> list[str]:
        """Names of the workloads in ``state_dir`` with a valid ``proc.json``.

        Nothing is restarted: the records are all this runtime needs, so from
        now on inspect/stop/logs/remove work for them as for its own.
        """
        names = []
        for wd in sorted(p for p in self.state_dir.iterdir() if p.is_dir()):
            try:
                check_name(wd.name)
            except InvalidName:
                continue
            rec = Record.load(wd / PROC_FILE)
            if rec is None or rec.name != wd.name:
                log.warning(kv("workload.adopt_skipped", dir=wd, reason="no valid proc.json"))
                continue
            status = self._status(rec)
            names.append(rec.name)
            log.info(kv("workload.adopted", name=rec.name, pid=rec.pid, state=status.state))
        return names

    # -------------------------------------------------------------- internals

    def _cgroup_leaf(self, name: str) -> str:
        # Two agents (or test runs) on one machine may use the same placement
        # name: the state dir makes the cgroup theirs alone. Kept under
        # NAME_MAX (255) for any valid name.
        digest = hashlib.sha256(f"{self.state_dir.resolve()}\0{name}".encode()).hexdigest()
        return f"{name[:200]}-{digest[:12]}"

    def _workdir(self, name: str) -> Path:
        return self.state_dir / check_name(name)

    def _load(self, name: str) -> Record:
        rec = Record.load(self._workdir(name) / PROC_FILE)
        if rec is None:
            raise WorkloadNotFound(self.name, name)
        return rec

    def _spawn_shim(
        self, name: str, wd: Path, argv: list[str], image_hash: str, cgroups: Cgroups | None
    ) -> Record:
        runtimes_dir = str(Path(__file__).resolve().parent.parent)
        shim_argv = [sys.executable, "-I", "-c", SHIM_BOOT, runtimes_dir, str(wd), "--", *argv]
        with open(wd / SHIM_LOG, "ab") as shim_log:
            try:
                proc = subprocess.Popen(
                    shim_argv,
                    cwd=wd,
                    env={"PATH": _DEFAULT_PATH, "LANG": "C.UTF-8"},
                    stdin=subprocess.DEVNULL,
                    stdout=shim_log,
                    stderr=shim_log,
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StartFailed(f"cannot start the native runtime's shim: {exc}") from exc
        spawned_at = now()
        self._children[proc.pid] = proc
        # psutil's create_time is kept for humans and tools; identity checks use
        # the exact start ticks, and started_at the wall clock (psutil's is
        # built on a whole-second boot time).
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        data = {
            "name": name,
            "pid": proc.pid,
            "pgid": proc.pid,
            "start_ticks": start_ticks(proc.pid) or 0,
            "create_time": create_time,
            "command": argv,
            "image_hash": image_hash,
            "started_at": spawned_at.isoformat(),
            "cgroup": cgroups.to_json() if cgroups else None,
        }
        try:
            write_json(wd / PROC_FILE, data)
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise StartFailed(f"cannot record the workload in {wd / PROC_FILE}: {exc}") from exc
        rec = Record.load(wd / PROC_FILE)
        assert rec is not None
        return rec

    def _wait_started(self, name: str, wd: Path, rec: Record) -> WorkloadStatus:
        started = self._wait(
            lambda: (
                (wd / CHILD_FILE).exists() or (wd / EXIT_FILE).exists() or not self._shim_alive(rec)
            ),
            _START_TIMEOUT,
        )
        if (wd / CHILD_FILE).exists() or (wd / EXIT_FILE).exists():
            return self._status(rec)
        shim_log = read_tail(wd / SHIM_LOG, 2000).decode(errors="replace").strip()
        self.remove(name)
        what = "did not start in time" if not started else "died before starting the program"
        raise StartFailed(f"the native runtime's shim {what}: {shim_log or 'no output'}")

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll ``done()`` every 50 ms until true or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    def _reap(self, pid: int) -> None:
        """Collect the exit of a shim that is our child, so it is no zombie."""
        proc = self._children.get(pid)
        if proc is not None:
            if proc.poll() is not None:
                self._children.pop(pid, None)
            return
        stat = proc_stat(pid)
        if stat and stat.state == "Z" and stat.ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _alive(self, pid: int, start_ticks: int) -> bool:
        """Is ``pid`` still the process that was recorded (not a zombie, not recycled)?"""
        stat = proc_stat(pid)
        if stat is None or stat.start_ticks != start_ticks:
            return False
        if stat.state in ("Z", "X"):
            self._reap(pid)
            return False
        return True

    def _shim_alive(self, rec: Record) -> bool:
        return self._alive(rec.pid, rec.start_ticks)

    def _child(self, rec: Record) -> tuple[int, int] | None:
        data = read_json(self._workdir(rec.name) / CHILD_FILE)
        if data is None:
            return None
        try:
            return int(data["pid"]), int(data["start_ticks"])
        except (KeyError, TypeError, ValueError):
            return None

    def _processes(self, rec: Record, include_shim: bool) -> set[int]:
        """Every live process of the workload: its group, its cgroups, its program."""
        pids = set(self._group(rec))
        if rec.cgroups is not None:
            pids |= rec.cgroups.pids()
        child = self._child(rec)
        if child and self._alive(*child):
            pids.add(child[0])
        if include_shim:
            if self._shim_alive(rec):
                pids.add(rec.pid)
        else:
            pids.discard(rec.pid)
        return {p for p in pids if (s := proc_stat(p)) is not None and s.state not in ("Z", "X")}

    def _group(self, rec: Record) -> list[int]:
        """Live members of the workload's process group, if that group is still ours.

        The kernel does not reuse a pid while a process group of that number
        has members, so: leader gone → the members are our orphans; leader
        alive but with another start time → the number was recycled after our
        group emptied, and those processes are somebody else's.
        """
        leader = proc_stat(rec.pgid)
        if leader is not None and leader.start_ticks != rec.start_ticks:
            return []
        return group_members(rec.pgid)

    def _anything_alive(self, rec: Record) -> bool:
        return bool(self._processes(rec, include_shim=True))

    def _kill_all(self, rec: Record, include_shim: bool) -> None:
        # A v1-frozen process does not die until thawed.
        if rec.cgroups is not None and rec.cgroups.freezer_state() != "THAWED":
            with contextlib.suppress(OSError):
                rec.cgroups.set_frozen(False)
        if rec.cgroups is not None:
            rec.cgroups.kill()
        signal_pids(self._processes(rec, include_shim), signal.SIGKILL)

    def _kill_leftovers(self, rec: Record) -> None:
        """After the program ended: make sure nothing of it survives (the shim may be gone)."""
        if self._shim_alive(rec):
            # The shim is finishing its own cleanup; give it a moment.
            self._wait(lambda: not self._shim_alive(rec), _KILL_TIMEOUT)
        if self._processes(rec, include_shim=True):
            self._kill_until_gone(rec)

    def _kill_until_gone(self, rec: Record) -> bool:
        # Repeat: a process may fork between our listing and our kill.
        def everything() -> bool:
            self._kill_all(rec, include_shim=True)
            return not self._anything_alive(rec)

        return self._wait(everything, _KILL_TIMEOUT)

    def _signal_group(self, rec: Record, signum: int, include_shim: bool) -> None:
        signal_pids(self._processes(rec, include_shim), signum)

    def _sigstopped(self, rec: Record) -> bool:
        child = self._child(rec)
        if child is None or not self._alive(*child):
            return False
        stat = proc_stat(child[0])
        return stat is not None and stat.state in ("T", "t")

    def _thaw(self, rec: Record) -> None:
        cg = rec.cgroups
        if cg is not None and cg.freezer_state() != "THAWED":
            try:
                cg.set_frozen(False)
                self._wait(lambda: cg.freezer_state() == "THAWED", _FREEZE_TIMEOUT)
            except OSError as exc:
                log.warning(kv("workload.thaw_failed", name=rec.name, error=exc))
        stopped = [
            p
            for p in self._processes(rec, include_shim=True)
            if (s := proc_stat(p)) is not None and s.state in ("T", "t")
        ]
        if stopped:
            signal_pids(stopped, signal.SIGCONT)

    def _suspended(self, rec: Record) -> bool:
        if rec.cgroups is not None and rec.cgroups.freezer_state() != "THAWED":
            return True
        return self._sigstopped(rec)

    def _status(self, rec: Record) -> WorkloadStatus:
        wd = self._workdir(rec.name)
        started_at = rec.started_at
        stop = read_json(wd / STOP_FILE)
        # Liveness before the exit file: the shim writes the file before it
        # exits, so "dead, and no file after that" really means no exit code.
        shim_alive = self._shim_alive(rec)
        child = self._child(rec)
        child_alive = child is not None and self._alive(*child)
        exit_code, exited_at = read_exit(wd / EXIT_FILE)
        base = WorkloadStatus(state="Running", pid=rec.pid, started_at=started_at)
        if exit_code is not None:
            base.exit_code = exit_code
            base.finished_at = exited_at
            if stop is not None:
                base.state, base.reason = "Stopped", "Stopped"
                base.message = stop_message(stop, exit_code)
            elif exit_code == 0:
                base.state, base.reason, base.message = "Succeeded", "Completed", "exited with 0"
            elif exit_code == 128 + signal.SIGKILL and rec.cgroups and rec.cgroups.oom_kills():
                base.state, base.reason = "Failed", "OOMKilled"
                base.message = "killed by the kernel: the workload used more than its memoryMiB"
            else:
                base.state, base.reason = "Failed", "Error"
                base.message = exit_message(exit_code)
            return base
        if shim_alive or child_alive:
            if child is None:
                base.state, base.reason, base.message = "Starting", "Starting", "shim starting"
            elif self._suspended(rec):
                base.state, base.reason, base.message = "Suspended", "Suspended", "frozen"
            else:
                base.reason, base.message = "Started", "running"
                if stop is not None:
                    base.reason, base.message = "Stopping", "stop requested"
                if not shim_alive:
                    base.message += "; its shim is gone, so no exit code will be recorded"
            return base
        if stop is not None:
            base.state, base.reason = "Stopped", "Stopped"
            base.message = stop_message(stop, None)
            finished = stop.get("finished_at")
            base.finished_at = datetime.fromisoformat(finished) if finished else None
            return base
        base.state, base.reason = "Failed", "Killed"
        base.message = (
            "the workload's processes are gone and no exit code was recorded "
            "(its shim was killed, or the machine restarted)"
        )
        return base


__all__ = ["NativeRuntime"]
