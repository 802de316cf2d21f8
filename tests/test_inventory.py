"""The agent's inventory and usage agree with psutil on this host; the inf views keep GU's shapes."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil
import pytest

from agent.inventory import collect_inventory, collect_usage, normalize_arch
from runtimes.base import Capabilities
from specs.kinds import CpuInfo, Inventory, OsInfo, Usage
from specs.peerinfo import GIB, VIEWS, inf_cpu, inf_mem, inf_os, inf_storage


def test_inventory_agrees_with_psutil(tmp_path: Path) -> None:
    caps = {"native": Capabilities(True, version="v1"), "docker": Capabilities(True, accel=None)}
    inv = collect_inventory(caps, tmp_path)
    threads = psutil.cpu_count(logical=True)
    assert inv.cpu.threads == threads
    assert inv.cpu.cores == (psutil.cpu_count(logical=False) or threads)
    assert inv.memoryBytes == psutil.virtual_memory().total
    assert inv.storageBytes == psutil.disk_usage(str(tmp_path)).total
    assert inv.os.name == platform.system()
    assert inv.os.version == platform.release()
    assert inv.runtimes == ["native", "docker"]
    assert [(r.name, r.version) for r in inv.runtimeInfo] == [("native", "v1"), ("docker", "")]


def test_inventory_architecture_is_normalised() -> None:
    inv = collect_inventory({}, Path("/"))
    family, bits = normalize_arch(platform.machine())
    assert (inv.cpu.architecture, inv.cpu.bit) == (family, bits)
    assert inv.cpu.architecture in {"x86", "arm", "riscv", "ppc", "s390"}


@pytest.mark.parametrize(
    ("machine", "family", "bits"),
    [
        ("x86_64", "x86", [32, 64]),
        ("AMD64", "x86", [32, 64]),
        ("i686", "x86", [32]),
        ("armv7l", "arm", [32]),
        ("armv6l", "arm", [32]),
        ("riscv64", "riscv", [64]),
        ("ppc64le", "ppc", [64]),
        ("s390x", "s390", [64]),
        ("loongarch64", "loongarch64", None),
    ],
)
def test_normalize_arch(machine: str, family: str, bits: list[int] | None) -> None:
    got_family, got_bits = normalize_arch(machine)
    assert got_family == family
    if bits is not None:
        assert got_bits == bits
    else:
        assert got_bits in ([32], [64])


def test_normalize_arch_arm64_is_64_bit_at_least() -> None:
    for machine in ("aarch64", "arm64"):
        family, bits = normalize_arch(machine)
        assert family == "arm" and 64 in bits and set(bits) <= {32, 64}


def test_inventory_of_a_storage_folder_not_created_yet(tmp_path: Path) -> None:
    inv = collect_inventory({}, tmp_path / "not" / "yet")
    assert inv.storageBytes == psutil.disk_usage(str(tmp_path)).total


def test_usage_is_plausible(tmp_path: Path) -> None:
    usage = collect_usage(tmp_path, workloads=3)
    assert usage.workloads == 3
    assert 0.0 <= usage.cpuPercent <= 100.0
    assert 0 < usage.memoryAvailableBytes <= psutil.virtual_memory().total
    assert 0 <= usage.storageFreeBytes <= psutil.disk_usage(str(tmp_path)).total


def sample() -> tuple[Inventory, Usage]:
    inv = Inventory(
        os=OsInfo(name="Linux", version="6.1.0-18-amd64"),
        cpu=CpuInfo(architecture="x86", bit=[32, 64], cores=4, threads=8),
        memoryBytes=16 * GIB,
        storageBytes=500 * GIB + GIB // 3,
        runtimes=["native"],
    )
    usage = Usage(
        cpuPercent=12.5,
        memoryAvailableBytes=6 * GIB + GIB // 2,
        storageFreeBytes=123 * GIB + GIB // 4,
        workloads=1,
    )
    return inv, usage


def test_inf_views_have_exactly_the_gu_fields() -> None:
    inv, usage = sample()
    assert inf_storage(inv, usage) == {"gib": 123.25, "totalGib": 500.33}
    assert inf_cpu(inv, usage) == {
        "architecture": "x86",
        "bit": [32, 64],
        "cores": 4,
        "threads": 8,
        "usage": 12.5,
    }
    assert inf_mem(inv, usage) == {"gib": 6.5, "total": 16.0}
    assert inf_os(inv) == {"name": "Linux", "version": "6.1.0-18-amd64"}
    assert set(VIEWS) == {"storage", "cpu", "mem", "os"}


def test_inf_views_of_this_host(tmp_path: Path) -> None:
    inv = collect_inventory({}, tmp_path)
    usage = collect_usage(tmp_path, 0)
    mem = inf_mem(inv, usage)
    assert mem["total"] == round(psutil.virtual_memory().total / 2**30, 2)
    assert 0 < mem["gib"] <= mem["total"]
    storage = inf_storage(inv, usage)
    assert 0 <= storage["gib"] <= storage["totalGib"]
