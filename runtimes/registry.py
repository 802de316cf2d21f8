"""The runtime drivers gu knows, by name, and how to build one.

The agent never hard-codes its drivers: it asks :data:`DRIVERS` (``gu agent
--runtimes a,b`` picks among them; by default every available one is used).
Each entry is a factory ``factory(state_dir, options) -> Runtime`` that
imports its driver module only when called, so an agent on a machine without
one runtime's dependencies still starts with the others. ``RuntimeOptions``
carries the agent's driver settings (``--docker-host`` and the like).

Adding a runtime is one module under ``runtimes/`` implementing
``runtimes.base.Runtime`` plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runtimes.base import Runtime, RuntimeFailure


@dataclass(frozen=True)
class RuntimeOptions:
    """The agent's settings for its drivers (each driver reads its own)."""

    #: the Docker engine's address; None: ``DOCKER_HOST`` or the usual socket
    docker_host: str | None = None
    #: seconds an image the docker driver loaded stays after no container uses it
    docker_image_gc_delay: float = 300.0
    #: the vm runtime's accelerator: auto (KVM when a probe boots, else TCG), kvm or tcg
    vm_accel: str = "auto"
    #: where the vm runtime finds its guest assets; None: its state dir's ``assets/``
    vm_assets: Path | None = None


Factory = Callable[[Path, RuntimeOptions], Runtime]


def _native(state_dir: Path, options: RuntimeOptions) -> Runtime:
    from runtimes.native import NativeRuntime

    return NativeRuntime(state_dir)


def _docker(state_dir: Path, options: RuntimeOptions) -> Runtime:
    from runtimes.docker import DockerRuntime

    return DockerRuntime(
        state_dir,
        docker_host=options.docker_host,
        image_gc_delay=options.docker_image_gc_delay,
    )


def _vm(state_dir: Path, options: RuntimeOptions) -> Runtime:
    from runtimes.vm import VmRuntime

    return VmRuntime(state_dir, assets_dir=options.vm_assets, accel=options.vm_accel)


#: Runtime drivers by name; each is built as ``factory(<agent state>/runtimes/<name>, options)``.
DRIVERS: Final[dict[str, Factory]] = {"native": _native, "docker": _docker, "vm": _vm}


class UnknownRuntime(RuntimeFailure):
    """A runtime name no driver answers to."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(
            f"unknown runtime(s) {', '.join(names)}; this agent knows: {', '.join(DRIVERS)}"
        )
        self.names = names


def known() -> list[str]:
    """The names of every driver, in registry order."""
    return list(DRIVERS)


def create(name: str, state_dir: Path, options: RuntimeOptions | None = None) -> Runtime:
    """Build driver ``name`` over its own ``state_dir``; :class:`UnknownRuntime` if none."""
    factory = DRIVERS.get(name)
    if factory is None:
        raise UnknownRuntime([name])
    return factory(state_dir, options or RuntimeOptions())


__all__ = ["DRIVERS", "Factory", "RuntimeOptions", "UnknownRuntime", "create", "known"]
