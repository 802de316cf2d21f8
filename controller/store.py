"""The hub's desired-state store: SQLite in WAL mode, one table of objects plus a change log.

Every write bumps one global, monotonic ``resourceVersion`` (rv) and appends the
object as it now is to ``changes``, in the same transaction. That log is the
change feed: the reconcile loop, ``GET /v1/watch`` and agents read it by rv, so a
reader that fell behind replays exactly what it missed (or gets ``Gone`` once the
log was compacted past it, and relists).

Why these choices:

- ``synchronous=FULL`` with WAL: a commit is durable when it returns, so an
  acknowledged apply survives ``kill -9`` and power loss; WAL keeps readers off
  the writer's back.
- ``generation`` moves only when ``spec`` changes; status writes and writes that
  change nothing write nothing (no rv bump, no change row). That is what makes
  a resync of converged objects free, and ``gu apply`` of unchanged files a no-op.
- Optimistic concurrency: every mutating call may carry the rv the caller read;
  a stale one raises ``Conflict`` (HTTP 409) instead of overwriting.
- The interface is narrow (get, list, apply, replace, status, finalizers, delete,
  changes) so that a PostgreSQL store can stand behind it later.

Objects cross this boundary as JSON-mode dicts (what the API serves); typed
models live at the edges.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from specs.selectors import match_labels

log = logging.getLogger("gu.store")

APPLY_SET_ANNOTATION = "gu/apply-set"
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]
ApplyAction = Literal["created", "configured", "unchanged", "pruned"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    rv INTEGER NOT NULL,
    created TEXT NOT NULL,
    deleted TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    finalizers TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    apply_set TEXT,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_apply_set ON objects (apply_set, kind) WHERE apply_set IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    rv INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    object TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_object ON events (kind, name, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


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


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: the object as it was right after the write."""

    rv: int
    type: ChangeType
    kind: str
    name: str
    object: dict[str, Any]


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


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    """Durable, thread-safe object store with a change feed (see module docstring)."""

    def __init__(self, path: Path | str, *, changelog_limit: int = 200_000) -> None:
        self.path = str(path)
        self.changelog_limit = changelog_limit
        self._lock = threading.RLock()
        self._depth = 0
        self._pending_notify = False
        self._listeners: list[Callable[[int], None]] = []
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self._rv = int(row[0]) if row else 0
        row = self._db.execute("SELECT MIN(rv) FROM changes").fetchone()
        self._oldest = int(row[0]) if row and row[0] is not None else self._rv + 1

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(rv)`` after every commit that wrote something.

        It runs on the writer's thread with no lock held: keep it short
        (e.g. ``loop.call_soon_threadsafe``).
        """
        self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[int], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one atomic, durable transaction (nests)."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
                start_rv = self._rv
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                    self._rv = start_rv
                raise
            self._depth -= 1
            if self._depth:
                return
            wrote = self._rv != start_rv
            if wrote:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES('rv', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(self._rv),),
                )
                if self._rv - self._oldest > self.changelog_limit:
                    self._compact()
            self._db.execute("COMMIT")
            rv = self._rv
        if wrote:
            for listener in list(self._listeners):
                try:
                    listener(rv)
                except Exception:  # a broken listener must not break writers
                    log.exception("event=listener_failed")

    def _compact(self) -> None:
        keep_from = self._rv - self.changelog_limit // 2
        self._db.execute("DELETE FROM changes WHERE rv < ?", (keep_from,))
        self._oldest = keep_from

    @property
    def resource_version(self) -> int:
        """The rv of the last committed write (0 for an empty store)."""
        return self._rv

    def _row_to_obj(self, row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
        (
            kind,
            name,
            uid,
            generation,
            rv,
            created,
            deleted,
            labels,
            annotations,
            finalizers,
            spec,
            status,
            _apply_set,
        ) = row
        meta: dict[str, Any] = {
            "name": name,
            "labels": json.loads(labels),
            "annotations": json.loads(annotations),
            "uid": uid,
            "generation": generation,
            "resourceVersion": rv,
            "creationTimestamp": created,
            "finalizers": json.loads(finalizers),
        }
        if deleted:
            meta["deletionTimestamp"] = deleted
        return {
            "apiVersion": "gu/v1",
            "kind": kind,
            "metadata": meta,
            "spec": json.loads(spec),
            "status": json.loads(status),
        }

    def _fetch(self, kind: str, name: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM objects WHERE kind=? AND name=?", (kind, name)
        ).fetchone()
        return self._row_to_obj(row) if row else None

    def _write(self, obj: dict[str, Any], change: ChangeType, apply_set: str | None) -> None:
        """Insert or replace ``obj`` (already carrying its new rv) and log the change."""
        meta = obj["metadata"]
        self._db.execute(
            "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                obj["kind"],
                meta["name"],
                meta["uid"],
                meta["generation"],
                meta["resourceVersion"],
                meta["creationTimestamp"],
                meta.get("deletionTimestamp"),
                _dumps(meta.get("labels") or {}),
                _dumps(meta.get("annotations") or {}),
                _dumps(meta.get("finalizers") or []),
                _dumps(obj.get("spec") or {}),
                _dumps(obj.get("status") or {}),
                apply_set,
            ),
        )
        self._log_change(obj, change)

    def _log_change(self, obj: dict[str, Any], change: ChangeType) -> None:
        self._db.execute(
            "INSERT INTO changes(rv, kind, name, type, object) VALUES (?,?,?,?,?)",
            (
                obj["metadata"]["resourceVersion"],
                obj["kind"],
                obj["metadata"]["name"],
                change,
                _dumps(obj),
            ),
        )

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    @staticmethod
    def _check_rv(current: dict[str, Any], expected_rv: int | None) -> None:
        if expected_rv is not None and current["metadata"]["resourceVersion"] != expected_rv:
            meta = current["metadata"]
            raise Conflict(
                f"{current['kind']}/{meta['name']} was changed (resourceVersion "
                f"{meta['resourceVersion']}, you had {expected_rv}): read it again and retry"
            )

    # --------------------------------------------------------------- reads

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One object; raises NotFound."""
        with self._lock:
            obj = self._fetch(kind, name)
        if obj is None:
            raise NotFound(f"{kind}/{name} not found")
        return obj

    def try_get(self, kind: str, name: str) -> dict[str, Any] | None:
        """One object, or None."""
        with self._lock:
            return self._fetch(kind, name)

    def list(
        self, kind: str, selector: dict[str, str | None] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Every object of ``kind`` (sorted by name) whose labels match ``selector``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM objects WHERE kind=? ORDER BY name", (kind,)
            ).fetchall()
        objs = [self._row_to_obj(r) for r in rows]
        if selector:
            objs = [o for o in objs if match_labels(o["metadata"]["labels"], selector)]
        return objs

    def list_where(self, kind: str, json_path: str, value: Any) -> builtins.list[dict[str, Any]]:
        """Objects of ``kind`` whose ``spec`` has ``value`` at ``json_path`` (e.g. ``$.app``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM objects WHERE kind=? AND json_extract(spec, ?) = ? ORDER BY name",
                (kind, json_path, value),
            ).fetchall()
        return [self._row_to_obj(r) for r in rows]

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return int(self._db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])
            return int(
                self._db.execute("SELECT COUNT(*) FROM objects WHERE kind=?", (kind,)).fetchone()[0]
            )

    def changes(self, since: int, limit: int = 1000) -> builtins.list[Change]:
        """Changes with rv > ``since``, oldest first; ``Gone`` if the log was compacted."""
        with self._lock:
            if since + 1 < self._oldest and since < self._rv:
                raise Gone(
                    f"resourceVersion {since} is too old (oldest kept: {self._oldest}); list again"
                )
            rows = self._db.execute(
                "SELECT rv, type, kind, name, object FROM changes WHERE rv > ? ORDER BY rv LIMIT ?",
                (since, limit),
            ).fetchall()
        return [Change(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # -------------------------------------------------------------- writes

    def create(self, obj: dict[str, Any], *, apply_set: str | None = None) -> dict[str, Any]:
        """Create a new object from ``metadata`` (name, labels, annotations,
        finalizers), ``spec`` and optional ``status``; raises AlreadyExists."""
        with self.transaction():
            kind, name = obj["kind"], obj["metadata"]["name"]
            if self._fetch(kind, name) is not None:
                raise AlreadyExists(f"{kind}/{name} already exists")
            new = self._new_object(obj, apply_set)
            self._write(new, "ADDED", apply_set)
            return new

    def _new_object(self, obj: dict[str, Any], apply_set: str | None) -> dict[str, Any]:
        meta = obj["metadata"]
        annotations = dict(meta.get("annotations") or {})
        if apply_set:
            annotations[APPLY_SET_ANNOTATION] = apply_set
        return {
            "apiVersion": "gu/v1",
            "kind": obj["kind"],
            "metadata": {
                "name": meta["name"],
                "labels": dict(meta.get("labels") or {}),
                "annotations": annotations,
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "resourceVersion": self._next_rv(),
                "creationTimestamp": _now(),
                "finalizers": list(meta.get("finalizers") or []),
            },
            "spec": obj.get("spec") or {},
            "status": obj.get("status") or {},
        }

    def replace(self, obj: dict[str, Any], *, expected_rv: int | None = None) -> dict[str, Any]:
        """Write labels, annotations and spec of an existing object; keeps status.

        ``generation`` moves only if spec changed; nothing is written if nothing changed.
        """
        with self.transaction():
            kind, name = obj["kind"], obj["metadata"]["name"]
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            meta = obj["metadata"]
            return self._update(
                cur,
                spec=obj.get("spec") or {},
                labels=meta.get("labels") or {},
                annotations=meta.get("annotations") or {},
            )

    def _update(
        self,
        cur: dict[str, Any],
        *,
        spec: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        status: dict[str, Any] | None = None,
        finalizers: builtins.list[str] | None = None,
        deleted: str | None = None,
    ) -> dict[str, Any]:
        meta = cur["metadata"]
        new_meta = dict(meta)
        changed = False
        new = dict(cur)
        if spec is not None and spec != cur["spec"]:
            new["spec"] = spec
            new_meta["generation"] = meta["generation"] + 1
            changed = True
        for key, value in (("labels", labels), ("annotations", annotations)):
            if value is not None and value != meta[key]:
                new_meta[key] = dict(value)
                changed = True
        if status is not None and status != cur["status"]:
            new["status"] = status
            changed = True
        if finalizers is not None and finalizers != meta["finalizers"]:
            new_meta["finalizers"] = list(finalizers)
            changed = True
        if deleted is not None and not meta.get("deletionTimestamp"):
            new_meta["deletionTimestamp"] = deleted
            changed = True
        if not changed:
            return cur
        if new_meta.get("deletionTimestamp") and not new_meta["finalizers"]:
            # the last finalizer went: the object is really gone now
            self._db.execute(
                "DELETE FROM objects WHERE kind=? AND name=?", (cur["kind"], meta["name"])
            )
            new_meta["resourceVersion"] = self._next_rv()
            new["metadata"] = new_meta
            self._log_change(new, "DELETED")
            return new
        new_meta["resourceVersion"] = self._next_rv()
        new["metadata"] = new_meta
        self._write(new, "MODIFIED", new_meta["annotations"].get(APPLY_SET_ANNOTATION))
        return new

    def update_status(
        self, kind: str, name: str, status: dict[str, Any], *, expected_rv: int | None = None
    ) -> dict[str, Any]:
        """Replace ``status``; never moves ``generation``; writes nothing if it is equal."""
        with self.transaction():
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            return self._update(cur, status=status)

    def set_finalizers(
        self,
        kind: str,
        name: str,
        finalizers: builtins.list[str],
        *,
        expected_rv: int | None = None,
    ) -> dict[str, Any]:
        """Replace the finalizers; an object being deleted goes once they are empty."""
        with self.transaction():
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            return self._update(cur, finalizers=finalizers)

    def delete(self, kind: str, name: str, *, expected_rv: int | None = None) -> dict[str, Any]:
        """Delete: at once without finalizers, else mark ``deletionTimestamp`` and let
        the controllers remove their finalizers. Returns the object as it now is."""
        with self.transaction():
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            if cur["metadata"]["finalizers"]:
                return self._update(cur, deleted=_now())
            self._db.execute("DELETE FROM objects WHERE kind=? AND name=?", (kind, name))
            gone = dict(cur)
            gone["metadata"] = dict(cur["metadata"], resourceVersion=self._next_rv())
            self._log_change(gone, "DELETED")
            return gone

    def apply(
        self,
        objects: Iterable[dict[str, Any]],
        *,
        apply_set: str | None = None,
        prune: bool = False,
        prune_kinds: Iterable[str] = (),
        dry_run: bool = False,
        finalizers: Callable[[str], builtins.list[str]] | None = None,
    ) -> builtins.list[ApplyResult]:
        """Create or update every object atomically: all of them or none.

        An object equal to what is stored (spec, labels, annotations) is
        "unchanged" and not written. With ``prune``, objects of ``prune_kinds``
        carrying this apply set that are not in ``objects`` are deleted.
        ``dry_run`` computes the same results and rolls back.
        ``finalizers(kind)`` gives the finalizers a newly created object starts with.
        """
        objs = list(objects)
        results: builtins.list[ApplyResult] = []
        try:
            with self.transaction():
                seen: set[tuple[str, str]] = set()
                for obj in objs:
                    results.append(self._apply_one(obj, apply_set, finalizers))
                    seen.add((obj["kind"], obj["metadata"]["name"]))
                if prune and apply_set:
                    results.extend(self._prune(apply_set, set(prune_kinds), seen))
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return results

    def _apply_one(
        self,
        obj: dict[str, Any],
        apply_set: str | None,
        finalizers: Callable[[str], builtins.list[str]] | None,
    ) -> ApplyResult:
        kind, meta = obj["kind"], obj["metadata"]
        cur = self._fetch(kind, meta["name"])
        if cur is None:
            fresh = dict(obj)
            if finalizers is not None:
                fresh["metadata"] = dict(meta, finalizers=finalizers(kind))
            new = self._new_object(fresh, apply_set)
            new["status"] = {}
            self._write(new, "ADDED", apply_set)
            return ApplyResult(kind, meta["name"], "created", 1, new["metadata"]["resourceVersion"])
        annotations = dict(meta.get("annotations") or {})
        if apply_set:
            annotations[APPLY_SET_ANNOTATION] = apply_set
        elif APPLY_SET_ANNOTATION in cur["metadata"]["annotations"]:
            annotations[APPLY_SET_ANNOTATION] = cur["metadata"]["annotations"][APPLY_SET_ANNOTATION]
        new = self._update(
            cur,
            spec=obj.get("spec") or {},
            labels=meta.get("labels") or {},
            annotations=annotations,
        )
        action: ApplyAction = "unchanged" if new is cur else "configured"
        return ApplyResult(
            kind,
            meta["name"],
            action,
            new["metadata"]["generation"],
            new["metadata"]["resourceVersion"],
        )

    def _prune(
        self, apply_set: str, kinds: set[str], keep: set[tuple[str, str]]
    ) -> builtins.list[ApplyResult]:
        rows = self._db.execute(
            "SELECT * FROM objects WHERE apply_set=? ORDER BY kind, name", (apply_set,)
        ).fetchall()
        out: builtins.list[ApplyResult] = []
        for row in rows:
            obj = self._row_to_obj(row)
            key = (obj["kind"], obj["metadata"]["name"])
            if key in keep or (kinds and obj["kind"] not in kinds):
                continue
            if obj["metadata"].get("deletionTimestamp"):
                continue
            gone = self.delete(*key)
            out.append(
                ApplyResult(
                    key[0],
                    key[1],
                    "pruned",
                    obj["metadata"]["generation"],
                    gone["metadata"]["resourceVersion"],
                )
            )
        return out

    # ---------------------------------------------------------------- meta

    def put_meta(self, key: str, value: str) -> None:
        """Set a small hub-internal value (e.g. a hashed join token), durably."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def meta_items(self, prefix: str) -> builtins.list[tuple[str, str]]:
        """Every (key, value) whose key starts with ``prefix``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return [(str(k), str(v)) for k, v in rows]

    def delete_meta(self, key: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM meta WHERE key=?", (key,))

    # -------------------------------------------------------------- events

    def record_event(
        self, kind: str, name: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Append a human-readable event; keeps the newest 20 per object."""
        with self._lock:
            self._db.execute(
                "INSERT INTO events(time, kind, name, type, reason, message) VALUES (?,?,?,?,?,?)",
                (_now(), kind, name, type_, reason, message),
            )
            self._db.execute(
                "DELETE FROM events WHERE kind=? AND name=? AND id NOT IN "
                "(SELECT id FROM events WHERE kind=? AND name=? ORDER BY id DESC LIMIT 20)",
                (kind, name, kind, name),
            )

    def events(self, kind: str, name: str) -> builtins.list[Event]:
        """Events of one object, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT time, kind, name, type, reason, message FROM events "
                "WHERE kind=? AND name=? ORDER BY id",
                (kind, name),
            ).fetchall()
        return [Event(*r) for r in rows]

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` ("ok" when the database is sound)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


class _DryRun(Exception):
    """Raised inside a transaction to roll a dry run back."""
