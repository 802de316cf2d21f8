"""What hubs sharing one PostgreSQL store also share: blobs and workload output.

A hub on the embedded store keeps images, blobs and outputs as files under its state
dir (``controller.images``) and the placements' output there too (``controller.logs``).
Several hubs must each serve all of them: an image pushed to one is pulled by agents
connected to another, and nothing acknowledged may be lost with one hub's disk. So on a
shared store:

- ``SharedBlobs`` is the image store's replica: every blob a hub stores is also written
  to the database (1 MiB chunks, in one transaction, before the upload is acknowledged),
  and a hub asked for a blob it does not have fetches it from there into its own files,
  verifying its hash on the way as agents do. Local files stay the fast path; the
  database is the copy every hub can reach.
- ``SharedLogs`` keeps each placement's output (the tail agents upload, bounded) in a
  table instead of files, with the same interface as ``PlacementLogs``.

Both use a small pool of their own, outside the store's write lock: blobs are content-
addressed and logs are replaced whole, so no ordering between hubs is needed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from controller.store import Unavailable
from controller.store.postgres import redact
from specs.images import CHUNK_SIZE, Hasher, ImageHashMismatch

log = logging.getLogger("gu.hub.shared")


def _pool(url: str, name: str) -> ConnectionPool:
    return ConnectionPool(
        url, min_size=1, max_size=4, kwargs={"autocommit": True}, timeout=10, open=True, name=name
    )


class SharedBlobs:
    """Blobs and their signatures in the shared database (see the module doc)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = _pool(url, "gu-blobs")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise Unavailable(f"shared blobs at {redact(self.url)}: {exc}") from None

    def has(self, hash: str) -> bool:
        return bool(self._rows("SELECT 1 FROM gu_blobs WHERE hash=%s AND seq=0", (hash,)))

    def put(self, hash: str, path: Path) -> None:
        """Copy the verified file ``path`` of blob ``hash`` in (nothing if it is there)."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                if conn.execute(
                    "SELECT 1 FROM gu_blobs WHERE hash=%s AND seq=0", (hash,)
                ).fetchone():
                    return
                with open(path, "rb") as f, conn.cursor() as cur:
                    seq = 0
                    while chunk := f.read(CHUNK_SIZE):
                        cur.execute(
                            "INSERT INTO gu_blobs VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                            (hash, seq, chunk),
                        )
                        seq += 1
                    if seq == 0:  # an empty blob still has its (empty) first chunk
                        cur.execute(
                            "INSERT INTO gu_blobs VALUES (%s, 0, '') ON CONFLICT DO NOTHING",
                            (hash,),
                        )
        except psycopg.Error as exc:
            raise Unavailable(f"shared blobs at {redact(self.url)}: {exc}") from None
        log.info("event=blob_shared hash=%s", hash)

    def fetch(self, hash: str, dest: Path) -> bool:
        """Write blob ``hash`` to ``dest`` (a new file), checking it hashes to its name;
        False when the database does not have it. ImageHashMismatch if it is damaged."""
        hasher = Hasher()
        found = False
        try:
            with self._pool.connection() as conn, conn.cursor() as cur, open(dest, "xb") as out:
                cur.execute("SELECT data FROM gu_blobs WHERE hash=%s ORDER BY seq", (hash,))
                for (data,) in cur:
                    found = True
                    hasher.update(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except psycopg.Error as exc:
            dest.unlink(missing_ok=True)
            raise Unavailable(f"shared blobs at {redact(self.url)}: {exc}") from None
        if not found:
            dest.unlink(missing_ok=True)
            return False
        if hasher.hash != hash:
            dest.unlink(missing_ok=True)
            raise ImageHashMismatch(hash, hasher.hash, "the shared store's copy")
        return True

    def list(self) -> builtins.list[tuple[str, int]]:
        """(hash, size) of every shared blob."""
        rows = self._rows("SELECT hash, sum(length(data)) FROM gu_blobs GROUP BY hash")
        return [(str(h), int(n)) for h, n in rows]

    def delete(self, hash: str) -> bool:
        rows = self._rows("DELETE FROM gu_blobs WHERE hash=%s RETURNING seq", (hash,))
        self._rows("DELETE FROM gu_blob_sigs WHERE hash=%s RETURNING id", (hash,))
        return bool(rows)

    def put_signature(self, hash: str, sig_id: str, data: bytes) -> None:
        self._rows(
            "INSERT INTO gu_blob_sigs VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
            (hash, sig_id, data),
        )

    def signatures(self, hash: str) -> builtins.list[tuple[str, bytes]]:
        """(id, bytes) of the shared signatures of ``hash``, by id."""
        rows = self._rows("SELECT id, data FROM gu_blob_sigs WHERE hash=%s ORDER BY id", (hash,))
        return [(str(i), bytes(d)) for i, d in rows]

    def close(self) -> None:
        self._pool.close()


class SharedLogs:
    """The placements' output in the shared database (``PlacementLogs``' interface)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = _pool(url, "gu-logs")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise Unavailable(f"shared logs at {redact(self.url)}: {exc}") from None

    def store(self, placement: str, body: bytes, run: int | None) -> None:
        """Replace the current run's copy; when ``run`` moves on, keep the old one as the
        previous run's (the run number rides along in a header line of its own)."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                row = conn.execute(
                    "SELECT body FROM gu_logs WHERE placement=%s AND previous=false FOR UPDATE",
                    (placement,),
                ).fetchone()
                if row is not None and run is not None:
                    stored_run, _, old = bytes(row[0]).partition(b"\n")
                    if stored_run and stored_run != str(run).encode():
                        conn.execute(
                            "INSERT INTO gu_logs VALUES (%s, true, %s) ON CONFLICT (placement, "
                            "previous) DO UPDATE SET body=excluded.body",
                            (placement, b"\n" + old),
                        )
                conn.execute(
                    "INSERT INTO gu_logs VALUES (%s, false, %s) ON CONFLICT (placement, "
                    "previous) DO UPDATE SET body=excluded.body",
                    (placement, ("" if run is None else str(run)).encode() + b"\n" + body),
                )
        except psycopg.Error as exc:
            raise Unavailable(f"shared logs at {redact(self.url)}: {exc}") from None

    def read(self, placement: str, previous: bool = False) -> str:
        rows = self._rows(
            "SELECT body FROM gu_logs WHERE placement=%s AND previous=%s", (placement, previous)
        )
        if not rows:
            return ""
        return bytes(rows[0][0]).partition(b"\n")[2].decode(errors="replace")

    def sweep(self, exists: Callable[[str], bool]) -> int:
        """Remove the output of every placement for which ``exists`` is False."""
        names = {str(r[0]) for r in self._rows("SELECT DISTINCT placement FROM gu_logs")}
        gone = [n for n in names if not exists(n)]
        for name in gone:
            self._rows("DELETE FROM gu_logs WHERE placement=%s", (name,))
        if gone:
            log.info("event=logs_swept placements=%d", len(gone))
        return len(gone)

    async def sweep_every(
        self, exists: Callable[[str], bool], stop: asyncio.Event, interval: float = 60.0
    ) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sweep, exists)
            except Exception:
                log.exception("event=logs_sweep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def close(self) -> None:
        self._pool.close()


__all__ = ["SharedBlobs", "SharedLogs"]
