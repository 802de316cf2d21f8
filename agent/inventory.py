"""What this machine has (inventory) and what it is using now (usage), via psutil.

The agent sends ``collect_inventory`` when it registers and on heartbeats, and
``collect_usage`` on every heartbeat; the hub keeps both on the Provider object,
matches Session selectors against them and serves the ``/peers/{nodeId}/inf/*``
views (``specs.peerinfo``) from them.

Choices worth knowing:

- ``os.version`` is ``platform.release()``: on Linux the kernel release
  (``6.8.0-45-generic``), on Windows ``10``/``11``, on macOS the Darwin
  release. The kernel is what native and VM workloads actually depend on
  (syscalls, cgroups, KVM); the distribution is better expressed as a label.
- ``cpu.architecture`` is normalised to a family (``x86``, ``arm``, ``riscv``,
  ``ppc``, ``s390``) so that selectors need not know every spelling
  (``x86_64``, ``AMD64``, ``aarch64``, ``arm64``, ``armv7l``…); an unknown
  machine string is passed through as it is. ``cpu.bit`` lists the word sizes
  the machine can run: 64-bit x86 runs 32-bit code too; 64-bit ARM only claims
  32-bit when the kernel says some CPU can run AArch32 at EL0 (many current
  ARM cores cannot), since nothing cheaper proves it.
- ``cpuPercent`` uses ``psutil.cpu_percent(interval=None)``, which never
  blocks: it measures since the previous call *from the same thread*, so the
  first call in a thread returns 0.0 (psutil ≥ 6 makes an exception for the
  thread that imported it: there it is the average since the import). Call
  ``collect_usage`` from one thread, every heartbeat, and each figure is the
  average over one heartbeat interval.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import psutil

from runtimes.base import Capabilities
from specs.kinds import CpuInfo, Inventory, OsInfo, RuntimeInfo, Usage

# Lower-cased machine strings (uname -m, Windows PROCESSOR_ARCHITECTURE) → (family, bits).
_MACHINES: Final[dict[str, tuple[str, list[int]]]] = {
    "x86_64": ("x86", [32, 64]),
    "amd64": ("x86", [32, 64]),
    "x64": ("x86", [32, 64]),
    "i386": ("x86", [32]),
    "i486": ("x86", [32]),
    "i586": ("x86", [32]),
    "i686": ("x86", [32]),
    "x86": ("x86", [32]),
    "aarch64": ("arm", [64]),
    "arm64": ("arm", [64]),
    "aarch64_be": ("arm", [64]),
    "armv8l": ("arm", [32]),  # a 32-bit userland on a 64-bit core
    "riscv64": ("riscv", [64]),
    "riscv32": ("riscv", [32]),
    "ppc64": ("ppc", [64]),
    "ppc64le": ("ppc", [64]),
    "ppc": ("ppc", [32]),
    "ppcle": ("ppc", [32]),
    "powerpc": ("ppc", [32]),
    "s390x": ("s390", [64]),
    "s390": ("s390", [32]),
}

# Present (on arm64 Linux with 32-bit compat) and non-empty when some CPU runs AArch32 at EL0.
_AARCH32_EL0: Final = Path("/sys/devices/system/cpu/aarch32_el0")


def normalize_arch(machine: str) -> tuple[str, list[int]]:
    """Map a machine string (``platform.machine()``) to (family, bitnesses it runs).

    Unknown strings are returned unchanged, with the bitness of this Python
    build as the best guess.
    """
    key = machine.strip().lower()
    known = _MACHINES.get(key)
    if known is not None:
        family, bits = known
        if family == "arm" and bits == [64] and _aarch32_capable():
            bits = [32, 64]
        return family, list(bits)
    if key.startswith("arm"):  # armv5tel, armv6l, armv7l, armv7hl…
        return "arm", [32]
    return machine, [64 if platform.architecture()[0] == "64bit" else 32]


def _aarch32_capable() -> bool:
    try:
        return bool(_AARCH32_EL0.read_text().strip())
    except OSError:
        return False


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: the storage folder may not exist yet."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def runtime_info(name: str, caps: Capabilities) -> RuntimeInfo:
    """The inventory entry of one driver's fingerprint."""
    return RuntimeInfo(
        name=name,
        version=caps.version,
        accel=caps.accel,
        suspendKeepsMemory=caps.suspend_keeps_memory,
        details=dict(caps.details),
    )


def collect_inventory(runtimes: Mapping[str, Capabilities], storage_path: Path) -> Inventory:
    """This machine's inventory: OS, CPU, total memory, the storage at ``storage_path``.

    ``runtimes`` maps the agent's runtime drivers (e.g. ``native``, ``docker``)
    to their fingerprints, taken once at start; both are reported as given.
    """
    family, bits = normalize_arch(platform.machine())
    threads = psutil.cpu_count(logical=True) or 1
    cores = psutil.cpu_count(logical=False) or threads
    return Inventory(
        os=OsInfo(name=platform.system(), version=platform.release()),
        cpu=CpuInfo(architecture=family, bit=bits, cores=cores, threads=threads),
        memoryBytes=psutil.virtual_memory().total,
        storageBytes=psutil.disk_usage(str(_existing(storage_path))).total,
        runtimes=list(runtimes),
        runtimeInfo=[runtime_info(name, caps) for name, caps in runtimes.items()],
    )


def collect_usage(
    storage_path: Path, workloads: int, networks: dict[str, Any] | None = None
) -> Usage:
    """What this machine is using now; ``workloads`` is the agent's count of running ones.

    ``cpuPercent`` is system-wide since the previous call from this thread, and
    0.0 on a thread's first call (it never blocks to measure; see the module doc).
    """
    return Usage(
        cpuPercent=psutil.cpu_percent(interval=None),
        memoryAvailableBytes=psutil.virtual_memory().available,
        storageFreeBytes=psutil.disk_usage(str(_existing(storage_path))).free,
        workloads=workloads,
        networks=networks or {},
    )
