"""Faults a test asks a hub for, to cause what it cannot cause otherwise.

``GU_FAULTS_FILE=PATH`` arms them: while ``PATH`` exists, each of its lines
``point=seconds`` makes the code at ``point`` wait that long. The one point so far:

- ``store.fenced-begin`` — a shared store's write transaction on behalf of a reconcile
  leader, before it takes the write lock: long enough for a test to pause the leader
  (SIGSTOP) there, let another hub take over, and resume it, to see its late write
  refused (``Fenced``).

Without ``GU_FAULTS_FILE`` (always, outside such tests) ``pause`` returns at once.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("gu.faults")

_FILE = os.environ.get("GU_FAULTS_FILE")
_seen: tuple[float, dict[str, float]] = (-1.0, {})


def _faults() -> dict[str, float]:
    global _seen
    assert _FILE is not None
    try:
        mtime = os.stat(_FILE).st_mtime
    except OSError:
        return {}
    if mtime != _seen[0]:
        faults: dict[str, float] = {}
        with open(_FILE) as f:
            for line in f:
                point, _, seconds = line.strip().partition("=")
                if point:
                    try:
                        faults[point] = float(seconds or 0)
                    except ValueError:
                        continue
        _seen = (mtime, faults)
        log.warning("event=faults_armed faults=%s", faults)
    return _seen[1]


def pause(point: str) -> None:
    """Wait as long as the armed faults say at ``point`` (normally not at all)."""
    if _FILE is None:
        return
    seconds = _faults().get(point)
    if seconds:
        log.warning("event=fault_pause point=%s seconds=%s", point, seconds)
        time.sleep(seconds)


__all__ = ["pause"]
