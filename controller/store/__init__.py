"""controller/store: the hub's desired state and its change feed.

- ``protocol.Store`` — the typed Protocol every caller is written against;
- ``objects.ObjectStore`` — the rules of a write, once for every backend;
- ``sqlite.SQLiteStore`` — the embedded default (SQLite in WAL mode);
- ``types`` — errors (with their HTTP status) and the records a store returns.

``open_store(path)`` gives the hub's store; ``Store`` here is the Protocol.
"""

from __future__ import annotations

from pathlib import Path

from controller.store.objects import ObjectStore
from controller.store.protocol import Obj, Store
from controller.store.sqlite import SQLiteStore
from controller.store.types import (
    APPLY_SET_ANNOTATION,
    AlreadyExists,
    ApplyAction,
    ApplyResult,
    Change,
    ChangeType,
    Conflict,
    Event,
    Gone,
    NotFound,
    StoreError,
)


def open_store(path: Path | str) -> Store:
    """The hub's store at ``path`` (a SQLite file; created on first use)."""
    return SQLiteStore(path)


__all__ = [
    "APPLY_SET_ANNOTATION",
    "AlreadyExists",
    "ApplyAction",
    "ApplyResult",
    "Change",
    "ChangeType",
    "Conflict",
    "Event",
    "Gone",
    "NotFound",
    "Obj",
    "ObjectStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "open_store",
]
