"""The hub's copies of workload output: one file per Placement, the run before kept aside.

Agents upload a placement's whole output (``PUT /v1/placements/{name}/logs``)
with the run number (the restart count). Under ``<state>/logs/``:

- ``<placement>.log`` — the current run's output, replaced atomically on each upload;
- ``<placement>.run`` — the run it belongs to;
- ``previous/<placement>.log`` — the run before, moved there when the run number moves on.

Output is shown through a Session's placements (``gu logs``), so once a
Placement is deleted its files are unreachable: ``sweep`` removes them (the
hub runs it at start and every ``SWEEP_INTERVAL`` seconds), as the output of a
deleted pod goes with it in Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("gu.hub.logs")

SWEEP_INTERVAL = 60.0
_SUFFIXES = (".log", ".run", ".tmp")


class OutputLogs(Protocol):
    """Where the hub keeps placements' output: files here (``PlacementLogs``), or the
    shared database of several hubs (``controller.shared.SharedLogs``)."""

    def store(self, placement: str, body: bytes, run: int | None) -> None: ...

    def read(self, placement: str, previous: bool = False) -> str: ...

    def sweep(self, exists: Callable[[str], bool]) -> int: ...

    async def sweep_every(
        self, exists: Callable[[str], bool], stop: asyncio.Event, interval: float = ...
    ) -> None: ...


class PlacementLogs:
    """The log files under ``root`` (``<state>/logs``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, placement: str, previous: bool = False) -> Path:
        """The current run's copy of ``placement``'s output, or the run before it."""
        return (self.root / "previous" if previous else self.root) / f"{placement}.log"

    def store(self, placement: str, body: bytes, run: int | None) -> None:
        """Replace the current run's copy; when ``run`` moves on, keep the old one as previous."""
        path = self.path(placement)
        run_file = path.with_suffix(".run")
        path.parent.mkdir(parents=True, exist_ok=True)
        if run is not None:
            try:
                stored: int | None = int(run_file.read_text())
            except (OSError, ValueError):
                stored = None
            if stored is not None and stored != run and path.exists():
                kept = self.path(placement, previous=True)
                kept.parent.mkdir(exist_ok=True)
                path.replace(kept)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(body)
        tmp.replace(path)
        if run is not None:
            run_file.write_text(str(run))

    def read(self, placement: str, previous: bool = False) -> str:
        """The stored output ("" if none was uploaded)."""
        path = self.path(placement, previous)
        return path.read_text(errors="replace") if path.exists() else ""

    def sweep(self, exists: Callable[[str], bool]) -> int:
        """Remove the files of every placement for which ``exists`` is False; the number removed."""
        removed = 0
        for folder in (self.root, self.root / "previous"):
            if not folder.is_dir():
                continue
            for file in folder.iterdir():
                if not file.is_file() or file.suffix not in _SUFFIXES or exists(file.stem):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                    removed += 1
        if removed:
            log.info("event=logs_swept files=%d", removed)
        return removed

    async def sweep_every(
        self, exists: Callable[[str], bool], stop: asyncio.Event, interval: float = SWEEP_INTERVAL
    ) -> None:
        """``sweep`` now and every ``interval`` seconds until ``stop``."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sweep, exists)
            except Exception:  # a full disk or a permission slip: say so, try again later
                log.exception("event=logs_sweep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
