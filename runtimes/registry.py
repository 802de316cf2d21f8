"""The runtime drivers gu knows, by name, and how to build one.

The agent never hard-codes its drivers: it asks :data:`DRIVERS` (``gu agent
--runtimes a,b`` picks among them; by default every available one is used).
Each entry is a factory ``factory(state_dir) -> Runtime`` that imports its
driver module only when called, so an agent on a machine without one
runtime's dependencies still starts with the others.

Adding a runtime is one module under ``runtimes/`` implementing
``runtimes.base.Runtime`` plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from runtimes.base import Runtime, RuntimeFailure

Factory = Callable[[Path], Runtime]


def _native(state_dir: Path) -> Runtime:
    from runtimes.native import NativeRuntime

    return NativeRuntime(state_dir)


#: Runtime drivers by name; each is built as ``factory(<agent state>/runtimes/<name>)``.
DRIVERS: Final[dict[str, Factory]] = {"native": _native}


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


def create(name: str, state_dir: Path) -> Runtime:
    """Build driver ``name`` over its own ``state_dir``; :class:`UnknownRuntime` if none."""
    factory = DRIVERS.get(name)
    if factory is None:
        raise UnknownRuntime([name])
    return factory(state_dir)


__all__ = ["DRIVERS", "Factory", "UnknownRuntime", "create", "known"]
