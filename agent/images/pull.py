"""Moving image bytes at hashing speed: the pull pipeline and the cached-file hash.

``PullPipeline`` receives, hashes and writes a pull on three overlapping
threads over page-aligned buffers, writing with O_DIRECT where the file system
takes it; ``hash_cached`` re-hashes a cached file the same way (reads with
O_DIRECT, hashing on another thread). Both release the GIL in hashlib and in
the I/O, so a pull costs about the hash alone. The cache
(``agent.images.cache``) decides what to pull and where; this module only
moves and hashes bytes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from specs.images import (
    BytesLike,
    Hasher,
    hash_stream,
)


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), which ``os`` does not expose; else None.

    It starts writeback of a range without waiting for it. Kicked every
    32 MiB during a pull, the disk writes alongside the hashing and the final
    fsync has almost nothing left to do (measured here: 130 ms → 6 ms for
    512 MiB). It is only a hint: the fsync remains what makes the file durable.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write_flag = 2  # SYNC_FILE_RANGE_WRITE

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, write_flag)  # a failure only means no head start

    return start_writeback


_start_writeback = _load_sync_file_range()
_WRITEBACK_EVERY: Final = 32 << 20


_DIRECT_BLOCK: Final = 4096  # O_DIRECT alignment that suits 512-byte and 4 KiB devices
_DIRECT_BUFFER: Final = 4 << 20
_BUFFERS: Final = 6  # per pull or verify: 24 MiB in flight at most
_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)


def _open_direct(path: Path, flags: int, mode: int = 0o644) -> tuple[int, bool]:
    """Open with O_DIRECT where the file system takes it (old tmpfs, some FUSE mounts do not)."""
    if _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


def _drop_direct(fd: int) -> None:
    """Turn O_DIRECT off on ``fd`` (a file system that refuses our aligned I/O after all)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


class PullPipeline:
    """A pull in three overlapping stages: receive → hash → write, over a pool of buffers.

    The caller's thread copies the incoming chunks into page-aligned 4 MiB
    buffers (``feed``); a hash thread hashes each full buffer and hands it to
    a write thread, which writes it and puts it back in the pool. hashlib and
    the writes release the GIL, so receiving, hashing and writing run at once
    and a pull costs about the slowest of them — the hash — instead of their
    sum. Six buffers bound the memory (24 MiB) and make a fast source wait for
    a slow disk. The chunks are copied once, so a source may reuse its buffer.

    Where the file system takes it the file is written with O_DIRECT, straight
    from the aligned buffers: no page cache copy of the image. Fresh page
    cache pages are the dearest part of a buffered pull (measured here:
    1.4–1.8 s of system time for 512 MiB when the memory had been handed
    back to the host, against 0.15 s direct), and an image is written once
    and read back once, by ``verify``, which reads it the same way. The last
    block is padded to 4 KiB and the file then truncated to its size. Should
    the file system refuse a direct write (EINVAL), O_DIRECT is turned off and
    the rest is written buffered, with writeback started every 32 MiB so the
    final fsync is short.

    An error on a stage thread (a full disk) is raised by the next ``feed`` or
    by ``close``; ``abort`` stops without raising (the caller deletes the file).
    """

    def __init__(self, path: Path, buffers: int = _BUFFERS) -> None:
        self._fd, self._direct = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self._hasher = Hasher()
        self._pool = [mmap.mmap(-1, _DIRECT_BUFFER) for _ in range(buffers)]
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for buf in self._pool:
            self._free.put(buf)
        self._to_hash: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._to_write: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._cur: mmap.mmap | None = None
        self._fill = 0
        self._offset = self._synced = 0
        self._error: BaseException | None = None
        self._aborted = False
        self._closed = False
        self._threads = [
            threading.Thread(target=self._hash_stage, name="gu-image-hash", daemon=True),
            threading.Thread(target=self._write_stage, name="gu-image-writer", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def direct(self) -> bool:
        """Whether the bytes went to the disk with O_DIRECT (final after ``close``)."""
        return self._direct

    def feed(self, chunk: BytesLike) -> None:
        """Take the next piece of the image (copied: the source may reuse it)."""
        with memoryview(chunk) as whole:
            view = whole.cast("B") if whole.ndim != 1 or whole.format != "B" else whole
            while view:
                if self._cur is None:
                    if self._error is not None:
                        raise self._error
                    self._cur, self._fill = self._free.get(), 0
                take = min(len(view), _DIRECT_BUFFER - self._fill)
                self._cur[self._fill : self._fill + take] = view[:take]
                self._fill += take
                view = view[take:]
                if self._fill == _DIRECT_BUFFER:
                    self._to_hash.put((self._cur, self._fill))
                    self._cur = None

    def close(self) -> Hasher:
        """Write the rest, truncate, fsync (read-only first) and close; the hasher of the bytes."""
        if self._cur is not None and self._fill:
            self._to_hash.put((self._cur, self._fill))
            self._cur = None
        self._stop()
        if self._error is not None:
            raise self._error
        return self._hasher

    def abort(self) -> None:
        self._aborted = True
        self._stop()

    def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._to_hash.put(None)
        for t in self._threads:
            t.join()
        os.close(self._fd)
        for buf in self._pool:
            buf.close()

    def _hash_stage(self) -> None:
        while (item := self._to_hash.get()) is not None:
            if self._error is None and not self._aborted:
                buf, n = item
                with memoryview(buf) as view:
                    self._hasher.update(view[:n])
            self._to_write.put(item)
        self._to_write.put(None)

    def _write_stage(self) -> None:
        while (item := self._to_write.get()) is not None:
            buf, n = item
            try:
                if self._error is None and not self._aborted:
                    self._write(buf, n)
            except BaseException as exc:
                self._error = exc
            finally:
                self._free.put(buf)  # keep draining: the caller never waits forever
        if self._error is None and not self._aborted:
            try:
                os.ftruncate(self._fd, self._offset)  # a direct last block's padding goes
                # Read-only: a cached image is never written again, by us or by mistake.
                os.fchmod(self._fd, 0o444)
                os.fsync(self._fd)
            except BaseException as exc:
                self._error = exc

    def _write(self, buf: mmap.mmap, n: int) -> None:
        with memoryview(buf) as view:
            done = 0
            if self._direct:
                length = -(-n // _DIRECT_BLOCK) * _DIRECT_BLOCK
                try:
                    while done < length:
                        done += os.pwrite(self._fd, view[done:length], self._offset + done)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    _drop_direct(self._fd)  # takes the flag, refuses the I/O: write buffered
                    self._direct = False
                if self._direct:
                    self._offset += n
                    return
            while done < n:
                done += os.pwrite(self._fd, view[done:n], self._offset + done)
        self._offset += n
        if _start_writeback is not None and self._offset - self._synced >= _WRITEBACK_EVERY:
            _start_writeback(self._fd, self._synced, self._offset - self._synced)
            self._synced = self._offset


def hash_cached(path: Path) -> tuple[str, int]:
    """The image hash and size of a cached file, read with O_DIRECT where possible.

    A reader thread fills six reused page-aligned buffers from the disk
    while this thread hashes the previous one (both release the GIL), so the
    check costs about the hash alone and allocates no page cache — the file
    was written with O_DIRECT, so it is not in the page cache anyway. Where
    O_DIRECT is refused (tmpfs) it reads buffered (``hash_stream``).
    """
    fd, direct = _open_direct(path, os.O_RDONLY)
    if not direct:
        os.close(fd)
        return hash_stream(path)
    hasher = Hasher()
    free: queue.Queue[mmap.mmap] = queue.Queue()
    full: queue.Queue[tuple[mmap.mmap, int] | BaseException | None] = queue.Queue()
    buffers = [mmap.mmap(-1, _DIRECT_BUFFER) for _ in range(_BUFFERS)]
    for b in buffers:
        free.put(b)
    stop = threading.Event()

    def read() -> None:
        offset = 0
        try:
            while not stop.is_set():
                b = free.get()
                try:
                    n = os.preadv(fd, [b], offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    _drop_direct(fd)  # a file system that takes the flag but not the I/O
                    n = os.preadv(fd, [b], offset)
                full.put((b, n))
                offset += n
                if n < _DIRECT_BUFFER:  # a regular file reads short only at its end
                    break
        except BaseException as exc:
            full.put(exc)
        finally:
            full.put(None)

    reader = threading.Thread(target=read, name="gu-image-verify", daemon=True)
    reader.start()
    try:
        while (item := full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            b, n = item
            if n:
                with memoryview(b) as view:
                    hasher.update(view[:n])
            free.put(b)
    finally:
        stop.set()
        for b in buffers:
            free.put(b)  # unblock a reader waiting for a buffer
        reader.join()
        os.close(fd)
        for b in buffers:
            b.close()
    return hasher.hash, hasher.size
