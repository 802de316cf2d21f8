"""The store's vocabulary: errors (each with the HTTP status it maps to) and records.

Shared by every backend and every caller: a Conflict is a 409 whether SQLite
or PostgreSQL found it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from specs import jsontext

APPLY_SET_ANNOTATION = "gu/apply-set"
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]
ApplyAction = Literal["created", "configured", "unchanged", "pruned"]


class StoreError(Exception):
    """Base of every store failure; ``status`` is the HTTP status it maps to."""

    status = 500


class NotFound(StoreError):
    status = 404


class AlreadyExists(StoreError):
    status = 409


class Conflict(StoreError):
    """The object changed since the caller read it: read again and retry."""

    status = 409


class Gone(StoreError):
    """The change log no longer reaches back to the requested resourceVersion: relist."""

    status = 410


class Unavailable(StoreError):
    """The database cannot be reached now (a shared store restarting): retry shortly."""

    status = 503


class Fenced(StoreError):
    """A write on behalf of a reconcile leader that is no longer the leader: refused, so a
    hub that lost its lease (paused, cut off) never overwrites its successor's work."""

    status = 409


FENCE: ContextVar[int | None] = ContextVar("gu_fence", default=None)
"""The leadership epoch the current thread writes on behalf of (``controller.leader``): a
store shared by several hubs refuses its writes once another epoch holds the lease. None
(API requests, a single hub): no fencing."""


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: the object as it was right after the write."""

    rv: int
    type: ChangeType
    kind: str
    name: str
    object: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChangeText:
    """A change as the log keeps it: the object's JSON ``text`` undecoded, with the node
    it concerns (``change_node``) and, for a Session, its app. For readers that pass the
    object on without looking into it (the watch streams' ring, ``controller.feed``)."""

    rv: int
    type: ChangeType
    kind: str
    name: str
    node: str | None
    app: str | None
    text: str

    def decoded(self) -> Change:
        return Change(self.rv, self.type, self.kind, self.name, jsontext.loads(self.text))


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    action: ApplyAction
    generation: int
    resourceVersion: int


@dataclass(frozen=True)
class Event:
    """A human-readable event about an object (shown by ``gu describe``)."""

    time: str
    kind: str
    name: str
    type: str
    reason: str
    message: str


def change_node(kind: str, name: str, obj: dict[str, Any]) -> str | None:
    """The provider a change of ``kind/name`` concerns (what an agent's watch stream
    carries; the change log's node index, the feed's): a Placement's node, a Provider
    itself, else None."""
    if kind == "Placement":
        return (obj.get("spec") or {}).get("node") or None
    if kind == "Provider":
        return name
    return None


def now() -> str:
    """The current UTC time as the store writes it (RFC 3339, ``Z``)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


_KEYS = {key: json.dumps(key) for key in ("apiVersion", "kind", "metadata", "spec", "status")}


def dumps(value: Any) -> str:
    """Canonical JSON of a stored field (sorted keys, no spaces): equal values, equal text."""
    if not value and isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"  # (most labels, annotations...)
    return jsontext.dumps(value)


def loads(text: str) -> Any:
    """A stored field back (``dumps``'s inverse), with the empty ones a row mostly has
    (labels, annotations, finalizers, status) made without the decoder."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return jsontext.loads(text)


def encode_object(obj: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    """The stored columns of ``obj`` as canonical JSON — labels, annotations,
    finalizers, spec, status — and the whole object as the change log keeps it, the
    latter made from the spec's and status's text rather than encoding them twice (they
    are most of an object: a write encoded each twice)."""
    meta = obj["metadata"]
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    spec_json, status_json = dumps(spec), dumps(status)
    parts = []
    for key in sorted(obj):
        value = obj[key]
        if key == "spec" and value:
            text = spec_json
        elif key == "status" and value:
            text = status_json
        else:
            text = dumps(value)
        parts.append(f"{_KEYS.get(key) or json.dumps(key)}:{text}")
    return (
        dumps(meta.get("labels") or {}),
        dumps(meta.get("annotations") or {}),
        dumps(meta.get("finalizers") or []),
        spec_json,
        status_json,
        "{" + ",".join(parts) + "}",
    )


class Savepoints:
    """The savepoints of a store's nested ``transaction(savepoint=True)`` blocks, taken
    lazily: ``open`` only marks one; the first write under it (the store calls ``touch``
    before each write) creates it and any open ones outside it, in order. A block that
    writes nothing (a reconcile pass with nothing to do: most of a resync) costs no
    statement, where it cost a SAVEPOINT and a RELEASE (two round trips on PostgreSQL).
    Nothing is lost: the reads before a block's first write need no undoing.

    ``execute`` runs one statement on the writer's connection. The created marks are
    always the oldest ones (a prefix of the stack): ``touch`` creates the rest.
    """

    def __init__(self, execute: Callable[[str], object]) -> None:
        self._execute = execute
        self._marks: list[str] = []
        self._created = 0  # the first ``_created`` marks exist in the database
        self.undone = 0  # blocks whose writes were undone, ever (``Store.undone_writes``)

    def open(self, name: str) -> None:
        self._marks.append(name)

    def touch(self) -> None:
        """Before a write: create every mark not yet created."""
        while self._created < len(self._marks):
            self._execute(f"SAVEPOINT {self._marks[self._created]}")
            self._created += 1

    def release(self) -> None:
        """The innermost block ended well: its writes join the block around it."""
        name = self._marks.pop()
        if self._created > len(self._marks):
            self._created -= 1
            self._execute(f"RELEASE SAVEPOINT {name}")

    def undo(self) -> None:
        """The innermost block raised: undo its writes (if it wrote any)."""
        name = self._marks.pop()
        if self._created > len(self._marks):
            self._created -= 1
            self.undone += 1
            self._execute(f"ROLLBACK TO SAVEPOINT {name}")
            self._execute(f"RELEASE SAVEPOINT {name}")

    def clear(self) -> None:
        """The outer transaction ended (its COMMIT or ROLLBACK ends every savepoint)."""
        self._marks.clear()
        self._created = 0
