"""The shared backend: PostgreSQL, for several hubs on one database (``psycopg`` 3).

The same tables as the embedded store (objects, the change log, events, meta) plus the
leader lease; the rules of a write are ``ObjectStore``'s, so both backends behave alike
(the store test suite runs on both). What differs, and why:

- **One writer at a time across all hubs.** Every write transaction takes one
  transaction-scoped advisory lock first (``pg_advisory_xact_lock``), then reads the
  current resourceVersion from the meta table and counts on from it. So rvs are handed
  out and committed in the same order, as SQLite's single writer does: a watcher that
  read up to rv N can never later find an rv below N committed (with a plain sequence,
  a slow transaction holding rv 10 could commit after rv 11 was read, and be missed).
  The lock is held from BEGIN to COMMIT, a few milliseconds for a reconcile pass; reads
  never take it.
- **Reads on a pool** of autocommit connections beside the writer (each statement sees
  the last committed state); a thread inside a transaction reads on the writer, so it
  sees its own writes.
- **Commits wake every hub.** Each write transaction ends with ``NOTIFY gu_changes``
  carrying its rv (delivered at commit); a listener thread per hub passes it to the
  store's subscribers (the change feed, the reconcile engine), so a watch on any hub
  sees every hub's writes. The change log stays the truth: a lost notification only
  delays (the engine also polls).
- **Fencing.** A thread that writes for a reconcile leader carries its leadership epoch
  (``controller.store.types.FENCE``); its transaction checks, under the write lock, that
  the lease still has that epoch, and refuses (``Fenced``) if another hub took over. A
  takeover changes the epoch under the same lock, so no stale write can slip between.
- **Migrations** are numbered and applied at start under an advisory lock (several hubs
  may start at once); a database migrated further than this hub knows is refused, and
  nothing is ever dropped.
- The database may restart under a hub: a statement that finds its connection broken
  raises ``Unavailable`` (HTTP 503, retry) and the next one reconnects. A writer idle
  inside a transaction for 5 s (its hub paused or hung) is cut off by the server, so the
  write lock it holds stalls the other hubs no longer than that.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from controller import faults
from controller.store.objects import ObjectStore
from controller.store.types import (
    FENCE,
    Change,
    ChangeText,
    ChangeType,
    Event,
    Fenced,
    Gone,
    Savepoints,
    StoreError,
    Unavailable,
    change_node,
    dumps,
    encode_object,
    loads,
    now,
)
from specs.selectors import match_labels

log = logging.getLogger("gu.store.postgres")

WRITE_LOCK: Final = 0x67750001
"""The advisory lock every write transaction holds (one writer at a time, all hubs)."""
MIGRATE_LOCK: Final = 0x67750002
CHANNEL: Final = "gu_changes"

#: The spec paths hot paths look objects up by (as ``controller.store.sqlite``), each
#: with an expression index the ``list_where`` query names exactly.
INDEXED_PATHS: Final = ("$.session", "$.workload.image.hash", "$.app", "$.node", "$.network")


def _pg_path(json_path: str) -> str:
    """``$.a.b`` → the text-array literal ``'{a,b}'`` (checked: letters and digits only)."""
    parts = json_path.removeprefix("$.").split(".")
    if not json_path.startswith("$.") or not all(p.isalnum() and p[:1].isalpha() for p in parts):
        raise ValueError(f"json_path {json_path!r} must look like $.field or $.a.b")
    return "'{" + ",".join(parts) + "}'"


def _index_sql(path: str) -> str:
    name = "gu_objects_spec_" + path[2:].replace(".", "_").lower()
    return f"CREATE INDEX IF NOT EXISTS {name} ON gu_objects (kind, (spec #> {_pg_path(path)}))"


MIGRATIONS: Final[Sequence[Sequence[str]]] = (
    # 1: the objects, the change log, events, meta and the leader lease
    (
        """CREATE TABLE gu_objects (
            kind text NOT NULL, name text NOT NULL, uid text NOT NULL,
            generation bigint NOT NULL, rv bigint NOT NULL, created text NOT NULL,
            deleted text, labels text NOT NULL, annotations text NOT NULL,
            finalizers text NOT NULL, spec jsonb NOT NULL, status text NOT NULL,
            apply_set text, PRIMARY KEY (kind, name))""",
        "CREATE INDEX gu_objects_apply_set ON gu_objects (apply_set, kind) "
        "WHERE apply_set IS NOT NULL",
        *(_index_sql(p) for p in INDEXED_PATHS),
        """CREATE TABLE gu_changes (
            rv bigint PRIMARY KEY, kind text NOT NULL, name text NOT NULL,
            type text NOT NULL, object text NOT NULL,
            writer text NOT NULL DEFAULT '', epoch bigint)""",
        """CREATE TABLE gu_events (
            id bigserial PRIMARY KEY, time text NOT NULL, kind text NOT NULL,
            name text NOT NULL, type text NOT NULL, reason text NOT NULL,
            message text NOT NULL)""",
        "CREATE INDEX gu_events_object ON gu_events (kind, name, id)",
        "CREATE TABLE gu_meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE gu_leader (
            id int PRIMARY KEY, holder text NOT NULL, epoch bigint NOT NULL,
            expires timestamptz NOT NULL)""",
        "INSERT INTO gu_leader VALUES (1, '', 0, 'epoch')",
        "INSERT INTO gu_meta VALUES ('rv', '0'), ('oldest', '1')",
    ),
    # 2: what several hubs share besides objects: blobs (images, inputs, outputs) and
    # the placements' log tails (controller.shared)
    (
        """CREATE TABLE gu_blobs (
            hash text NOT NULL, seq int NOT NULL, data bytea NOT NULL,
            PRIMARY KEY (hash, seq))""",
        """CREATE TABLE gu_blob_sigs (
            hash text NOT NULL, id text NOT NULL, data bytea NOT NULL,
            PRIMARY KEY (hash, id))""",
        """CREATE TABLE gu_logs (
            placement text NOT NULL, previous boolean NOT NULL, body bytea NOT NULL,
            PRIMARY KEY (placement, previous))""",
    ),
    # 3: the change log indexed by the provider a change concerns (agents' watches)
    (
        "ALTER TABLE gu_changes ADD COLUMN node text",
        "UPDATE gu_changes SET node = (object::jsonb #>> '{spec,node}') WHERE kind = 'Placement'",
        "UPDATE gu_changes SET node = name WHERE kind = 'Provider'",
        "CREATE INDEX gu_changes_node ON gu_changes (node, rv) WHERE node IS NOT NULL",
    ),
)


def redact(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    head, sep, tail = url.partition("://")
    if not sep or "@" not in tail:
        return url
    cred, _, host = tail.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in cred else f"{head}://{user}@{host}"


IDLE_IN_TRANSACTION_MS: Final = 5000
"""A writer that stops inside a transaction (its hub paused or hung) is cut off after this
long, so the write lock it holds cannot stall every other hub."""


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or ``Unavailable`` saying where it failed."""
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=10,
            options=f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
        )
    except psycopg.Error as exc:
        raise Unavailable(f"cannot reach PostgreSQL at {redact(url)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to ``len(MIGRATIONS)``; the version it is at afterwards."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS gu_schema (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM gu_schema").fetchone()
        have = int(row[0]) if row and row[0] is not None else 0
        if have > len(MIGRATIONS):
            raise StoreError(
                f"the database's gu schema is version {have}, newer than this hub knows "
                f"({len(MIGRATIONS)}): upgrade this hub (never point an older hub at it)"
            )
        for version in range(have + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO gu_schema VALUES (%s)", (version,))
            log.info("event=store_migrated version=%d", version)
        return len(MIGRATIONS)


class PostgresStore(ObjectStore):
    """The PostgreSQL store (see the module docstring); satisfies ``controller.store.Store``."""

    def __init__(
        self,
        url: str,
        *,
        changelog_limit: int = 200_000,
        compact_chunk: int = 2_000,
        pool_size: int = 8,
        writer: str = "",
    ) -> None:
        super().__init__()
        self.url = url
        self.changelog_limit = changelog_limit
        self.compact_chunk = compact_chunk
        self.writer = writer  # who wrote a change (the hub instance), for the change log
        self._lock = threading.RLock()
        self._depth = 0
        self._savepoints = Savepoints(lambda sql: self._db.execute(sql))
        self._owner: int | None = None
        self._begun_rv = 0  # the committed rv when this hub's open transaction began
        self._begun_oldest: int | None = None  # the oldest change kept then, once read
        self._rv = 0
        self._listeners: list[Callable[[int], None]] = []
        self._timers: list[Callable[[float], None]] = []
        self._closed = False
        self._told = 0
        self._told_lock = threading.Lock()
        self._db = connect(url)
        try:
            migrate(self._db)
        except psycopg.Error as exc:
            self._db.close()
            raise StoreError(f"cannot migrate {redact(url)}: {_first_line(exc)}") from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            timeout=10,
            open=True,
            name="gu-store",
        )
        self._listener = threading.Thread(target=self._listen, name="gu-store-listen", daemon=True)
        self._listener.start()

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pool.close()
            self._db.close()
        self._listener.join(3)

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(rv)`` after every commit that wrote something, on any hub (from
        a background thread: keep it short)."""
        self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[int], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def time_commits(self, callback: Callable[[float], None]) -> None:
        self._timers.append(callback)

    def writer_waiting(self) -> bool:
        return False  # (rows are locked one by one: a long transaction holds up few)

    def undone_writes(self) -> int:
        return self._savepoints.undone

    def _tell(self, rv: int) -> None:
        with self._told_lock:  # each rv once, in order (own commits and their NOTIFY echo)
            if rv <= self._told:
                return
            self._told = rv
        for listener in list(self._listeners):
            try:
                listener(rv)
            except Exception:  # a broken listener must not break writers
                log.exception("event=listener_failed")

    def _listen(self) -> None:
        """Pass every hub's commit notifications to the subscribers; reconnect after a
        database restart, and then tell them where the log is (nothing is lost: they
        read the change log from their own position)."""
        backoff = 0.2
        while not self._closed:
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.Error:
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._tell(self.resource_version)  # caught up after a reconnect
                    while not self._closed:
                        for note in conn.notifies(timeout=0.5):
                            with contextlib.suppress(ValueError):
                                self._tell(int(note.payload))
            except (psycopg.Error, StoreError):
                if not self._closed:
                    log.warning("event=store_listen_reconnect")
                    time.sleep(0.2)

    def _reconnect_writer(self) -> None:
        if self._db.closed or self._db.broken:
            with contextlib.suppress(Exception):
                self._db.close()
            self._db = connect(self.url)

    @contextmanager
    def transaction(self, savepoint: bool = False) -> Iterator[None]:
        """One atomic, durable transaction (nests; nested with ``savepoint``, an
        exception undoes the block's writes only), holding the write lock of all hubs."""
        with self._lock:
            outer = self._depth == 0
            marked = False
            if outer:
                began = time.perf_counter()
                self._begin()
                self._owner = threading.get_ident()
            elif savepoint:  # (created at the block's first write, if it writes)
                self._savepoints.open(f"gu{self._depth}")
                marked = True
            start_rv = self._rv
            self._depth += 1
            try:
                yield
            except BaseException as exc:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._savepoints.clear()
                    with contextlib.suppress(psycopg.Error):
                        self._db.execute("ROLLBACK")
                    if isinstance(exc, psycopg.Error):  # (the connection went away)
                        raise Unavailable(f"PostgreSQL: {_first_line(exc)}") from None
                elif marked:
                    # (if the connection went away this fails too, and so will the outer;
                    # a block that failed in SQL before its first write has no savepoint
                    # to return to: the outer transaction is aborted and its COMMIT fails)
                    with contextlib.suppress(psycopg.Error):
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
            try:
                if wrote:
                    self._db.execute("UPDATE gu_meta SET value=%s WHERE key='rv'", (str(self._rv),))
                    self._compact_step()
                    self._db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(self._rv)))
                self._db.execute("COMMIT")
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    self._db.execute("ROLLBACK")
                raise Unavailable(f"the commit failed: {_first_line(exc)}") from None
            finally:
                self._owner = None
            rv = self._rv
        if wrote:
            took = time.perf_counter() - began
            for timer in self._timers:
                timer(took)
            self._tell(rv)

    def _begin(self) -> None:
        """BEGIN, the write lock, the fence check and the current rv (see the module doc)."""
        if FENCE.get() is not None:
            faults.pause("store.fenced-begin")
        for attempt in (0, 1):
            try:
                self._reconnect_writer()
                self._db.execute("BEGIN")
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                break
            except psycopg.OperationalError as exc:
                with contextlib.suppress(Exception):
                    self._db.close()
                if attempt:
                    raise Unavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from None
        fence = FENCE.get()
        try:
            if fence is not None:
                row = self._db.execute("SELECT epoch FROM gu_leader WHERE id=1").fetchone()
                if not row or int(row[0]) != fence:
                    self._db.execute("ROLLBACK")
                    log.warning(
                        "event=write_fenced epoch=%s leader_epoch=%s", fence, row and row[0]
                    )
                    raise Fenced(
                        f"this hub's leadership (epoch {fence}) has passed to another hub "
                        f"(epoch {row and row[0]}); its reconcile write was refused"
                    )
            row = self._db.execute("SELECT value FROM gu_meta WHERE key='rv'").fetchone()
        except psycopg.Error as exc:  # the server went away after BEGIN: a 503, not a 500
            with contextlib.suppress(Exception):
                self._db.close()
            raise Unavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from None
        self._rv = self._begun_rv = int(row[0]) if row else 0
        self._begun_oldest = None

    def _compact_step(self) -> None:
        """Drop the oldest ``compact_chunk`` changes once the log passed its limit, towards
        half the limit (a chunk per write commit, so no commit holds the write lock for a
        long delete); as the embedded store does, the progress kept in the meta table."""
        rows = self._db.execute(
            "SELECT key, value FROM gu_meta WHERE key IN ('oldest', 'compact_to')"
        ).fetchall()
        meta = {str(k): str(v) for k, v in rows}
        oldest = int(meta.get("oldest") or 1)
        target = int(meta["compact_to"]) if meta.get("compact_to") else None
        if target is None:
            if self._rv - oldest <= self.changelog_limit:
                return
            target = self._rv - self.changelog_limit // 2
        upto = min(target, oldest + self.compact_chunk)
        self._db.execute("DELETE FROM gu_changes WHERE rv < %s", (upto,))
        self._db.execute(
            "INSERT INTO gu_meta VALUES ('oldest', %s), ('compact_to', %s) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (str(upto), "" if upto >= target else str(target)),
        )

    def _read(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[tuple[Any, ...]]:
        """Rows of one statement: on the writer inside this thread's transaction (its own
        writes), else on a pooled connection (retried once on a broken connection)."""
        if self._owner == threading.get_ident():
            return self._db.execute(sql, params).fetchall()
        for attempt in (0, 1):
            try:
                with self._pool.connection() as conn:
                    return conn.execute(sql, params).fetchall()
            except psycopg.OperationalError as exc:
                if attempt or self._closed:
                    raise Unavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from None
            except PoolTimeout:
                raise Unavailable("PostgreSQL is unavailable (no connection)") from None
        return []

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write outside the object rules (meta, events): in this thread's
        transaction, or on its own (autocommit)."""
        if self._owner == threading.get_ident():
            self._savepoints.touch()
            self._db.execute(sql, params)
            return
        for attempt in (0, 1):
            try:
                with self._pool.connection() as conn:
                    conn.execute(sql, params)
                    return
            except psycopg.OperationalError as exc:
                if attempt or self._closed:
                    raise Unavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from None

    @property
    def resource_version(self) -> int:
        """The rv of the last write committed by any hub (0 for an empty store)."""
        if self._owner == threading.get_ident():
            # inside this thread's transaction, which holds the write lock of all hubs:
            # nothing was committed since it began (a reconcile pass asks once a pass)
            return self._begun_rv
        rows = self._read("SELECT value FROM gu_meta WHERE key='rv'")
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _row_to_obj(row: Sequence[Any]) -> dict[str, Any]:
        (kind, name, uid, generation, rv, created, deleted, labels, annotations,
         finalizers, spec, status, _apply_set) = row  # fmt: skip
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
            "spec": spec,
            "status": loads(status),
        }

    def _fetch(self, kind: str, name: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM gu_objects WHERE kind=%s AND name=%s", (kind, name))
        return self._row_to_obj(rows[0]) if rows else None

    def _fetch_many(self, kind: str, names: builtins.list[str]) -> dict[str, dict[str, Any]]:
        rows = self._read(
            "SELECT * FROM gu_objects WHERE kind=%s AND name = ANY(%s)", (kind, names)
        )
        return {row[1]: self._row_to_obj(row) for row in rows}

    def _write(
        self,
        obj: dict[str, Any],
        change: ChangeType,
        apply_set: str | None,
        spec_changed: bool = True,
    ) -> None:
        meta = obj["metadata"]
        *columns, whole = encode_object(obj)
        self._savepoints.touch()
        self._db.execute(
            "INSERT INTO gu_objects VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb,%s,%s) "
            "ON CONFLICT (kind, name) DO UPDATE SET uid=excluded.uid, "
            "generation=excluded.generation, rv=excluded.rv, created=excluded.created, "
            "deleted=excluded.deleted, labels=excluded.labels, "
            "annotations=excluded.annotations, finalizers=excluded.finalizers, "
            "spec=excluded.spec, status=excluded.status, apply_set=excluded.apply_set",
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
        self._log_change(obj, change, whole)

    def _log_change(
        self, obj: dict[str, Any], change: ChangeType, encoded: str | None = None
    ) -> None:
        self._keep_write(obj)
        self._savepoints.touch()
        self._db.execute(
            "INSERT INTO gu_changes(rv, kind, name, type, object, writer, epoch, node) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                obj["metadata"]["resourceVersion"],
                obj["kind"],
                obj["metadata"]["name"],
                change,
                encoded if encoded is not None else dumps(obj),
                self.writer,
                FENCE.get(),
                change_node(obj["kind"], obj["metadata"]["name"], obj),
            ),
        )

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _remove(self, kind: str, name: str) -> None:
        self._savepoints.touch()
        self._db.execute("DELETE FROM gu_objects WHERE kind=%s AND name=%s", (kind, name))
        self._db.execute("DELETE FROM gu_events WHERE kind=%s AND name=%s", (kind, name))

    def _apply_set_members(self, apply_set: str) -> builtins.list[dict[str, Any]]:
        rows = self._read(
            "SELECT * FROM gu_objects WHERE apply_set=%s ORDER BY kind, name", (apply_set,)
        )
        return [self._row_to_obj(r) for r in rows]

    # --------------------------------------------------------------- reads

    def try_get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._fetch(kind, name)

    def list(
        self, kind: str, selector: dict[str, str | None] | None = None
    ) -> builtins.list[dict[str, Any]]:
        rows = self._read("SELECT * FROM gu_objects WHERE kind=%s ORDER BY name", (kind,))
        objs = [self._row_to_obj(r) for r in rows]
        if selector:
            objs = [o for o in objs if match_labels(o["metadata"]["labels"], selector)]
        return objs

    def names(self, kind: str) -> builtins.list[str]:
        rows = self._read("SELECT name FROM gu_objects WHERE kind=%s ORDER BY name", (kind,))
        return [str(r[0]) for r in rows]

    def list_where(self, kind: str, json_path: str, value: Any) -> builtins.list[dict[str, Any]]:
        """Objects of ``kind`` whose ``spec`` has ``value`` at ``json_path`` (JSON equality;
        an ``INDEXED_PATHS`` path is an index lookup)."""
        rows = self._read(
            f"SELECT * FROM gu_objects WHERE kind=%s AND spec #> {_pg_path(json_path)} "
            "= %s::jsonb ORDER BY name",
            (kind, json.dumps(value)),
        )
        return [self._row_to_obj(r) for r in rows]

    def list_where_plan(self, kind: str, json_path: str) -> str:
        """How PostgreSQL runs ``list_where(kind, json_path, …)`` (``EXPLAIN``)."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"EXPLAIN SELECT * FROM gu_objects WHERE kind=%s AND spec #> "
                f"{_pg_path(json_path)} = %s::jsonb ORDER BY name",
                (kind, '"x"'),
            ).fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return int(self._read("SELECT count(*) FROM gu_objects")[0][0])
        return int(self._read("SELECT count(*) FROM gu_objects WHERE kind=%s", (kind,))[0][0])

    def changes(
        self, since: int, limit: int = 1000, kinds: AbstractSet[str] | None = None
    ) -> builtins.list[Change]:
        """Changes with rv > ``since``, oldest first (only of ``kinds``, if given);
        ``Gone`` if the log was compacted."""
        if kinds is None:
            rows = self._read(
                "SELECT rv, type, kind, name, object FROM gu_changes WHERE rv > %s "
                "ORDER BY rv LIMIT %s",
                (since, limit),
            )
        else:
            rows = self._read(
                "SELECT rv, type, kind, name, object FROM gu_changes WHERE rv > %s "
                "AND kind = ANY(%s) ORDER BY rv LIMIT %s",
                (since, sorted(kinds), limit),
            )
        if kinds is not None or not rows or int(rows[0][0]) != since + 1:
            # something is missing after ``since``: compacted away, or nothing new
            self._refuse_compacted(since)
        return [Change(r[0], r[1], r[2], r[3], loads(r[4])) for r in rows]

    def change_texts(self, since: int, limit: int = 1000) -> builtins.list[ChangeText]:
        rows = self._read(
            "SELECT rv, type, kind, name, node, CASE WHEN kind = 'Session' "
            "THEN object::jsonb #>> '{spec,app}' END, object FROM gu_changes "
            "WHERE rv > %s ORDER BY rv LIMIT %s",
            (since, limit),
        )
        if not rows or int(rows[0][0]) != since + 1:
            self._refuse_compacted(since)  # (as ``changes``)
        return [ChangeText(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def node_changes(self, node: str, since: int, limit: int = 1000) -> builtins.list[Change]:
        """``node``'s changes with rv > ``since`` (by the node index); ``Gone`` as ``changes``."""
        rows = self._read(
            "SELECT rv, type, kind, name, object FROM gu_changes WHERE node = %s AND rv > %s "
            "ORDER BY rv LIMIT %s",
            (node, since, limit),
        )
        self._refuse_compacted(since)  # (a node's rvs have gaps: always checked)
        return [Change(r[0], r[1], r[2], r[3], loads(r[4])) for r in rows]

    def _refuse_compacted(self, since: int) -> None:
        """``Gone`` if changes after ``since`` were compacted away."""
        mine = self._owner == threading.get_ident()
        if mine and self._begun_oldest is not None:
            oldest = self._begun_oldest  # (it moves only at a commit, under the write lock)
        else:
            rows = self._read("SELECT value FROM gu_meta WHERE key='oldest'")
            oldest = int(rows[0][0]) if rows else 0
            if mine:
                self._begun_oldest = oldest
        if since + 1 < oldest and since < self.resource_version:
            raise Gone(f"resourceVersion {since} is too old (oldest kept: {oldest}); list again")

    def change_writers(self) -> builtins.list[tuple[int, str, int | None]]:
        """(rv, writer, epoch) of every change kept, in order (tests of fencing)."""
        rows = self._read("SELECT rv, writer, epoch FROM gu_changes ORDER BY rv")
        return [(int(r[0]), str(r[1]), None if r[2] is None else int(r[2])) for r in rows]

    # ---------------------------------------------------------------- meta

    def put_meta(self, key: str, value: str) -> None:
        self._exec(
            "INSERT INTO gu_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
            "SET value=excluded.value",
            (key, value),
        )

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM gu_meta WHERE key=%s", (key,))
        return str(rows[0][0]) if rows else None

    def meta_items(self, prefix: str) -> builtins.list[tuple[str, str]]:
        rows = self._read("SELECT key, value FROM gu_meta WHERE starts_with(key, %s)", (prefix,))
        return [(str(k), str(v)) for k, v in rows]

    def delete_meta(self, key: str) -> None:
        self._exec("DELETE FROM gu_meta WHERE key=%s", (key,))

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
        if unless_repeated:
            newest = self._read(
                "SELECT reason, message FROM gu_events WHERE kind=%s AND name=%s "
                "ORDER BY id DESC LIMIT 1",
                (kind, name),
            )
            if newest and newest[0][0] == reason and newest[0][1] == message:
                return False
        self._exec(
            "WITH added AS (INSERT INTO gu_events(time, kind, name, type, reason, message) "
            "VALUES (%s,%s,%s,%s,%s,%s) RETURNING id) "
            "DELETE FROM gu_events WHERE kind=%s AND name=%s AND id NOT IN "
            "(SELECT id FROM gu_events WHERE kind=%s AND name=%s ORDER BY id DESC LIMIT 19) "
            "AND id NOT IN (SELECT id FROM added)",
            (now(), kind, name, type_, reason, message, kind, name, kind, name),
        )
        return True

    def events(self, kind: str, name: str) -> builtins.list[Event]:
        rows = self._read(
            "SELECT time, kind, name, type, reason, message FROM gu_events "
            "WHERE kind=%s AND name=%s ORDER BY id",
            (kind, name),
        )
        return [Event(*r) for r in rows]

    # ------------------------------------------------------- leader lease

    def lease_acquire(self, holder: str, ttl: float) -> int | None:
        """Take the leader lease if it ran out (or renew it if ``holder`` has it): the
        epoch ``holder`` now leads with, or None. A takeover moves the epoch, under the
        write lock, so the previous leader's writes are refused from then on."""
        with self.transaction():
            self._savepoints.touch()
            row = self._db.execute(
                "UPDATE gu_leader SET holder=%s, expires=clock_timestamp() + make_interval("
                "secs => %s), epoch = CASE WHEN holder=%s THEN epoch ELSE epoch + 1 END "
                "WHERE id=1 AND (holder=%s OR expires < clock_timestamp()) RETURNING epoch",
                (holder, ttl, holder, holder),
            ).fetchone()
        return int(row[0]) if row else None

    def lease_renew(self, holder: str, epoch: int, ttl: float) -> bool:
        """Extend ``holder``'s lease of ``epoch``; False if it is no longer its."""
        rows = self._read(
            "UPDATE gu_leader SET expires = clock_timestamp() + make_interval(secs => %s) "
            "WHERE id=1 AND holder=%s AND epoch=%s RETURNING epoch",
            (ttl, holder, epoch),
        )
        return bool(rows)

    def lease_release(self, holder: str, epoch: int) -> None:
        """Give the lease up at once (a clean stop): another hub takes over without
        waiting for it to run out."""
        self._exec(
            "UPDATE gu_leader SET expires='epoch' WHERE id=1 AND holder=%s AND epoch=%s",
            (holder, epoch),
        )

    def lease_holder(self) -> tuple[str, int, float]:
        """(holder, epoch, seconds until the lease runs out: negative once it has)."""
        rows = self._read(
            "SELECT holder, epoch, extract(epoch FROM expires - clock_timestamp()) "
            "FROM gu_leader WHERE id=1"
        )
        holder, epoch, left = rows[0]
        return str(holder), int(epoch), float(left)


__all__ = ["INDEXED_PATHS", "MIGRATIONS", "PostgresStore", "migrate", "redact"]
