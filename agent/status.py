"""A placement's observed status as the agent writes it: the fields, from a runtime's view.

The agent owns ``state``, ``exitCode``, ``reason``, ``message``, ``restarts``,
``startedAt`` and ``finishedAt``; the rest of the status (conditions, the vnet
address) is the hub's, and the agent merges into it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runtimes.base import WorkloadStatus

Obj = dict[str, Any]


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def status_fields(
    state: str,
    reason: str = "",
    message: str = "",
    exit_code: int | None = None,
    restarts: int = 0,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> Obj:
    return {
        "state": state,
        "exitCode": exit_code,
        "reason": reason,
        "message": message,
        "restarts": restarts,
        "startedAt": iso(started_at),
        "finishedAt": iso(finished_at),
    }


def from_runtime(st: WorkloadStatus, restarts: int) -> Obj:
    return status_fields(
        st.state,
        st.reason,
        st.message,
        st.exit_code,
        restarts,
        st.started_at,
        st.finished_at,
    )


__all__ = ["from_runtime", "iso", "status_fields"]
