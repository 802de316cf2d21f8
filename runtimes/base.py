"""The runtime driver interface: what every way of running a workload answers.

Modelled on Nomad's task-driver plugins. The agent's local reconcile loop only
ever talks to a :class:`Runtime`; everything specific to processes, containers
or VMs stays behind it. The short list of verbs:

- ``fingerprint()`` — what this driver can do on this machine
  (:class:`Capabilities`: available or why not, version, accelerator, whether
  a suspended workload keeps its memory); the agent reports it in the
  Provider's inventory, so the scheduler and a user see it.
- ``prepare(image)`` — check (and, where useful, pre-load) an image before any
  workload needs it, so a bad image fails early with a clear reason.
- ``start(name, workload, image, attachments)`` — run one placement's
  workload, with what the placement brings besides its image
  (:class:`Attachments`: a virtual-network attachment, exposed folders).
- ``inspect(name)`` — the observed state, read from the world every time.
- ``suspend`` / ``resume`` — freeze and thaw without losing state.
- ``stop(name, grace)`` — polite signal, then force after ``grace`` seconds.
- ``logs(name)`` — what the workload printed.
- ``remove(name)`` — stop if needed and delete every trace of it.
- ``adopt()`` — Nomad's ``RecoverTask``: after an agent restart, find the
  workloads a previous agent process started and manage them again, without
  starting anything twice.

Why the driver, not the agent, owns the workload's records: the agent can be
``kill -9``'d at any moment. A driver keeps what it needs to find and judge its
workloads on disk, in its own ``state_dir``, so a fresh process answers
``inspect`` exactly like the old one would have. ``inspect`` is level-triggered
like the rest of gu: it never trusts a remembered state when the world can be
read.

``name`` is always the placement name: lower-case letters, digits, ``-`` and
``.``, starting and ending with a letter or digit (:func:`check_name`), so a
driver may use it as a file, cgroup or container name without escaping.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    # Only for annotations: the shim of the native runtime imports this module
    # and must start fast, without pydantic.
    from specs.kinds import Workload

#: Observed states a runtime reports; a subset of ``specs.kinds.PlacementState``
#: ("Pending" and "Pulling" belong to the agent, before a runtime is involved).
WORKLOAD_STATES: Final = frozenset(
    {"Starting", "Running", "Suspended", "Succeeded", "Failed", "Stopped"}
)
#: States after which nothing runs any more.
FINISHED_STATES: Final = frozenset({"Succeeded", "Failed", "Stopped"})

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


@dataclass
class WorkloadStatus:
    """What a runtime observed about one workload, in placement-status terms.

    ``state`` is one of :data:`WORKLOAD_STATES`. ``reason`` is a CamelCase
    machine word a script can switch on ("Started", "Completed", "Error",
    "Killed", "OOMKilled", "Stopped", "Suspended"); ``message`` is the
    sentence for a human. ``pid`` is the workload's main process where the
    runtime has one (for the native runtime, its shim, the process-group
    leader).
    """

    state: str
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    pid: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """True when nothing of the workload runs any more."""
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class Capabilities:
    """A driver's fingerprint: what it can do here (Nomad's driver ``Fingerprint``).

    ``available`` False comes with ``reason`` (what is missing, what to
    install). ``accel`` names the accelerator a VM driver uses (``kvm``,
    ``tcg``, ``hvf``, ``whpx``), None for others. ``suspend_keeps_memory``: a
    suspended workload still holds its memory (a frozen process, a paused
    container, a stopped VM), so preemption by suspension frees CPU only.
    ``details`` holds driver-specific facts as short strings (e.g. the cgroup
    version).
    """

    available: bool
    version: str = ""
    accel: str | None = None
    suspend_keeps_memory: bool = True
    reason: str = ""
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkAttachment:
    """The placement's member address on a VirtualNetwork, as the hub assigned it."""

    network: str
    address: str
    mac: str
    mtu: int
    #: the per-host bus the workload's NIC joins (``GROUP:PORT``)
    bus: str
    #: the network namespace the bus lives in (None: the host's, bound to 127.0.0.1)
    netns: str | None = None


@dataclass(frozen=True)
class FolderMount:
    """A host folder exposed inside the workload at ``path`` (read-only unless said)."""

    source: Path
    path: str
    read_only: bool = True


@dataclass(frozen=True)
class Attachments:
    """What a placement brings besides its image; empty for a plain workload."""

    network: NetworkAttachment | None = None
    folders: tuple[FolderMount, ...] = ()


NO_ATTACHMENTS: Final = Attachments()


class RuntimeFailure(Exception):
    """A runtime could not do what was asked; the message says what and what to do."""


class WorkloadNotFound(RuntimeFailure):
    """The runtime has no workload of that name (never started, or removed)."""

    def __init__(self, runtime: str, name: str) -> None:
        super().__init__(
            f"{runtime} runtime: no workload named {name!r} (never started here, "
            "or already removed); start it first, or call adopt() after an agent restart"
        )
        self.runtime = runtime
        self.name = name


class WorkloadExists(RuntimeFailure):
    """``start`` was called for a name that already has a workload."""

    def __init__(self, runtime: str, name: str) -> None:
        super().__init__(
            f"{runtime} runtime: a workload named {name!r} already exists; "
            "inspect it, or remove() it before starting it again"
        )
        self.runtime = runtime
        self.name = name


class ImageRejected(RuntimeFailure):
    """The image is unreadable or unsafe (e.g. a tarball member escaping its folder)."""


class StartFailed(RuntimeFailure):
    """The workload could not be started (empty command, program not found, ...)."""


class InvalidName(RuntimeFailure):
    """A workload name that is not a safe placement name."""


def tail_budget(tail_bytes: int, out_size: int, err_size: int) -> tuple[int, int]:
    """How many bytes of the end of stdout and of stderr fit in ``tail_bytes``.

    The budget every driver's ``logs(tail_bytes=…)`` shares out: stderr gets up to
    half of it (more when stdout is shorter), stdout the rest.
    """
    tail = max(0, tail_bytes)
    err_take = min(err_size, max(tail // 2, tail - out_size))
    return min(out_size, tail - err_take), err_take


def file_size(path: Path) -> int:
    """Bytes in ``path`` now (0 if it is missing)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_tail(path: Path, count: int | None) -> bytes:
    """The last ``count`` bytes of ``path`` (all of it for None; b"" if it is missing)."""
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


def read_logs(stdout: Path, stderr: Path, tail_bytes: int | None = None) -> bytes:
    """``logs()`` of a driver that keeps the two streams in files: stdout then stderr;
    with ``tail_bytes``, the end of each as :func:`tail_budget` shares it out (only that
    much is read)."""
    if tail_bytes is None:
        return read_tail(stdout, None) + read_tail(stderr, None)
    out_take, err_take = tail_budget(tail_bytes, file_size(stdout), file_size(stderr))
    return read_tail(stdout, out_take) + read_tail(stderr, err_take)


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe placement name, else raise :class:`InvalidName`."""
    if not _NAME_RE.match(name):
        raise InvalidName(
            f"workload name {name!r} is not valid: use 1-253 lower-case letters, digits, "
            "'-' or '.', starting and ending with a letter or digit"
        )
    return name


@runtime_checkable
class Runtime(Protocol):
    """One way of running workloads. Every driver is built as ``Driver(state_dir)``.

    ``state_dir`` is the driver's own folder under the agent's state dir; the
    driver keeps there everything it needs to find its workloads again after
    the agent restarts.
    """

    name: str

    def fingerprint(self) -> Capabilities:
        """What this driver can do on this machine (see :class:`Capabilities`)."""
        ...

    def prepare(self, image_path: Path, image_hash: str) -> None:
        """Check an image (already verified against ``image_hash`` by the image cache).

        Raises :class:`ImageRejected` when it cannot be run by this driver.
        """
        ...

    def start(
        self,
        name: str,
        workload: Workload,
        image_path: Path,
        attachments: Attachments = NO_ATTACHMENTS,
    ) -> WorkloadStatus:
        """Start ``workload`` from ``image_path`` as ``name``; return its first status.

        ``attachments`` are what the placement brings besides its image; a
        driver that cannot provide one raises :class:`StartFailed` saying so.
        Raises :class:`WorkloadExists`, :class:`ImageRejected` or
        :class:`StartFailed`; nothing of the workload is left behind then.
        """
        ...

    def inspect(self, name: str) -> WorkloadStatus:
        """The workload's state as observed now. Raises :class:`WorkloadNotFound`."""
        ...

    def suspend(self, name: str) -> WorkloadStatus:
        """Freeze the workload (state "Suspended"). A finished workload is left as is."""
        ...

    def resume(self, name: str) -> WorkloadStatus:
        """Thaw a suspended workload (state "Running" again)."""
        ...

    def stop(self, name: str, grace: float = 10.0) -> WorkloadStatus:
        """Ask the workload to end, force it after ``grace`` seconds; return the final status.

        A running (or suspended) workload ends as "Stopped"; one that had
        already finished keeps its "Succeeded"/"Failed" status.
        """
        ...

    def logs(self, name: str, tail_bytes: int | None = None) -> bytes:
        """What the workload printed: stdout followed by stderr (not interleaved).

        With ``tail_bytes``, at most that many bytes: the end of each stream,
        the budget shared between them.
        """
        ...

    def remove(self, name: str) -> None:
        """Kill the workload if it still runs and delete all its files. Idempotent."""
        ...

    def adopt(self) -> list[str]:
        """Names of workloads left by a previous agent process (running or finished).

        They are never started again: from now on this instance answers
        ``inspect``/``stop``/``logs``/``remove`` for them.
        """
        ...


__all__ = [
    "FINISHED_STATES",
    "NO_ATTACHMENTS",
    "WORKLOAD_STATES",
    "Attachments",
    "Capabilities",
    "FolderMount",
    "ImageRejected",
    "InvalidName",
    "NetworkAttachment",
    "Runtime",
    "RuntimeFailure",
    "StartFailed",
    "WorkloadExists",
    "WorkloadNotFound",
    "WorkloadStatus",
    "check_name",
    "file_size",
    "read_logs",
    "read_tail",
    "tail_budget",
]
