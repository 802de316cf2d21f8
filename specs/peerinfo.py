"""The Provider Information API views: ``/peers/{nodeId}/inf/{storage,cpu,mem,os}``.

Golem Unlimited's hub answered these four questions about each provider; gu
keeps the shapes so existing tools can read them. They are pure functions of
what the agent reports (``Inventory`` at registration, ``Usage`` every
heartbeat), so the hub serves them straight from the Provider object and they
are tested without a hub. Sizes are GiB (2**30 bytes) rounded to 2 decimals.
``VIEWS`` maps the path segment to its function for the route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypedDict

from specs.kinds import Inventory, Usage

GIB: Final = 1 << 30


def _gib(n: int) -> float:
    return round(n / GIB, 2)


class StorageView(TypedDict):
    gib: float
    totalGib: float


class CpuView(TypedDict):
    architecture: str
    bit: list[int]
    cores: int
    threads: int
    usage: float


class MemView(TypedDict):
    gib: float
    total: float


class OsView(TypedDict):
    name: str
    version: str


def inf_storage(inv: Inventory, usage: Usage) -> StorageView:
    """Free (``gib``) and total (``totalGib``) GiB of the agent's storage."""
    return {"gib": _gib(usage.storageFreeBytes), "totalGib": _gib(inv.storageBytes)}


def inf_cpu(inv: Inventory, usage: Usage) -> CpuView:
    """Architecture family, bitnesses, cores, threads and current CPU use (percent)."""
    return {
        "architecture": inv.cpu.architecture,
        "bit": list(inv.cpu.bit),
        "cores": inv.cpu.cores,
        "threads": inv.cpu.threads,
        "usage": usage.cpuPercent,
    }


def inf_mem(inv: Inventory, usage: Usage) -> MemView:
    """Available (``gib``) and total (``total``) GiB of memory."""
    return {"gib": _gib(usage.memoryAvailableBytes), "total": _gib(inv.memoryBytes)}


def inf_os(inv: Inventory, usage: Usage | None = None) -> OsView:
    """OS name and version (usage is accepted for a uniform signature and ignored)."""
    return {"name": inv.os.name, "version": inv.os.version}


VIEWS: Final[dict[str, Callable[[Inventory, Usage], object]]] = {
    "storage": inf_storage,
    "cpu": inf_cpu,
    "mem": inf_mem,
    "os": inf_os,
}
