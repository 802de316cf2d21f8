"""The native runtime's files: one folder per workload, and the records in it.

Everything lives in ``state_dir/<name>/``: the unpacked image (``root/``),
``launch.json`` (what the shim runs; deleted once it runs, it may hold
secrets), ``proc.json`` (the shim's pid, pgid, start ticks and cgroups,
written by the agent), ``child.json`` (the program's pid, written by the
shim), ``exit_code``, ``stopped``, and the output. A fresh agent process reads
these and ``/proc`` again, so it answers exactly as the old one would have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtimes.cgroups import Cgroups
from runtimes.procs import signal_name
from specs.fileio import write_atomic

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


def now() -> datetime:
    return datetime.now(UTC)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when missing or not (yet) valid."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Record:
    """proc.json: how to find the workload's processes again."""

    name: str
    pid: int
    pgid: int
    start_ticks: int
    create_time: float
    started_at: datetime
    command: list[str]
    cgroups: Cgroups | None

    @classmethod
    def load(cls, path: Path) -> Record | None:
        data = read_json(path)
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
                cgroups=Cgroups.from_json(data.get("cgroup")),
            )
        except (KeyError, TypeError, ValueError):
            return None


# ------------------------------------------------ reading what a workload left


def exit_message(code: int) -> str:
    if code > 128 and 128 + 1 <= code <= 128 + 64:
        return f"exited with {code} (128 + {signal_name(code - 128)}: killed by a signal)"
    return f"exited with {code}"


def stop_message(stop: dict[str, Any], code: int | None) -> str:
    how = (
        f"killed with SIGKILL after the {stop.get('grace')}s grace period"
        if stop.get("signal") == "SIGKILL"
        else "ended after SIGTERM"
    )
    return f"stopped on request: {how}" + (f" (exit code {code})" if code is not None else "")


def read_exit(path: Path) -> tuple[int | None, datetime | None]:
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except OSError:
        return None, None
    try:
        return int(text.strip()), datetime.fromtimestamp(mtime, UTC)
    except ValueError:
        return None, None
