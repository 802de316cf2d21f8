"""cgroups for workloads: find a writable hierarchy, create one cgroup per workload
with its limits, freeze and thaw it, kill everything in it, remove it.

Shared by the drivers that run host processes (native, and the VM runtime's
QEMU). Flow: :meth:`CgroupLayout.detect` once per driver finds where this
agent may create cgroups — cgroup v1 (one hierarchy per controller:
``memory``, ``cpu``, ``freezer``) or a pure v2 hierarchy — and returns None
(with a log line why) where none is writable: workloads then run without
limits, never failing for it. :meth:`CgroupLayout.create` makes
``gu/<leaf>`` with the CPU and memory limits under the agent's own cgroup
(v1) or under the v2 root (v2 forbids processes next to child cgroups with
controllers). A :class:`Cgroups` is one workload's set of dirs; it
serialises to JSON so a restarted agent finds it again.

Only the standard library and psutil (via ``runtimes.procs``): the native
shim imports this module and must start fast.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtimes.procs import signal_pids
from specs.logfmt import kv

log = logging.getLogger("gu.runtime.cgroups")

CgroupMode = Literal["auto", "v1", "v2", "none"]

_POLL = 0.05
# After SIGKILL: how long to wait for a cgroup's processes to vanish.
_KILL_TIMEOUT = 3.0
_CFS_PERIOD_US = 100_000
_V1_CONTROLLERS = ("memory", "cpu", "freezer")


def cg_write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def cg_pids(directory: Path) -> set[int]:
    try:
        text = (directory / "cgroup.procs").read_text()
    except OSError:
        return set()
    return {int(line) for line in text.split()}


@dataclass
class Cgroups:
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
    def from_json(cls, data: Any) -> Cgroups | None:
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
            found |= cg_pids(d)
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
            cg_write(path, "FROZEN" if frozen else "THAWED")
        else:
            cg_write(path, "1" if frozen else "0")

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
                cg_write(d / "cgroup.kill", "1")
        signal_pids(self.pids(), signal.SIGKILL)

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
                    signal_pids(cg_pids(d), signal.SIGKILL)
                    time.sleep(_POLL)


@dataclass
class CgroupLayout:
    """Where this agent can create workload cgroups: a parent dir per hierarchy."""

    version: Literal["v1", "v2"]
    parents: dict[str, Path]
    own: dict[str, Path]

    @classmethod
    def detect(cls, mode: CgroupMode) -> CgroupLayout | None:
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
        layout: CgroupLayout | None = None
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
    ) -> CgroupLayout:
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
    def _v2(cls, mount: tuple[str, str, Path, list[str]], own: dict[str, str]) -> CgroupLayout:
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
                    cg_write(
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

    def create(self, leaf: str, cpu: float, memory_mib: int) -> Cgroups | None:
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
        return Cgroups(self.version, dirs, dict(self.own))


def _apply_v1_limit(controller: str, d: Path, cpu: float, memory_mib: int) -> None:
    if controller == "memory":
        limit = str(memory_mib * 1024 * 1024)
        # No swap beyond the limit (memsw counts memory + swap; absent without
        # swap accounting). The kernel wants memsw >= limit at every step, so
        # the order depends on whether a reused cgroup's limit goes up or down.
        memsw = d / "memory.memsw.limit_in_bytes"
        try:
            cg_write(d / "memory.limit_in_bytes", limit)
            if memsw.exists():
                cg_write(memsw, limit)
        except OSError:
            cg_write(memsw, limit)
            cg_write(d / "memory.limit_in_bytes", limit)
    elif controller == "cpu":
        period = int((d / "cpu.cfs_period_us").read_text())
        cg_write(d / "cpu.cfs_quota_us", str(max(1000, int(cpu * period))))


def _apply_v2_limits(d: Path, cpu: float, memory_mib: int) -> None:
    if (d / "memory.max").exists():
        cg_write(d / "memory.max", str(memory_mib * 1024 * 1024))
        if (d / "memory.swap.max").exists():
            cg_write(d / "memory.swap.max", "0")
    else:
        log.warning(kv("cgroup.no_controller", path=d, controller="memory", limits="none"))
    if (d / "cpu.max").exists():
        cg_write(d / "cpu.max", f"{max(1000, int(cpu * _CFS_PERIOD_US))} {_CFS_PERIOD_US}")
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


__all__ = ["CgroupLayout", "CgroupMode", "Cgroups", "cg_pids", "cg_write"]
