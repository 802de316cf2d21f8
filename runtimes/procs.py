"""Processes as the kernel sees them: ``/proc/PID/stat``, process groups, signals.

Shared by the drivers that run host processes (the native runtime and its
shim; the VM runtime's QEMU). A pid alone is no identity, since pids are
recycled: :func:`start_ticks` (``/proc/PID/stat`` field 22, the start time in
clock ticks since boot) together with the pid names one process for good.
Only the standard library and psutil, so a shim importing it starts fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` we judge processes by."""

    state: str
    ppid: int
    pgid: int
    start_ticks: int


def proc_stat(pid: int) -> ProcStat | None:
    """Read ``/proc/PID/stat``; None when the process does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[19]))
    except (IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat.start_ticks if stat else None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for pid in psutil.pids():
        stat = proc_stat(pid)
        if stat and stat.pgid == pgid and stat.state not in ("Z", "X"):
            members.append(pid)
    return members


def signal_pids(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


__all__ = ["ProcStat", "group_members", "proc_stat", "signal_name", "signal_pids", "start_ticks"]
