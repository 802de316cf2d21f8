"""controller/store: the hub's desired state and its change feed.

- ``protocol.Store`` — the typed Protocol every caller is written against;
- ``objects.ObjectStore`` — the rules of a write, once for every backend;
- ``sqlite.SQLiteStore`` — the embedded default (SQLite in WAL mode);
- ``postgres.PostgresStore`` — PostgreSQL, for several hubs on one database;
- ``types`` — errors (with their HTTP status) and the records a store returns.

``open_store(where)`` gives the hub's store (a file path, or a ``postgresql://`` URL);
``Store`` here is the Protocol.
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
    ChangeText,
    ChangeType,
    Conflict,
    Event,
    Fenced,
    Gone,
    NotFound,
    StoreError,
    Unavailable,
)


def is_store_url(where: Path | str) -> bool:
    """Whether ``where`` names a PostgreSQL database rather than a SQLite file."""
    return str(where).startswith(("postgresql://", "postgres://"))


def open_store(where: Path | str, *, writer: str = "") -> Store:
    """The hub's store: a ``postgresql://`` URL (shared by several hubs; ``writer`` names
    this one in the change log), or the path of a SQLite file (created on first use)."""
    if is_store_url(where):
        from controller.store.postgres import PostgresStore

        return PostgresStore(str(where), writer=writer)
    return SQLiteStore(where)


__all__ = [
    "APPLY_SET_ANNOTATION",
    "AlreadyExists",
    "ApplyAction",
    "ApplyResult",
    "Change",
    "ChangeText",
    "ChangeType",
    "Conflict",
    "Event",
    "Fenced",
    "Gone",
    "NotFound",
    "Obj",
    "ObjectStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "Unavailable",
    "is_store_url",
    "open_store",
]
