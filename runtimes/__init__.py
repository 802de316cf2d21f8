"""runtimes: one driver per way of running a workload, behind one interface.

The agent talks only to :class:`Runtime` (``runtimes.base``); each driver is
built as ``Driver(state_dir)`` and keeps its records there, so a restarted
agent finds its workloads again with ``adopt()``. ``runtimes`` imports only
``specs`` (and the standard library and psutil).
"""

from runtimes.base import (
    FINISHED_STATES,
    WORKLOAD_STATES,
    ImageRejected,
    InvalidName,
    Runtime,
    RuntimeFailure,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
    check_name,
)
from runtimes.native import NativeRuntime

__all__ = [
    "FINISHED_STATES",
    "WORKLOAD_STATES",
    "ImageRejected",
    "InvalidName",
    "NativeRuntime",
    "Runtime",
    "RuntimeFailure",
    "StartFailed",
    "WorkloadExists",
    "WorkloadNotFound",
    "WorkloadStatus",
    "check_name",
]
