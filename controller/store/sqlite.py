"""The embedded backend: SQLite in WAL mode, one table of objects plus a change log.

Every write bumps one global, monotonic ``resourceVersion`` (rv) and appends the
object as it now is to ``changes``, in the same transaction. That log is the
change feed: the reconcile loop, ``GET /v1/watch`` and agents read it by rv, so a
reader that fell behind replays exactly what it missed (or gets ``Gone`` once the
log was compacted past it, and relists).

Why these choices:

- ``synchronous=FULL`` with WAL: a commit is durable when it returns, so an
  acknowledged apply survives ``kill -9`` and power loss; WAL keeps readers off
  the writer's back.
- One writer connection behind one re-entrant lock: a transaction is the lock
  held from ``BEGIN IMMEDIATE`` to ``COMMIT``, so nested writes of one caller
  join it and other writers wait.
- Reader connections beside it, one per thread (WAL lets them read the last
  committed snapshot while the writer works and fsyncs): a read takes no lock
  and never waits behind a commit. A thread inside a transaction reads on the
  writer's connection instead, so it sees its own uncommitted writes.

The rules of a write (generation, no-op writes, finalizers, apply) are the
backend-independent ``ObjectStore``'s; this class supplies the SQL.
"""

from __future__ import annotations

import builtins
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from controller.store.notify import CommitPeers
from controller.store.objects import ObjectStore
from controller.store.types import (
    AlreadyExists,
    Change,
    ChangeText,
    ChangeType,
    Event,
    Gone,
    Savepoints,
    change_node,
    dumps,
    encode_object,
    loads,
    now,
)
from specs.selectors import match_labels

log = logging.getLogger("gu.store")

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


#: The spec paths hot paths look objects up by: a session's placements (the Session
#: reconciler, ``gu logs``), the placements running an image (every image pull), the
#: sessions of an app (a policy change), the placements bound to a node (``/peers/{id}``).
#: Each has an expression index; ``list_where`` names the path as a literal, so SQLite
#: uses it instead of scanning the kind.
INDEXED_PATHS: Final = ("$.session", "$.workload.image.hash", "$.app", "$.node", "$.network")
_EVENTS_KEPT: Final = 20  # events kept per object (the newest)
_PATH = re.compile(r"^\$(\.[A-Za-z][A-Za-z0-9]*)+$")


def _where_sql(json_path: str) -> str:
    """The ``list_where`` query: the path is a literal (checked), as an expression index
    is used only for a query naming the very same expression."""
    if not _PATH.match(json_path):
        raise ValueError(f"json_path {json_path!r} must look like $.field or $.a.b")
    # without ANALYZE statistics SQLite's planner prefers the primary key's kind prefix
    # (a scan of the kind) over the expression index: name the index
    hint = f" INDEXED BY {_index_name(json_path)}" if json_path in INDEXED_PATHS else ""
    return (
        f"SELECT * FROM objects{hint} WHERE kind=? AND json_extract(spec, '{json_path}') = ? "
        "ORDER BY name"
    )


def _index_name(path: str) -> str:
    return "objects_spec_" + path[2:].replace(".", "_")


class SQLiteStore(ObjectStore):
    """The SQLite store (see the module docstring); satisfies ``controller.store.Store``."""

    _insert_refuses_duplicates = True

    def __init__(
        self,
        path: Path | str,
        *,
        changelog_limit: int = 200_000,
        compact_chunk: int = 2_000,
        shared: bool = False,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.shared = shared
        """Other processes write this file too (the hub's API and its reconcile engine,
        ``controller.enginehost``): a transaction then takes the rv from the file, not
        from memory, a cross-process lock orders the writers, and commits are announced
        to the other processes (``controller.store.notify``)."""
        self.changelog_limit = changelog_limit
        self.compact_chunk = compact_chunk
        self._compact_to: int | None = None  # compaction in progress: keep rvs from here
        self._lock = threading.RLock()
        self._depth = 0
        self._savepoints = Savepoints(lambda sql: self._db.execute(sql))
        self._pending_notify = False
        self._listeners: list[Callable[[int], None]] = []
        self._timers: list[Callable[[float], None]] = []
        self._owner: int | None = None  # the thread inside a transaction, if any
        self._local = threading.local()  # this thread's reader connection
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # savepoints' sub-journals in memory, not spilled to a file at each pass past 64 KiB
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        for path in INDEXED_PATHS:
            self._db.execute(
                f"CREATE INDEX IF NOT EXISTS {_index_name(path)} "
                f"ON objects (kind, json_extract(spec, '{path}'))"
            )
        self._index_changes_by_node()
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self._rv = int(row[0]) if row else 0
        self._committed_rv = self._rv  # what readers on other connections can see
        self._oldest = self._read_oldest()
        self._seen_rv = self._rv  # the newest rv another process announced
        self._peers: CommitPeers | None = None
        if shared:
            try:
                self._peers = CommitPeers(self.path, self._foreign_commit)
            except OSError:  # (e.g. a path too long for a Unix socket's)
                self._db.close()
                raise

    def _read_oldest(self) -> int:
        row = self._db.execute("SELECT MIN(rv) FROM changes").fetchone()
        return int(row[0]) if row and row[0] is not None else self._rv + 1

    def _foreign_commit(self) -> None:
        """(The notifier's thread.) Another process may have committed: its rv, from the
        file, goes to the listeners as this process's own commits do."""
        row = self._reader().execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        rv = int(row[0]) if row else 0
        if rv <= max(self._seen_rv, self._committed_rv):
            return
        self._seen_rv = rv
        for listener in list(self._listeners):
            try:
                listener(rv)
            except Exception:  # a broken listener must not break the notifier
                log.exception("event=listener_failed")

    def _index_changes_by_node(self) -> None:
        """The change log's ``node`` column and its index (a database from before them gets
        both, its rows filled in once)."""
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(changes)").fetchall()}
        if "node" not in cols:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ALTER TABLE changes ADD COLUMN node TEXT")
                self._db.execute(
                    "UPDATE changes SET node = json_extract(object, '$.spec.node') "
                    "WHERE kind = 'Placement'"
                )
                self._db.execute("UPDATE changes SET node = name WHERE kind = 'Provider'")
                self._db.execute("COMMIT")
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS changes_node ON changes (node, rv) WHERE node IS NOT NULL"
        )

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self._peers is not None:
            self._peers.close()
        with self._lock:
            self._closed = True
            with self._readers_lock:
                readers, self._readers = self._readers, []
            for _, conn in readers:
                conn.close()
            self._db.close()

    def _reader(self) -> sqlite3.Connection:
        """The connection this thread reads on (see the module docstring).

        The writer's, when this thread is inside a transaction (read your own
        writes); otherwise the thread's own read-only connection, opened on
        first use. Reads on it take no lock: WAL gives each statement the last
        committed snapshot.

        A thread's connection lives in a thread-local slot, and is closed only once
        its thread has ended. (It was kept by thread id: a new thread given the id of
        one that had ended took over that thread's connection while another new
        thread, seeing that id as dead a moment before, closed it under its reads:
        SQLite crashed the hub.)
        """
        if self._owner == threading.get_ident():
            return self._db
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._readers_lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                # a new thread: first close the connections of threads that have ended
                kept = []
                for thread, old in self._readers:
                    if thread.is_alive():
                        kept.append((thread, old))
                    else:
                        old.close()
                conn = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=30
                )
                conn.execute("PRAGMA query_only=ON")
                kept.append((threading.current_thread(), conn))
                self._readers = kept
            self._local.conn = conn
        return conn

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(rv)`` after every commit that wrote something.

        It runs on the writer's thread with no lock held: keep it short
        (e.g. ``loop.call_soon_threadsafe``).
        """
        self._listeners.append(callback)

    def time_commits(self, callback: Callable[[float], None]) -> None:
        self._timers.append(callback)

    def writer_waiting(self) -> bool:
        """Another process of this file waits for the writer lock (``shared`` only)."""
        return self._peers is not None and self._peers.waiting

    def undone_writes(self) -> int:
        return self._savepoints.undone

    def unsubscribe(self, callback: Callable[[int], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    @contextmanager
    def transaction(self, savepoint: bool = False) -> Iterator[None]:
        """Group writes into one atomic, durable transaction (nests; nested with
        ``savepoint``, an exception undoes the block's writes only)."""
        with self._lock:
            start_rv = self._rv
            marked = False
            if self._depth == 0:
                began = time.perf_counter()
                if self._peers is not None:
                    self._peers.lock()  # (writers of every process, in turn)
                    try:
                        self._db.execute("BEGIN IMMEDIATE")
                    except BaseException:
                        self._peers.unlock()
                        raise
                    row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
                    self._rv = start_rv = int(row[0]) if row else 0
                else:
                    self._db.execute("BEGIN IMMEDIATE")
                self._owner = threading.get_ident()
            elif savepoint:  # (created at the block's first write, if it writes)
                self._savepoints.open(f"gu{self._depth}")
                marked = True
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._savepoints.clear()
                    try:
                        self._db.execute("ROLLBACK")
                    finally:
                        if self._peers is not None:
                            self._peers.unlock()
                    self._rv = start_rv
                    self._owner = None
                elif marked:
                    self._savepoints.undo()
                    self._rv = start_rv  # (the rvs it took are free again)
                raise
            self._depth -= 1
            if marked:
                self._savepoints.release()
            if self._depth:
                return
            self._savepoints.clear()
            wrote = self._rv != start_rv
            if wrote:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES('rv', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(self._rv),),
                )
                if self._compact_to is None and self._rv - self._oldest > self.changelog_limit:
                    if self.shared:  # (another process may have compacted meanwhile)
                        self._oldest = self._read_oldest()
                    if self._rv - self._oldest > self.changelog_limit:
                        self._compact_to = self._rv - self.changelog_limit // 2
                if self._compact_to is not None:
                    self._compact_step()
            try:
                self._db.execute("COMMIT")
            finally:
                self._owner = None
                if self._peers is not None:
                    self._peers.waiting = False  # (whoever waited takes the lock now)
                    self._peers.unlock()
            rv = self._committed_rv = self._rv
        if wrote:
            if self._peers is not None:
                self._peers.announce()
            took = time.perf_counter() - began
            for timer in self._timers:
                timer(took)
            for listener in list(self._listeners):
                try:
                    listener(rv)
                except Exception:  # a broken listener must not break writers
                    log.exception("event=listener_failed")

    def _compact_step(self) -> None:
        """Drop the oldest ``compact_chunk`` changes (this commit's share of a compaction).

        The log is trimmed to half its limit once it passes the limit, a chunk per
        write commit, so no commit holds the lock for a 100,000-row delete.
        """
        assert self._compact_to is not None
        upto = min(self._compact_to, self._oldest + self.compact_chunk)
        self._db.execute("DELETE FROM changes WHERE rv < ?", (upto,))
        self._oldest = upto
        if upto >= self._compact_to:
            self._compact_to = None

    @property
    def resource_version(self) -> int:
        """The rv of the last committed write (0 for an empty store).

        Not the rv a transaction in progress has reached: a reader (on its own
        connection) sees a write only once it is committed, so a list read after
        this value holds everything up to it.
        """
        return max(self._committed_rv, self._seen_rv)

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
            "labels": loads(labels),
            "annotations": loads(annotations),
            "uid": uid,
            "generation": generation,
            "resourceVersion": rv,
            "creationTimestamp": created,
            "finalizers": loads(finalizers),
        }
        if deleted:
            meta["deletionTimestamp"] = deleted
        return {
            "apiVersion": "gu/v1",
            "kind": kind,
            "metadata": meta,
            "spec": loads(spec),
            "status": loads(status),
        }

    def _fetch(self, kind: str, name: str) -> dict[str, Any] | None:
        # inside a transaction _reader() is the writer's connection: its own writes
        row = (
            self._reader()
            .execute("SELECT * FROM objects WHERE kind=? AND name=?", (kind, name))
            .fetchone()
        )
        return self._row_to_obj(row) if row else None

    def _fetch_many(self, kind: str, names: builtins.list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        conn = self._reader()
        for i in range(0, len(names), 500):  # (bound parameters per statement)
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT * FROM objects WHERE kind=? AND name IN ({marks})", (kind, *chunk)
            ):
                out[row[1]] = self._row_to_obj(row)
        return out

    def _write(
        self,
        obj: dict[str, Any],
        change: ChangeType,
        apply_set: str | None,
        spec_changed: bool = True,
    ) -> None:
        """Insert ``obj`` (already carrying its new rv; ``AlreadyExists`` if its row is
        there), or update its row, and log the change. An update names only the columns
        it may change, and the spec only if it changed: SQLite then leaves the spec's
        expression indexes (``INDEXED_PATHS``) alone, where a replace deleted and re-made
        every entry, each a parse of the spec's JSON (a status write is most writes)."""
        meta = obj["metadata"]
        *columns, whole = encode_object(obj)
        self._savepoints.touch()
        if change == "ADDED":
            try:
                self._db.execute(
                    "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        obj["kind"],
                        meta["name"],
                        meta["uid"],
                        meta["generation"],
                        meta["resourceVersion"],
                        meta["creationTimestamp"],
                        meta.get("deletionTimestamp"),
                        *columns,
                        apply_set,
                    ),
                )
            except sqlite3.IntegrityError:  # (the statement is undone, the transaction not)
                if meta["resourceVersion"] == self._rv:
                    self._rv -= 1  # (the rv it took is free again: no gap)
                raise AlreadyExists(f"{obj['kind']}/{meta['name']} already exists") from None
        else:
            labels, annotations, finalizers, spec, status = columns
            self._db.execute(
                "UPDATE objects SET generation=?, rv=?, deleted=?, labels=?, annotations=?, "
                f"finalizers=?, {'spec=?, ' if spec_changed else ''}status=?, apply_set=? "
                "WHERE kind=? AND name=?",
                (
                    meta["generation"],
                    meta["resourceVersion"],
                    meta.get("deletionTimestamp"),
                    labels,
                    annotations,
                    finalizers,
                    *((spec,) if spec_changed else ()),
                    status,
                    apply_set,
                    obj["kind"],
                    meta["name"],
                ),
            )
        self._log_change(obj, change, whole)

    def _log_change(
        self, obj: dict[str, Any], change: ChangeType, encoded: str | None = None
    ) -> None:
        self._keep_write(obj)
        self._savepoints.touch()
        self._db.execute(
            "INSERT INTO changes(rv, kind, name, type, object, node) VALUES (?,?,?,?,?,?)",
            (
                obj["metadata"]["resourceVersion"],
                obj["kind"],
                obj["metadata"]["name"],
                change,
                encoded if encoded is not None else dumps(obj),
                change_node(obj["kind"], obj["metadata"]["name"], obj),
            ),
        )

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _remove(self, kind: str, name: str) -> None:
        self._savepoints.touch()
        self._db.execute("DELETE FROM objects WHERE kind=? AND name=?", (kind, name))
        # its events go with it (bounded growth: a deleted object leaves nothing behind)
        self._db.execute("DELETE FROM events WHERE kind=? AND name=?", (kind, name))

    def _apply_set_members(self, apply_set: str) -> builtins.list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM objects WHERE apply_set=? ORDER BY kind, name", (apply_set,)
        ).fetchall()
        return [self._row_to_obj(r) for r in rows]

    # --------------------------------------------------------------- reads

    def try_get(self, kind: str, name: str) -> dict[str, Any] | None:
        """One object, or None."""
        return self._fetch(kind, name)

    def list(
        self, kind: str, selector: dict[str, str | None] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Every object of ``kind`` (sorted by name) whose labels match ``selector``."""
        rows = (
            self._reader()
            .execute("SELECT * FROM objects WHERE kind=? ORDER BY name", (kind,))
            .fetchall()
        )
        objs = [self._row_to_obj(r) for r in rows]
        if selector:
            objs = [o for o in objs if match_labels(o["metadata"]["labels"], selector)]
        return objs

    def names(self, kind: str) -> builtins.list[str]:
        """The names of every object of ``kind``, sorted (read from the key alone)."""
        rows = (
            self._reader()
            .execute("SELECT name FROM objects WHERE kind=? ORDER BY name", (kind,))
            .fetchall()
        )
        return [str(r[0]) for r in rows]

    def list_where(self, kind: str, json_path: str, value: Any) -> builtins.list[dict[str, Any]]:
        """Objects of ``kind`` whose ``spec`` has ``value`` at ``json_path`` (e.g. ``$.app``).

        An ``INDEXED_PATHS`` path is an index lookup; any other scans the kind.
        """
        rows = self._reader().execute(_where_sql(json_path), (kind, value)).fetchall()
        return [self._row_to_obj(r) for r in rows]

    def list_where_plan(self, kind: str, json_path: str) -> str:
        """How SQLite runs ``list_where(kind, json_path, …)`` (``EXPLAIN QUERY PLAN``)."""
        rows = (
            self._reader()
            .execute("EXPLAIN QUERY PLAN " + _where_sql(json_path), (kind, ""))
            .fetchall()
        )
        return "\n".join(str(r[-1]) for r in rows)

    def count(self, kind: str | None = None) -> int:
        db = self._reader()
        if kind is None:
            return int(db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])
        return int(db.execute("SELECT COUNT(*) FROM objects WHERE kind=?", (kind,)).fetchone()[0])

    def changes(
        self, since: int, limit: int = 1000, kinds: AbstractSet[str] | None = None
    ) -> builtins.list[Change]:
        """Changes with rv > ``since``, oldest first (only of ``kinds``, if given);
        ``Gone`` if the log was compacted."""
        if kinds is None:
            return self._read_changes("rv > ?", (since, limit), since, every=True)
        marks = ",".join("?" * len(kinds))
        return self._read_changes(
            f"rv > ? AND kind IN ({marks})", (since, *sorted(kinds), limit), since
        )

    def change_texts(self, since: int, limit: int = 1000) -> builtins.list[ChangeText]:
        rows = (
            self._reader()
            .execute(
                "SELECT rv, type, kind, name, node, CASE WHEN kind = 'Session' "
                "THEN json_extract(object, '$.spec.app') END, object FROM changes "
                "WHERE rv > ? ORDER BY rv LIMIT ?",
                (since, limit),
            )
            .fetchall()
        )
        if not rows or rows[0][0] != since + 1:  # (the change after ``since`` is there:
            self._refuse_compacted(since)  # nothing after it was compacted away)
        return [ChangeText(*row) for row in rows]

    def node_changes(self, node: str, since: int, limit: int = 1000) -> builtins.list[Change]:
        """``node``'s changes with rv > ``since`` (by the node index); ``Gone`` as ``changes``."""
        return self._read_changes("node = ? AND rv > ?", (node, since, limit), since)

    def _read_changes(
        self, where: str, params: tuple[Any, ...], since: int, every: bool = False
    ) -> builtins.list[Change]:
        """(``every``: ``where`` selects every change after ``since``, so the first row
        being the one right after it shows that nothing was compacted away.)"""
        rows = (
            self._reader()
            .execute(
                f"SELECT rv, type, kind, name, object FROM changes WHERE {where} "
                "ORDER BY rv LIMIT ?",
                params,
            )
            .fetchall()
        )
        if not (every and rows and rows[0][0] == since + 1):
            self._refuse_compacted(since)
        return [Change(r[0], r[1], r[2], r[3], loads(r[4])) for r in rows]

    def _refuse_compacted(self, since: int) -> None:
        """``Gone`` if changes after ``since`` were compacted away. Checked after the
        read: a compaction advances ``_oldest`` before it commits, so a read that raced
        one is refused (relist) rather than silently missing rows. Nothing committed
        after ``since`` (a pass reading its own group's writes): nothing to miss."""
        if since >= self.resource_version:
            return
        oldest = self._oldest
        if self.shared:  # (another process compacts too: the file knows)
            row = self._reader().execute("SELECT MIN(rv) FROM changes").fetchone()
            oldest = max(oldest, int(row[0]) if row and row[0] is not None else 0)
        if since + 1 < oldest and since < self.resource_version:
            raise Gone(f"resourceVersion {since} is too old (oldest kept: {oldest}); list again")

    # ---------------------------------------------------------------- meta

    def put_meta(self, key: str, value: str) -> None:
        """Set a small hub-internal value (e.g. a hashed join token), durably."""
        with self.transaction():
            self._savepoints.touch()
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def meta_items(self, prefix: str) -> builtins.list[tuple[str, str]]:
        """Every (key, value) whose key starts with ``prefix``."""
        rows = (
            self._reader()
            .execute(
                "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            )
            .fetchall()
        )
        return [(str(k), str(v)) for k, v in rows]

    def delete_meta(self, key: str) -> None:
        with self.transaction():
            self._savepoints.touch()
            self._db.execute("DELETE FROM meta WHERE key=?", (key,))

    # -------------------------------------------------------------- events

    def record_event(
        self,
        kind: str,
        name: str,
        reason: str,
        message: str,
        type_: str = "Normal",
        *,
        unless_repeated: bool = False,
    ) -> bool:
        """Append a human-readable event; keeps the newest 20 per object."""
        # (in a transaction of its own if the caller has none: with ``shared``, a write
        # outside one would not take the processes' writer lock)
        with self.transaction():
            # the newest event, and the id of the oldest one the new one pushes out, if
            # there is one (usually not): two index probes in one statement, on the writer
            # (it sees this transaction's events too)
            newest = self._db.execute(
                "SELECT reason, message, (SELECT id FROM events WHERE kind=? AND name=? "
                f"ORDER BY id DESC LIMIT 1 OFFSET {_EVENTS_KEPT - 1}) FROM events "
                "WHERE kind=? AND name=? ORDER BY id DESC LIMIT 1",
                (kind, name, kind, name),
            ).fetchone()
            if (
                unless_repeated
                and newest is not None
                and newest[0] == reason
                and newest[1] == message
            ):
                return False
            self._savepoints.touch()  # (no-op unless this thread holds an open savepoint)
            self._db.execute(
                "INSERT INTO events(time, kind, name, type, reason, message) VALUES (?,?,?,?,?,?)",
                (now(), kind, name, type_, reason, message),
            )
            if newest is not None and newest[2] is not None:
                self._db.execute(
                    "DELETE FROM events WHERE kind=? AND name=? AND id <= ?",
                    (kind, name, newest[2]),
                )
            return True

    def events(self, kind: str, name: str) -> builtins.list[Event]:
        """Events of one object, oldest first."""
        rows = (
            self._reader()
            .execute(
                "SELECT time, kind, name, type, reason, message FROM events "
                "WHERE kind=? AND name=? ORDER BY id",
                (kind, name),
            )
            .fetchall()
        )
        return [Event(*r) for r in rows]

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` ("ok" when the database is sound)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


__all__ = ["SQLiteStore"]
