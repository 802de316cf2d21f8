"""The native runtime: a program folder from a ``.tar.gz``, run as plain processes.

Flow of one workload named ``N`` (everything lives in ``state_dir/N/``):

1. ``start`` unpacks the image into ``root/`` (tarfile's ``data`` filter plus
   our own checks: no absolute names, no ``..``, no devices, no links out),
   resolves the command (``./run.sh`` and ``bin/prog`` inside ``root``), creates
   the workload's cgroups and writes ``launch.json`` (argv, env, cwd, cgroups).
2. It starts the **shim** — ``python -I -c <boot> <runtimes dir> <workdir> -- argv``
   — in a new session, so the shim is the process-group leader and nothing
   ties it to the agent: a ``kill -9`` of the agent leaves it running. The
   agent records the shim's pid, pgid and start time in ``proc.json``
   (tmp + fsync + rename).
3. The shim waits until ``proc.json`` names it (a program nobody recorded
   could never be found again), joins the cgroups, spawns the program (stdout/stderr straight into
   ``stdout.log``/``stderr.log``, no pipe through the agent), writes
   ``child.json``, deletes ``launch.json`` (it holds the env, maybe secrets)
   and leaves the cgroups again. Leaving matters: the shim's own memory is not
   charged to the workload, the OOM killer never picks it, the freezer does not
   freeze it, and "kill everything in the cgroup" never kills it, so it is
   always there to record how the program ended.
4. When the program ends, the shim writes ``exit_code`` atomically (a signal
   death is 128 + signum), kills whatever the program left behind in its
   process group and cgroup, and exits.

Every other verb reads those files and ``/proc`` again, so a new agent process
(``adopt()``) answers exactly as the old one would: the pid plus the kernel's
start time (``/proc/PID/stat`` field 22) tell "our shim is alive" from "a
recycled pid". Exit code present → Succeeded/Failed; processes gone without one
→ Failed, reason "Killed"; a ``stopped`` marker written by ``stop`` → Stopped.

Signals: ``stop`` sends SIGTERM to the shim, which relays it to its whole
process group exactly once (it ignores its own copy), and to anything in the
cgroup outside that group. After ``grace`` seconds everything but the shim gets
SIGKILL, the shim records 137 and exits (or is killed too if it does not).

Limits: cgroup v1 (one hierarchy per controller, as on this machine) or a pure
v2 hierarchy. Workload cgroups are ``gu/<name>-<hash of state_dir>`` under
the agent's own cgroup (v1) or under the v2 root (v2 forbids processes next to
child cgroups with controllers); the path is kept in ``proc.json``. Where no cgroup is writable the workload runs without limits
and a log line says so; it never fails for that. Suspend uses the freezer
(v1 ``freezer.state``, v2 ``cgroup.freeze``) and falls back to SIGSTOP of the
process group.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import psutil

from runtimes.base import (
    ImageRejected,
    InvalidName,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
    check_name,
)
from specs.fileio import write_atomic
from specs.logfmt import kv

if TYPE_CHECKING:
    from specs.kinds import Workload

log = logging.getLogger("gu.runtime.native")

CgroupMode = Literal["auto", "v1", "v2", "none"]

# Files inside state_dir/<name>/
PROC_FILE = "proc.json"
CHILD_FILE = "child.json"
LAUNCH_FILE = "launch.json"
EXIT_FILE = "exit_code"
STOP_FILE = "stopped"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
SHIM_LOG = "shim.log"
ROOT_DIR = "root"

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_POLL = 0.05
# How long start() waits for the shim to report the program running (or dead).
_START_TIMEOUT = 10.0
# After SIGKILL: how long to wait for processes to vanish and the shim to record.
_KILL_TIMEOUT = 3.0
# How long a new shim waits for the agent to write its proc.json.
_SHIM_RECORD_WAIT = 30.0
_FREEZE_TIMEOUT = 5.0
_CFS_PERIOD_US = 100_000
_V1_CONTROLLERS = ("memory", "cpu", "freezer")
_EMPTY_COMMAND = "workload.command is empty: name the program to run, e.g. command: ['./run.sh']"

# The shim's boot line. It registers an empty ``runtimes`` package instead of
# importing runtimes/__init__.py, so the shim loads only base.py and this file
# (stdlib + psutil): it starts in tens of milliseconds and stays small whatever
# other drivers the package grows.
_SHIM_BOOT = (
    "import sys, types; "
    "pkg = types.ModuleType('runtimes'); pkg.__path__ = [sys.argv[1]]; "
    "sys.modules['runtimes'] = pkg; "
    "from runtimes.native import shim_main; sys.exit(shim_main(sys.argv[2]))"
)


# ----------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when missing or not (yet) valid."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class _ProcStat:
    """The fields of ``/proc/PID/stat`` we judge processes by."""

    state: str
    ppid: int
    pgid: int
    start_ticks: int


def _proc_stat(pid: int) -> _ProcStat | None:
    """Read ``/proc/PID/stat``; None when the process does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _ProcStat(rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[19]))
    except (IndexError, ValueError):
        return None


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat.start_ticks if stat else None


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for pid in psutil.pids():
        stat = _proc_stat(pid)
        if stat and stat.pgid == pgid and stat.state not in ("Z", "X"):
            members.append(pid)
    return members


def _signal_pids(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ----------------------------------------------------------------- images


def _check_members(image: Path, members: Sequence[tarfile.TarInfo]) -> None:
    """Refuse members that could write outside the folder or create devices.

    tarfile's ``data`` filter catches most of this too, but it silently strips
    a leading '/' where we want to refuse the whole image: a tarball with
    absolute names was not built for us.
    """
    for m in members:
        parts = PurePosixPath(m.name).parts
        why = None
        if m.name.startswith("/"):
            why = "has an absolute path"
        elif ".." in parts:
            why = "has a '..' component that leaves the image folder"
        elif m.ischr() or m.isblk() or m.isfifo():
            why = "is a device file or FIFO"
        elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            why = "is of an unsupported type"
        if why:
            raise ImageRejected(
                f"image {image.name}: member {m.name!r} {why}; rebuild the tarball from "
                "inside the program folder (tar -C DIR -czf image.tar.gz .)"
            )


def _open_checked(image: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    try:
        # Handed to the caller, which closes it.
        tar = tarfile.open(image, "r:*")  # noqa: SIM115
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ImageRejected(f"image {image.name} is not a readable tar archive: {exc}") from exc
    try:
        members = tar.getmembers()
        _check_members(image, members)
    except ImageRejected:
        tar.close()
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        tar.close()
        raise ImageRejected(f"image {image.name} is a damaged tar archive: {exc}") from exc
    return tar, members


def _unpack(image: Path, dest: Path) -> None:
    tar, members = _open_checked(image)
    with tar:
        try:
            tar.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise ImageRejected(f"image {image.name} was refused: {exc}") from exc
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ImageRejected(f"image {image.name} is a damaged tar archive: {exc}") from exc
        except OSError as exc:
            raise StartFailed(f"cannot unpack image {image.name} into {dest}: {exc}") from exc


def _resolve_command(command: list[str], root: Path, env: dict[str, str]) -> str:
    """The executable to run for ``command[0]``; raises :class:`StartFailed` with the fix."""
    if not command:
        raise StartFailed(_EMPTY_COMMAND)
    prog = command[0]
    if "/" in prog and not prog.startswith("/"):
        target = (root / prog).resolve()
        if not target.is_relative_to(root.resolve()):
            raise StartFailed(f"command {prog!r} points outside the image folder")
        where = "in the image"
    elif prog.startswith("/"):
        target = Path(prog)
        where = "on this provider"
    else:
        # PATH entries may be relative to the image folder (e.g. PATH=bin:/usr/bin).
        dirs = [str(root / d) if not d.startswith("/") else d for d in env["PATH"].split(":") if d]
        found = shutil.which(prog, path=os.pathsep.join(dirs))
        if found is None:
            raise StartFailed(
                f"command {prog!r} was not found on PATH={env['PATH']}; use './{prog}' for a "
                "program inside the image, or an absolute path"
            )
        return found
    if not target.is_file():
        raise StartFailed(f"command {prog!r} was not found {where}")
    if not os.access(target, os.X_OK):
        raise StartFailed(
            f"command {prog!r} is not executable: set its x bit (chmod +x) before packing"
        )
    return str(target)


# ----------------------------------------------------------------- cgroups


def _cg_write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _cg_pids(directory: Path) -> set[int]:
    try:
        text = (directory / "cgroup.procs").read_text()
    except OSError:
        return set()
    return {int(line) for line in text.split()}


@dataclass
class _Cgroups:
    """One workload's cgroups: a dir per v1 controller, or one v2 dir (key "unified")."""

    version: Literal["v1", "v2"]
    dirs: dict[str, Path]
    # The agent's own cgroup per hierarchy: where the shim goes back to.
    leave: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "dirs": {k: str(v) for k, v in self.dirs.items()},
            "leave": {k: str(v) for k, v in self.leave.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> _Cgroups | None:
        if not isinstance(data, dict) or data.get("version") not in ("v1", "v2"):
            return None
        return cls(
            data["version"],
            {k: Path(v) for k, v in data.get("dirs", {}).items()},
            {k: Path(v) for k, v in data.get("leave", {}).items()},
        )

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            found |= _cg_pids(d)
        return found

    def _freeze_file(self) -> Path | None:
        if self.version == "v1":
            d = self.dirs.get("freezer")
            return d / "freezer.state" if d else None
        d = self.dirs.get("unified")
        return d / "cgroup.freeze" if d and (d / "cgroup.freeze").exists() else None

    @property
    def can_freeze(self) -> bool:
        path = self._freeze_file()
        return path is not None and path.exists()

    def set_frozen(self, frozen: bool) -> None:
        path = self._freeze_file()
        if path is None:
            raise OSError(errno.ENOTSUP, "no freezer")
        if self.version == "v1":
            _cg_write(path, "FROZEN" if frozen else "THAWED")
        else:
            _cg_write(path, "1" if frozen else "0")

    def freezer_state(self) -> str:
        """ "FROZEN", "FREEZING" or "THAWED" ("THAWED" without a freezer)."""
        path = self._freeze_file()
        if path is None:
            return "THAWED"
        try:
            if self.version == "v1":
                return path.read_text().strip()
            if path.read_text().strip() != "1":
                return "THAWED"
            events = (path.parent / "cgroup.events").read_text()
            return "FROZEN" if "frozen 1" in events else "FREEZING"
        except OSError:
            return "THAWED"

    def kill(self) -> None:
        """SIGKILL everything in the cgroups (v2: ``cgroup.kill`` catches forks in flight)."""
        if self.version == "v2":
            d = self.dirs["unified"]
            with contextlib.suppress(OSError):
                _cg_write(d / "cgroup.kill", "1")
        _signal_pids(self.pids(), signal.SIGKILL)

    def oom_kills(self) -> int:
        if self.version == "v1":
            d = self.dirs.get("memory")
            path = d / "memory.oom_control" if d else None
        else:
            path = self.dirs["unified"] / "memory.events"
        if path is None:
            return 0
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Delete the cgroup dirs; they must be empty, so retry briefly after a kill."""
        deadline = time.monotonic() + _KILL_TIMEOUT
        for d in self.dirs.values():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning(kv("cgroup.remove_failed", path=d, error=exc))
                        break
                    _signal_pids(_cg_pids(d), signal.SIGKILL)
                    time.sleep(_POLL)


@dataclass
class _CgroupLayout:
    """Where this agent can create workload cgroups: a parent dir per hierarchy."""

    version: Literal["v1", "v2"]
    parents: dict[str, Path]
    own: dict[str, Path]

    @classmethod
    def detect(cls, mode: CgroupMode) -> _CgroupLayout | None:
        """Find writable cgroup hierarchies; None (with a log line why) when there are none."""
        if mode == "none":
            log.info(kv("cgroups.off", reason="disabled by configuration", limits="none"))
            return None
        if not sys.platform.startswith("linux"):
            return None
        mounts = _cgroup_mounts()
        own = _own_cgroups()
        v1 = [m for m in mounts if m[0] == "cgroup"]
        v2 = [m for m in mounts if m[0] == "cgroup2"]
        has_v1 = any(set(m[3]) & set(_V1_CONTROLLERS) for m in v1)
        layout: _CgroupLayout | None = None
        if mode in ("auto", "v1") and has_v1:
            layout = cls._v1(v1, own)
        elif mode in ("auto", "v2") and v2:
            layout = cls._v2(v2[0], own)
        if layout is None or not layout.parents:
            log.warning(
                kv("cgroups.unavailable", mode=mode, reason="no writable cgroup", limits="none")
            )
            return None
        log.info(
            kv(
                "cgroups.found",
                version=layout.version,
                controllers=",".join(layout.controllers()) or "none",
                parent=next(iter(layout.parents.values())),
            )
        )
        return layout

    @classmethod
    def _v1(
        cls, mounts: list[tuple[str, str, Path, list[str]]], own: dict[str, str]
    ) -> _CgroupLayout:
        parents: dict[str, Path] = {}
        owns: dict[str, Path] = {}
        for controller in _V1_CONTROLLERS:
            mount = next((m for m in mounts if controller in m[3]), None)
            if mount is None:
                continue
            _, mount_root, point, _ = mount
            mine = own.get(controller, "/")
            # Inside a container the mount root may be our own cgroup already.
            rel = mine[len(mount_root) :] if mine.startswith(mount_root) else ""
            own_dir = point / rel.lstrip("/")
            parent = own_dir / "gu"
            if _make_writable_dir(parent):
                parents[controller] = parent
                owns[controller] = own_dir
        return cls("v1", parents, owns)

    @classmethod
    def _v2(cls, mount: tuple[str, str, Path, list[str]], own: dict[str, str]) -> _CgroupLayout:
        _, mount_root, point, _ = mount
        mine = own.get("", "/")
        rel = mine[len(mount_root) :] if mine.startswith(mount_root) else ""
        parent = point / "gu"
        if not _make_writable_dir(parent):
            return cls("v2", {}, {})
        # Hand memory and cpu down to gu/<name>; best effort, limits are skipped without them.
        wanted = {"memory", "cpu"}
        for d in (point, parent):
            try:
                available = set((d / "cgroup.controllers").read_text().split())
                if wanted & available:
                    _cg_write(
                        d / "cgroup.subtree_control",
                        " ".join(f"+{c}" for c in sorted(wanted & available)),
                    )
            except OSError as exc:
                log.info(kv("cgroups.v2_controllers", path=d, error=exc))
        return cls("v2", {"unified": parent}, {"unified": point / rel.lstrip("/")})

    def controllers(self) -> list[str]:
        """The controllers workload cgroups get (v2: those handed down to ``gu/``)."""
        if self.version == "v1":
            return sorted(self.parents)
        try:
            return sorted(
                self.parents["unified"].joinpath("cgroup.subtree_control").read_text().split()
            )
        except OSError:
            return []

    def create(self, leaf: str, cpu: float, memory_mib: int) -> _Cgroups | None:
        """Create ``gu/<leaf>`` with the limits; drop (and log) what cannot be set."""
        dirs: dict[str, Path] = {}
        for controller, parent in self.parents.items():
            d = parent / leaf
            try:
                d.mkdir(exist_ok=True)
                if self.version == "v1":
                    _apply_v1_limit(controller, d, cpu, memory_mib)
                else:
                    _apply_v2_limits(d, cpu, memory_mib)
            except OSError as exc:
                log.warning(
                    kv("cgroup.limit_failed", cgroup=leaf, controller=controller, error=exc)
                )
                with contextlib.suppress(OSError):
                    d.rmdir()
                continue
            dirs[controller] = d
        if not dirs:
            log.warning(kv("cgroup.none", cgroup=leaf, limits="none"))
            return None
        return _Cgroups(self.version, dirs, dict(self.own))


def _apply_v1_limit(controller: str, d: Path, cpu: float, memory_mib: int) -> None:
    if controller == "memory":
        limit = str(memory_mib * 1024 * 1024)
        # No swap beyond the limit (memsw counts memory + swap; absent without
        # swap accounting). The kernel wants memsw >= limit at every step, so
        # the order depends on whether a reused cgroup's limit goes up or down.
        memsw = d / "memory.memsw.limit_in_bytes"
        try:
            _cg_write(d / "memory.limit_in_bytes", limit)
            if memsw.exists():
                _cg_write(memsw, limit)
        except OSError:
            _cg_write(memsw, limit)
            _cg_write(d / "memory.limit_in_bytes", limit)
    elif controller == "cpu":
        period = int((d / "cpu.cfs_period_us").read_text())
        _cg_write(d / "cpu.cfs_quota_us", str(max(1000, int(cpu * period))))


def _apply_v2_limits(d: Path, cpu: float, memory_mib: int) -> None:
    if (d / "memory.max").exists():
        _cg_write(d / "memory.max", str(memory_mib * 1024 * 1024))
        if (d / "memory.swap.max").exists():
            _cg_write(d / "memory.swap.max", "0")
    else:
        log.warning(kv("cgroup.no_controller", path=d, controller="memory", limits="none"))
    if (d / "cpu.max").exists():
        _cg_write(d / "cpu.max", f"{max(1000, int(cpu * _CFS_PERIOD_US))} {_CFS_PERIOD_US}")
    else:
        log.warning(kv("cgroup.no_controller", path=d, controller="cpu", limits="none"))


def _make_writable_dir(path: Path) -> bool:
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(path / "cgroup.procs", os.W_OK)


def _cgroup_mounts() -> list[tuple[str, str, Path, list[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((rf[0], lf[3], Path(lf[4]), rf[2].split(",")))
    return found


def _own_cgroups() -> dict[str, str]:
    """Our cgroup path per controller; the v2 one under key ""."""
    own: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            own[c] = path
    return own


# ----------------------------------------------------------------- shim


def shim_main(workdir: str) -> int:
    """Run one workload's program and record how it ended (the process the agent starts).

    Reads ``launch.json``, joins the cgroups, spawns the program, records
    ``child.json``, leaves the cgroups, relays SIGTERM/SIGINT/SIGHUP to the
    process group, waits, writes ``exit_code`` and kills what the program left
    behind. Its own log lines go to its stderr (``shim.log``).
    """
    wd = Path(workdir)

    def say(event: str, **fields: object) -> None:
        print(f"{_now().isoformat()} {kv(event, **fields)}", file=sys.stderr, flush=True)

    me = os.getpid()
    # Run nothing until the agent has recorded us: a program whose shim has no
    # proc.json could never be found, stopped or adopted. An agent that died
    # in between leaves only this shim, which gives up; a proc.json naming
    # another pid belongs to a newer start of the same name.
    deadline = time.monotonic() + _SHIM_RECORD_WAIT
    while (record := _read_json(wd / PROC_FILE)) is None or record.get("pid") != me:
        if record is not None or time.monotonic() > deadline:
            say("shim.not_recorded", path=wd / PROC_FILE, action="exit without running")
            return 2
        time.sleep(0.01)
    spec = _read_json(wd / LAUNCH_FILE)
    if spec is None:
        say("shim.no_launch_file", path=wd / LAUNCH_FILE)
        return 2
    running: dict[str, subprocess.Popen[bytes]] = {}
    pending: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        # The group gets the signal exactly once: our own copy is ignored, so a
        # signal sent to the shim or to the whole group reaches each process once.
        if "child" not in running:
            pending.append(signum)
        signal.signal(signum, signal.SIG_IGN)
        try:
            os.killpg(me, signum)
        finally:
            signal.signal(signum, relay)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay)

    def join(key: str) -> None:
        for path in spec.get(key, []):
            try:
                _cg_write(Path(path), str(me))
            except OSError as exc:
                say("shim.cgroup_move_failed", path=path, error=exc)

    argv: list[str] = spec["argv"]
    code: int
    with open(wd / STDOUT_FILE, "ab") as out, open(wd / STDERR_FILE, "ab") as err:
        join("cgroup_procs")
        try:
            if pending:
                raise InterruptedError
            running["child"] = subprocess.Popen(
                argv,
                executable=spec["executable"],
                cwd=spec["cwd"],
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
            )
        except InterruptedError:
            code = 128 + pending[0]
            say("shim.cancelled", signal=_signal_name(pending[0]))
        except OSError as exc:
            err.write(f"gu: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            say("shim.exec_failed", argv0=argv[0], error=exc, exit_code=code)
        finally:
            join("leave_procs")
    child = running.get("child")
    if child is not None and pending:
        # A signal that came before the program existed must still reach it
        # (a second copy, in the instant around fork, is the lesser evil).
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, pending[0])
    if child is not None:
        _write_json(
            wd / CHILD_FILE, {"pid": child.pid, "start_ticks": _start_ticks(child.pid) or 0}
        )
        say("shim.started", pid=child.pid, argv0=argv[0])
    with contextlib.suppress(OSError):
        (wd / LAUNCH_FILE).unlink()
    if child is not None:
        rc = child.wait()
        code = 128 - rc if rc < 0 else rc
    write_atomic(wd / EXIT_FILE, f"{code}\n".encode(), mode=0o644)
    say("shim.exited", exit_code=code)
    # Nothing may outlive the program: background children left in the group or cgroup.
    leftovers = set(_group_members(me)) | {
        pid for d in spec.get("cgroup_dirs", []) for pid in _cg_pids(Path(d))
    }
    leftovers.discard(me)
    if leftovers:
        say("shim.kill_leftovers", pids=",".join(map(str, sorted(leftovers))))
        _signal_pids(leftovers, signal.SIGKILL)
    return 0


# ----------------------------------------------------------------- runtime


@dataclass
class _Record:
    """proc.json: how to find the workload's processes again."""

    name: str
    pid: int
    pgid: int
    start_ticks: int
    create_time: float
    started_at: datetime
    command: list[str]
    cgroups: _Cgroups | None

    @classmethod
    def load(cls, path: Path) -> _Record | None:
        data = _read_json(path)
        if data is None:
            return None
        try:
            return cls(
                name=str(data["name"]),
                pid=int(data["pid"]),
                pgid=int(data["pgid"]),
                start_ticks=int(data["start_ticks"]),
                create_time=float(data["create_time"]),
                started_at=datetime.fromisoformat(data["started_at"]),
                command=[str(a) for a in data["command"]],
                cgroups=_Cgroups.from_json(data.get("cgroup")),
            )
        except (KeyError, TypeError, ValueError):
            return None


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
        self._layout = _CgroupLayout.detect(cgroups)
        # Shims this instance started: kept so they can be reaped (no zombies).
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._prepared: set[str] = set()

    # -------------------------------------------------------------- verbs

    def available(self) -> bool:
        """True on Linux: the runtime needs /proc, sessions and (optionally) cgroups."""
        return sys.platform.startswith("linux")

    @property
    def cgroup_version(self) -> str | None:
        """ "v1", "v2" or None when workloads run without cgroup limits."""
        return self._layout.version if self._layout else None

    def prepare(self, image_path: Path, image_hash: str) -> None:
        """Check that the image is a readable, safe tarball (no unpacking yet)."""
        if image_hash in self._prepared:
            return
        tar, members = _open_checked(Path(image_path))
        tar.close()
        self._prepared.add(image_hash)
        log.info(kv("image.checked", hash=image_hash, members=len(members)))

    def start(self, name: str, workload: Workload, image_path: Path) -> WorkloadStatus:
        """Unpack the image, start the shim and wait (bounded) until the program runs.

        Returns the status right after start: "Running", or already
        "Succeeded"/"Failed" for a program that ended at once. Raises
        :class:`WorkloadExists`, :class:`ImageRejected`, :class:`StartFailed`.
        """
        wd = self._workdir(name)
        if (wd / PROC_FILE).exists():
            raise WorkloadExists(self.name, name)
        if wd.exists():
            # A start that died before proc.json: its shim runs nothing (it
            # waits for that record), so the folder is debris.
            shutil.rmtree(wd)
        argv = [*workload.command, *workload.args]
        if not workload.command:
            raise StartFailed(_EMPTY_COMMAND)
        cgroups: _Cgroups | None = None
        try:
            wd.mkdir(mode=0o700)
            root = wd / ROOT_DIR
            root.mkdir(mode=0o755)
            _unpack(Path(image_path), root)
            env = {"PATH": _DEFAULT_PATH, "HOME": str(root), "LANG": "C.UTF-8", **workload.env}
            executable = _resolve_command(workload.command, root, env)
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
            _write_json(wd / LAUNCH_FILE, launch)
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
            "requested_at": _now().isoformat(),
            "grace": grace,
            "signal": "SIGTERM",
        }
        _write_json(wd / STOP_FILE, marker)
        # Frozen or stopped processes would not act on SIGTERM until thawed.
        self._thaw(rec)
        if self._shim_alive(rec):
            # The shim relays it to the whole process group, once per process.
            _signal_pids([rec.pid], signal.SIGTERM)
        else:
            self._signal_group(rec, signal.SIGTERM, include_shim=False)
        # Also what left the process group (setsid) but not the cgroup.
        if rec.cgroups is not None:
            strays = [
                p for p in rec.cgroups.pids() if getattr(_proc_stat(p), "pgid", 0) != rec.pgid
            ]
            _signal_pids(strays, signal.SIGTERM)
        log.info(kv("workload.stopping", name=name, pid=rec.pid, grace=grace))
        if not self._wait(lambda: not self._anything_alive(rec), max(grace, 0.0)):
            marker["signal"] = "SIGKILL"
            _write_json(wd / STOP_FILE, marker)
            log.info(kv("workload.kill", name=name, pid=rec.pid, after=grace))

            def spare_shim() -> bool:
                self._kill_all(rec, include_shim=False)
                return not self._shim_alive(rec)

            # Let the shim record the program's 137 before it goes too.
            self._wait(spare_shim, _KILL_TIMEOUT)

            if not self._kill_until_gone(rec):
                log.error(kv("workload.kill_incomplete", name=name, pid=rec.pid))
        marker["finished_at"] = _now().isoformat()
        _write_json(wd / STOP_FILE, marker)
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
        """stdout.log followed by stderr.log; with ``tail_bytes``, the end of each.

        The budget is shared: stderr gets up to half of it (more when stdout
        is shorter), stdout the rest.
        """
        wd = self._workdir(name)
        if not (wd / PROC_FILE).exists():
            raise WorkloadNotFound(self.name, name)
        out, err = wd / STDOUT_FILE, wd / STDERR_FILE
        if tail_bytes is None:
            return _read_tail(out, None) + _read_tail(err, None)
        tail = max(0, tail_bytes)
        out_size, err_size = _size(out), _size(err)
        err_take = min(err_size, max(tail // 2, tail - out_size))
        out_take = min(out_size, tail - err_take)
        return _read_tail(out, out_take) + _read_tail(err, err_take)

    def remove(self, name: str) -> None:
        """Kill the workload at once if it still runs (call stop() first to be polite),
        then delete its cgroups and its folder. Removing an unknown name does nothing."""
        wd = self._workdir(name)
        rec = _Record.load(wd / PROC_FILE)
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
            rec = _Record.load(wd / PROC_FILE)
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

    def _load(self, name: str) -> _Record:
        rec = _Record.load(self._workdir(name) / PROC_FILE)
        if rec is None:
            raise WorkloadNotFound(self.name, name)
        return rec

    def _spawn_shim(
        self, name: str, wd: Path, argv: list[str], image_hash: str, cgroups: _Cgroups | None
    ) -> _Record:
        runtimes_dir = str(Path(__file__).resolve().parent)
        shim_argv = [sys.executable, "-I", "-c", _SHIM_BOOT, runtimes_dir, str(wd), "--", *argv]
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
        spawned_at = _now()
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
            "start_ticks": _start_ticks(proc.pid) or 0,
            "create_time": create_time,
            "command": argv,
            "image_hash": image_hash,
            "started_at": spawned_at.isoformat(),
            "cgroup": cgroups.to_json() if cgroups else None,
        }
        try:
            _write_json(wd / PROC_FILE, data)
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise StartFailed(f"cannot record the workload in {wd / PROC_FILE}: {exc}") from exc
        rec = _Record.load(wd / PROC_FILE)
        assert rec is not None
        return rec

    def _wait_started(self, name: str, wd: Path, rec: _Record) -> WorkloadStatus:
        started = self._wait(
            lambda: (
                (wd / CHILD_FILE).exists() or (wd / EXIT_FILE).exists() or not self._shim_alive(rec)
            ),
            _START_TIMEOUT,
        )
        if (wd / CHILD_FILE).exists() or (wd / EXIT_FILE).exists():
            return self._status(rec)
        shim_log = _read_tail(wd / SHIM_LOG, 2000).decode(errors="replace").strip()
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
        stat = _proc_stat(pid)
        if stat and stat.state == "Z" and stat.ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _alive(self, pid: int, start_ticks: int) -> bool:
        """Is ``pid`` still the process that was recorded (not a zombie, not recycled)?"""
        stat = _proc_stat(pid)
        if stat is None or stat.start_ticks != start_ticks:
            return False
        if stat.state in ("Z", "X"):
            self._reap(pid)
            return False
        return True

    def _shim_alive(self, rec: _Record) -> bool:
        return self._alive(rec.pid, rec.start_ticks)

    def _child(self, rec: _Record) -> tuple[int, int] | None:
        data = _read_json(self._workdir(rec.name) / CHILD_FILE)
        if data is None:
            return None
        try:
            return int(data["pid"]), int(data["start_ticks"])
        except (KeyError, TypeError, ValueError):
            return None

    def _processes(self, rec: _Record, include_shim: bool) -> set[int]:
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
        return {p for p in pids if (s := _proc_stat(p)) is not None and s.state not in ("Z", "X")}

    def _group(self, rec: _Record) -> list[int]:
        """Live members of the workload's process group, if that group is still ours.

        The kernel does not reuse a pid while a process group of that number
        has members, so: leader gone → the members are our orphans; leader
        alive but with another start time → the number was recycled after our
        group emptied, and those processes are somebody else's.
        """
        leader = _proc_stat(rec.pgid)
        if leader is not None and leader.start_ticks != rec.start_ticks:
            return []
        return _group_members(rec.pgid)

    def _anything_alive(self, rec: _Record) -> bool:
        return bool(self._processes(rec, include_shim=True))

    def _kill_all(self, rec: _Record, include_shim: bool) -> None:
        # A v1-frozen process does not die until thawed.
        if rec.cgroups is not None and rec.cgroups.freezer_state() != "THAWED":
            with contextlib.suppress(OSError):
                rec.cgroups.set_frozen(False)
        if rec.cgroups is not None:
            rec.cgroups.kill()
        _signal_pids(self._processes(rec, include_shim), signal.SIGKILL)

    def _kill_leftovers(self, rec: _Record) -> None:
        """After the program ended: make sure nothing of it survives (the shim may be gone)."""
        if self._shim_alive(rec):
            # The shim is finishing its own cleanup; give it a moment.
            self._wait(lambda: not self._shim_alive(rec), _KILL_TIMEOUT)
        if self._processes(rec, include_shim=True):
            self._kill_until_gone(rec)

    def _kill_until_gone(self, rec: _Record) -> bool:
        # Repeat: a process may fork between our listing and our kill.
        def everything() -> bool:
            self._kill_all(rec, include_shim=True)
            return not self._anything_alive(rec)

        return self._wait(everything, _KILL_TIMEOUT)

    def _signal_group(self, rec: _Record, signum: int, include_shim: bool) -> None:
        _signal_pids(self._processes(rec, include_shim), signum)

    def _sigstopped(self, rec: _Record) -> bool:
        child = self._child(rec)
        if child is None or not self._alive(*child):
            return False
        stat = _proc_stat(child[0])
        return stat is not None and stat.state in ("T", "t")

    def _thaw(self, rec: _Record) -> None:
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
            if (s := _proc_stat(p)) is not None and s.state in ("T", "t")
        ]
        if stopped:
            _signal_pids(stopped, signal.SIGCONT)

    def _suspended(self, rec: _Record) -> bool:
        if rec.cgroups is not None and rec.cgroups.freezer_state() != "THAWED":
            return True
        return self._sigstopped(rec)

    def _status(self, rec: _Record) -> WorkloadStatus:
        wd = self._workdir(rec.name)
        started_at = rec.started_at
        stop = _read_json(wd / STOP_FILE)
        # Liveness before the exit file: the shim writes the file before it
        # exits, so "dead, and no file after that" really means no exit code.
        shim_alive = self._shim_alive(rec)
        child = self._child(rec)
        child_alive = child is not None and self._alive(*child)
        exit_code, exited_at = _read_exit(wd / EXIT_FILE)
        base = WorkloadStatus(state="Running", pid=rec.pid, started_at=started_at)
        if exit_code is not None:
            base.exit_code = exit_code
            base.finished_at = exited_at
            if stop is not None:
                base.state, base.reason = "Stopped", "Stopped"
                base.message = _stop_message(stop, exit_code)
            elif exit_code == 0:
                base.state, base.reason, base.message = "Succeeded", "Completed", "exited with 0"
            elif exit_code == 128 + signal.SIGKILL and rec.cgroups and rec.cgroups.oom_kills():
                base.state, base.reason = "Failed", "OOMKilled"
                base.message = "killed by the kernel: the workload used more than its memoryMiB"
            else:
                base.state, base.reason = "Failed", "Error"
                base.message = _exit_message(exit_code)
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
            base.message = _stop_message(stop, None)
            finished = stop.get("finished_at")
            base.finished_at = datetime.fromisoformat(finished) if finished else None
            return base
        base.state, base.reason = "Failed", "Killed"
        base.message = (
            "the workload's processes are gone and no exit code was recorded "
            "(its shim was killed, or the machine restarted)"
        )
        return base


def _exit_message(code: int) -> str:
    if code > 128 and 128 + 1 <= code <= 128 + 64:
        return f"exited with {code} (128 + {_signal_name(code - 128)}: killed by a signal)"
    return f"exited with {code}"


def _stop_message(stop: dict[str, Any], code: int | None) -> str:
    how = (
        f"killed with SIGKILL after the {stop.get('grace')}s grace period"
        if stop.get("signal") == "SIGKILL"
        else "ended after SIGTERM"
    )
    return f"stopped on request: {how}" + (f" (exit code {code})" if code is not None else "")


def _read_exit(path: Path) -> tuple[int | None, datetime | None]:
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except OSError:
        return None, None
    try:
        return int(text.strip()), datetime.fromtimestamp(mtime, UTC)
    except ValueError:
        return None, None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_tail(path: Path, count: int | None) -> bytes:
    try:
        with open(path, "rb") as f:
            if count is None:
                return f.read()
            if count <= 0:
                return b""
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - count))
            return f.read(count)
    except OSError:
        return b""


__all__ = ["NativeRuntime", "shim_main"]
