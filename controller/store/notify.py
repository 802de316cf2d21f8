"""Several processes writing one SQLite file: who writes, and who must hear of it.

The hub may run its reconcile engine in a process of its own
(``controller.enginehost``), so the API's process and the engine's both write the
store. SQLite makes their transactions safe by itself; two things it does not do:

- **Order the writers fairly.** A writer that finds the file locked polls SQLite's
  busy handler, sleeping 1, 2, 5, 10 … ms between tries, and a busy engine that
  commits and begins again at once can take the lock before a sleeping API write
  ever sees it free. ``lock``/``unlock`` wrap each transaction in an exclusive
  ``flock`` on a file beside the database: a waiter sleeps in the kernel and is woken
  as soon as it is released.
- **Tell the other processes a commit happened.** Each process binds a Unix datagram
  socket in a directory beside the database (``<db>.peers/<pid>.sock``); after a
  commit, ``announce`` sends one byte to every other socket there. The receiving
  thread then reads the committed rv from the file itself (so a wake-up lost to a
  full socket buffer loses nothing: the wake-ups still queued bring the newest
  rv), and looks once a second anyway.

A writer that finds the lock held says so too (a ``WAITING`` datagram): the holder,
the engine grouping passes into one commit, then commits at its next pass
(``Store.writer_waiting``) instead of at the end of its window, so it can group long
while nobody else wants to write without making the API's writes wait for it.

Only processes on one machine share a SQLite file, so this needs nothing but the
file system; hubs on several machines share PostgreSQL instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("gu.store")

POLL_SECONDS = 1.0
"""How often the receiver looks at the file's rv without being woken (a safety net)."""

COMMITTED = b"c"  # a datagram: a commit happened
WAITING = b"w"  # a datagram: the sender waits for the writer lock


class CommitPeers:
    """The cross-process lock and commit announcements of one shared SQLite file.

    ``on_commit()`` runs on the receiver's thread whenever another process may have
    committed (woken, or every ``POLL_SECONDS``); the store reads the rv itself.
    """

    def __init__(self, db_path: str, on_commit: Callable[[], None]) -> None:
        self._on_commit = on_commit
        self._lock_fd = os.open(db_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.dir = Path(db_path + ".peers")
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.path = self.dir / f"{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # (a process of the same pid that died)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(str(self.path))
        except OSError:
            self._sock.close()
            os.close(self._lock_fd)
            raise
        self._sock.settimeout(POLL_SECONDS)
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._peers: list[str] = []
        self._peers_mtime = -1
        self._listed_at = 0.0
        self._closed = False
        self.waiting = False
        """Another process said it waits for the writer lock (cleared at this one's next
        commit, which lets it in)."""
        self._thread = threading.Thread(target=self._receive, name="gu-store-peers", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- writers

    def lock(self) -> None:
        """Wait for, and take, the right to write (of every process of this file). If
        another process holds it, it is told that this one waits (``waiting``)."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._send(WAITING)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------- announce

    def announce(self) -> None:
        """Wake every other process of this file: a commit happened."""
        self._send(COMMITTED)

    def _send(self, what: bytes) -> None:
        for peer in self._current_peers():
            try:
                self._out.sendto(what, peer)
            except BlockingIOError:  # its queue is full: it has wake-ups to read already
                pass
            except (ConnectionRefusedError, FileNotFoundError):  # it is gone
                with contextlib.suppress(OSError):
                    os.unlink(peer)
                self._peers_mtime = -1
            except OSError as exc:
                log.warning("event=commit_announce_failed peer=%s error=%s", peer, exc)

    def _current_peers(self) -> list[str]:
        """The other processes' sockets: listed again when the directory changed, and at
        least once a second (its time stamp moves in ticks of a few ms: a socket bound in
        the tick of the last listing would not change it)."""
        try:
            mtime = self.dir.stat().st_mtime_ns
        except OSError:
            return []
        now = time.monotonic()
        if mtime != self._peers_mtime or now - self._listed_at > POLL_SECONDS:
            mine = str(self.path)
            self._peers = [str(p) for p in self.dir.glob("*.sock") if str(p) != mine]
            self._peers_mtime, self._listed_at = mtime, now
        return self._peers

    # -------------------------------------------------------------- receive

    def _receive(self) -> None:
        while not self._closed:
            got = set()
            try:
                got.add(self._sock.recv(64))
                self._sock.setblocking(False)
                try:
                    while True:  # (drain: one look at the file serves them all)
                        got.add(self._sock.recv(64))
                except BlockingIOError:
                    pass
                finally:
                    self._sock.settimeout(POLL_SECONDS)
            except TimeoutError:
                pass
            except OSError:
                if self._closed:
                    return
                raise
            if self._closed:
                return
            if WAITING in got:
                self.waiting = True
                if got == {WAITING}:
                    continue
            try:
                self._on_commit()
            except Exception:  # (the store closed under it, or a listener failed)
                if self._closed:
                    return
                log.exception("event=foreign_commit_failed")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._out.sendto(b"x", str(self.path))  # (wakes the receiver: it ends)
        self._thread.join(timeout=2 * POLL_SECONDS)
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._sock.close()
        self._out.close()
        os.close(self._lock_fd)
