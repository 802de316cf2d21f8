"""The hub's image store: content-addressed files named by the sha3-256 of their bytes.

Layout under ``root``::

    sha3-256/<hex>              the image, exactly the bytes that hash to <hex>
    sig/<hex>/<sha3 of sig>.sig signatures of that image, stored as given
    tmp/                        uploads in flight

An upload (``put_stream`` / ``put_async``) is written to ``tmp/`` while it is
hashed, fsynced, and only then linked under its hash: a reader never sees a
half-written or unverified image under a final name, and a crash leaves at most
a temp file (removed at the next start once stale). When the caller names the
hash it expects (``PUT /v1/images/{hash}``), a mismatch raises
``ImageHashMismatch`` and nothing is kept. Two uploads of the same bytes race
harmlessly: the first link wins and the second one's temp file is dropped —
after a re-hash of the stored file, so that pushing an image again repairs a
stored copy that was damaged or changed on disk (agents refuse such a copy).

Every hash string is checked by ``specs.images.parse_hash`` before it becomes a
path, so an API caller cannot name ``sha3-256:../../etc``.

The store is synchronous file I/O and thread-safe (it keeps no state but the
directory); ``put_async`` moves the blocking parts (hash+write, fsync) off the
event loop in 1 MiB batches.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, Protocol, TypeVar

from specs.fileio import fsync_dir
from specs.images import (
    CHUNK_SIZE,
    HASH_PREFIX,
    BytesLike,
    Hasher,
    ImageHashMismatch,
    hash_bytes,
    hash_file,
    parse_hash,
)

log = logging.getLogger("gu.hub.images")

# Signatures are small (an Ed25519 signature and a short payload); anything
# bigger is a mistake or abuse, not a signature.
MAX_SIGNATURE_BYTES: Final = 64 * 1024
SYNC_EVERY: Final = 64 << 20
"""An upload waits for the disk every this many bytes (see ``_Upload.store``)."""
MAX_PENDING_BATCHES: Final = 64
"""Batches (1 MiB) an upload holds in memory while the disk or the hashing catches up."""
# Temp files older than this at start-up belong to an upload that died with its process.
_STALE_TMP_SECONDS: Final = 3600.0

T = TypeVar("T")


class BlobReplica(Protocol):
    """A copy of every blob that other hubs can reach (``controller.shared.SharedBlobs``)."""

    def has(self, hash: str) -> bool: ...

    def put(self, hash: str, path: Path) -> None: ...

    def fetch(self, hash: str, dest: Path) -> bool: ...

    def list(self) -> builtins.list[tuple[str, int]]: ...

    def delete(self, hash: str) -> bool: ...

    def put_signature(self, hash: str, sig_id: str, data: bytes) -> None: ...

    def signatures(self, hash: str) -> builtins.list[tuple[str, bytes]]: ...


class ImageNotFound(LookupError):
    """No image with that hash is in the store."""

    def __init__(self, hash: str) -> None:
        self.hash = hash
        super().__init__(f"image {hash} is not in the hub's image store; upload it first")


class ImageTooLarge(Exception):
    """An upload went past the store's size limit; nothing was kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"image is larger than the hub's limit of {limit} bytes; nothing was kept "
            "(raise the hub's image size limit if the image is meant to be this big)"
        )


class StoreFull(Exception):
    """An upload would take the store past its size bound (``gu hub --store-max-gib``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the hub's store is full: it keeps at most {limit / (1 << 30):.2f} GiB of images, "
            "blobs and outputs (gu hub --store-max-gib); delete Sessions whose outputs you have "
            "fetched (`gu outputs`), unpin blobs (`gu blob unpin`), or raise the bound"
        )
        self.limit = limit


@dataclass(frozen=True)
class ImageInfo:
    """One stored image: its hash, its size in bytes and when it was stored (UTC)."""

    hash: str
    size: int
    created: datetime


class _Upload:
    """One upload in flight: a temp file being written and hashed."""

    def __init__(
        self, tmp_dir: Path, max_bytes: int | None, room: Callable[[int], None] | None = None
    ) -> None:
        self.path = tmp_dir / f"{uuid.uuid4().hex}.part"
        self.max_bytes = max_bytes
        self.room = room
        self.hasher = Hasher()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

        self.received = 0
        self._unsynced = 0

    def write(self, chunk: BytesLike) -> None:
        """Check, hash and store ``chunk`` (``put_stream``: one thread does all three)."""
        self.admit(len(chunk))
        self.hasher.update(chunk)
        self.store(chunk)

    def admit(self, size: int) -> None:
        """Count ``size`` more bytes in: ImageTooLarge past the upload's limit, StoreFull
        past the store's bound (nothing of the upload is kept either way)."""
        if self.max_bytes is not None and self.received + size > self.max_bytes:
            raise ImageTooLarge(self.max_bytes)
        if self.room is not None:
            self.room(self.received + size)
        self.received += size

    def store(self, chunk: BytesLike) -> None:
        """Write ``chunk`` at the end of the file; every ``SYNC_EVERY`` bytes, wait for the
        disk to have them (so the fsync at the end has little left, and writing back runs
        alongside the hashing instead of after it)."""
        view = memoryview(chunk)
        assert self._fd is not None
        self._unsynced += view.nbytes
        while view:
            view = view[os.write(self._fd, view) :]
        if self._unsynced >= SYNC_EVERY:
            os.fdatasync(self._fd)
            self._unsynced = 0

    def finish(self) -> None:
        """fsync and close: after this the bytes are on disk, not just in the page cache."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            # Read-only: a stored image is never written again, by us or by mistake.
            os.fchmod(fd, 0o444)
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)


class ImageStore:
    """The hub's content-addressed image store under ``root`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        max_image_bytes: int | None = None,
        max_total_bytes: int | None = None,
        replica: BlobReplica | None = None,
        reader: bool = False,
    ) -> None:
        self.root = Path(root)
        self.reader = reader
        """Another process of this hub writes this directory, this one only reads it (the
        engine's process, ``controller.enginehost``): it removes no temp file of an
        upload in progress, and learns of the writer's changes from ``current_generation``."""
        self.replica = replica
        """Where hubs sharing a store keep every blob too (``controller.shared``): written
        before an upload is acknowledged, read into this store on a miss."""
        self.max_image_bytes = max_image_bytes
        self.max_total_bytes = max_total_bytes
        self._images = self.root / "sha3-256"
        self._sigs = self.root / "sig"
        self._tmp = self.root / "tmp"
        for d in (self._images, self._sigs, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        if not reader:
            self._remove_stale_temps()
        self._lock = threading.Lock()
        self._used = 0 if reader else sum(i.size for i in self._list_local())
        """Bytes stored (images, blobs, outputs), kept as they come and go."""
        self.generation = 0
        """Moves at every image or signature this store stores or deletes: what a reader
        learnt of an image (its size, its signatures) holds while it stays the same."""
        self._generation_file = self.root / "generation"
        self._generation_fd: int | None = None  # (a reader's, kept open: one pread a look)

    def _moved(self) -> None:
        """(Under ``_lock``.) The store changed: ``generation`` moves, here and on disk.

        On disk it is one write of 32 bytes at offset 0, never a truncation: a reader's
        ``pread`` sees the old content or the new, never an empty or partial one."""
        self.generation += 1
        fd = os.open(self._generation_file, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, f"{os.getpid():>10} {self.generation:>20}\n".encode(), 0)
        finally:
            os.close(fd)

    def current_generation(self) -> object:
        """What moves whenever the store changes: ``generation``, or for a ``reader`` the
        writer's generation file (a read of a few bytes: the writer rewrites it in place,
        so the descriptor kept open here sees each new content)."""
        if not self.reader:
            return self.generation
        if self._generation_fd is None:
            try:
                self._generation_fd = os.open(self._generation_file, os.O_RDONLY)
            except OSError:  # (nothing stored yet)
                return b""
        try:
            return os.pread(self._generation_fd, 64, 0)
        except OSError:
            return b""

    @property
    def used_bytes(self) -> int:
        return self._used

    def _room(self, size: int) -> None:
        """StoreFull unless an upload of ``size`` bytes so far fits under the store's bound."""
        if self.max_total_bytes is not None and self._used + size > self.max_total_bytes:
            raise StoreFull(self.max_total_bytes)

    # ----------------------------------------------------------- uploads

    def put_stream(self, chunks: Iterable[BytesLike], expected: str | None = None) -> ImageInfo:
        """Store an image from an iterable of byte chunks; return what was stored.

        The bytes are hashed while written to a temp file, fsynced, then linked
        under their hash. If ``expected`` is given and differs from the hash of
        the bytes, ImageHashMismatch is raised and nothing is kept. Storing an
        image that is already present keeps the existing file, unless that
        file no longer hashes to its name (damaged or changed on disk): then
        the new, verified bytes replace it.
        """
        if expected is not None:
            parse_hash(expected)
        upload = self._begin()
        try:
            for chunk in chunks:
                upload.write(chunk)
            upload.finish()
            return self._commit(upload, expected)
        finally:
            upload.discard()

    async def put_async(
        self, chunks: AsyncIterable[BytesLike], expected: str | None = None
    ) -> ImageInfo:
        """``put_stream`` for an async source (an ASGI request body); disk work runs in threads.

        Small network chunks are gathered into ~1 MiB batches so that a thread
        hop costs little next to the hashing and writing it saves the loop from.
        """
        if expected is not None:
            parse_hash(expected)
        upload = await _in_thread(self._begin)
        loop = asyncio.get_running_loop()
        # one thread hashes and one writes (and waits for the disk now and then), each
        # taking batches in order while the loop receives the next: hashlib and os.write
        # let go of the GIL, so receiving, hashing and writing back all overlap
        hashing, writing = (ThreadPoolExecutor(1, f"gu-upload-{w}") for w in ("hash", "write"))
        pending: deque[asyncio.Future[None]] = deque()
        try:
            batch = bytearray()
            async for chunk in chunks:
                batch += chunk
                if len(batch) >= CHUNK_SIZE:
                    upload.admit(len(batch))
                    pending.append(loop.run_in_executor(hashing, upload.hasher.update, batch))
                    pending.append(loop.run_in_executor(writing, upload.store, batch))
                    batch = bytearray()
                    while len(pending) > 2 * MAX_PENDING_BATCHES:  # (memory stays bounded)
                        await pending.popleft()
            while pending:
                await pending.popleft()
            if batch:
                await _in_thread(upload.write, batch)
            await _in_thread(upload.finish)
            return await _in_thread(self._commit, upload, expected)
        finally:
            for work in pending:  # (the upload failed meanwhile: let the work end first)
                with contextlib.suppress(Exception):
                    await work
            hashing.shutdown(wait=False)
            writing.shutdown(wait=False)
            await _in_thread(upload.discard)

    def _begin(self) -> _Upload:
        return _Upload(self._tmp, self.max_image_bytes, self._room)

    def _commit(self, upload: _Upload, expected: str | None) -> ImageInfo:
        actual = upload.hasher.hash
        if expected is not None and actual != expected:
            log.warning(
                "event=image_rejected reason=hash_mismatch expected=%s actual=%s size=%d",
                expected,
                actual,
                upload.hasher.size,
            )
            raise ImageHashMismatch(expected, actual, "upload to the hub")
        final = self._images / parse_hash(actual)
        try:
            # link, not rename: it never replaces, so an image already stored
            # (maybe being streamed to an agent right now) stays untouched.
            os.link(upload.path, final)
            stored = True
        except FileExistsError:
            # Already stored — unless the stored copy was damaged or changed on
            # disk: then these verified bytes replace it (an upload repairs).
            stored = self._repair(final, upload, actual)
        except OSError:
            # A filesystem without hard links: rename is still atomic, and
            # replacing identical bytes is harmless.
            os.replace(upload.path, final)
            stored = True
        if stored:
            fsync_dir(self._images)
            with self._lock:
                self._used += upload.hasher.size
                self._moved()
        if self.replica is not None:
            self.replica.put(actual, final)
        log.info("event=image_stored hash=%s size=%d new=%s", actual, upload.hasher.size, stored)
        return self._info(actual, final)

    def _repair(self, final: Path, upload: _Upload, actual: str) -> bool:
        """Replace ``final`` by the upload when its bytes no longer hash to ``actual``."""
        try:
            current = hash_file(final)
        except OSError:
            current = None
        if current == actual:
            return False
        log.warning(
            "event=image_repaired hash=%s found=%s reason=stored copy did not match its name",
            actual,
            current,
        )
        os.replace(upload.path, final)  # readers of the old inode finish undisturbed
        return True

    # ------------------------------------------------------------- reads

    def path(self, hash: str) -> Path:
        """The file of image ``hash``; raise ImageNotFound when it is not stored (here, or
        in the replica: then it is fetched and verified first)."""
        p = self._images / parse_hash(hash)
        if not p.is_file() and not self._fetch(hash, p):
            raise ImageNotFound(hash)
        return p

    def _fetch(self, hash: str, final: Path) -> bool:
        """Copy blob ``hash`` from the replica into this store (verified); False if the
        replica does not have it either (or there is none)."""
        if self.replica is None:
            return False
        tmp = self._tmp / f"{uuid.uuid4().hex}.fetch"
        try:
            if not self.replica.fetch(hash, tmp):
                return False
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)
                size = tmp.stat().st_size
                fsync_dir(self._images)
                with self._lock:
                    self._used += size
                    self._moved()
            except FileExistsError:
                pass  # fetched by another request meanwhile
            log.info("event=image_fetched hash=%s from=replica", hash)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, hash: str) -> bool:
        """True when image ``hash`` is stored, here or in the replica (InvalidImageHash on
        a malformed hash)."""
        if (self._images / parse_hash(hash)).is_file():
            return True
        return self.replica is not None and self.replica.has(hash)

    def info(self, hash: str) -> ImageInfo:
        """Hash, size and creation time of a stored image; ImageNotFound otherwise."""
        return self._info(hash, self.path(hash))

    def list(self) -> builtins.list[ImageInfo]:
        """Every stored image (here, and in the replica), oldest first."""
        out = self._list_local()
        if self.replica is not None:
            here = {i.hash for i in out}
            out += [
                ImageInfo(hash=h, size=n, created=datetime.now(UTC))
                for h, n in self.replica.list()
                if h not in here
            ]
        return out

    def _list_local(self) -> builtins.list[ImageInfo]:
        out: builtins.list[ImageInfo] = []
        with os.scandir(self._images) as it:
            for entry in it:
                hash = HASH_PREFIX + entry.name
                try:
                    parse_hash(hash)
                    out.append(self._info(hash, Path(entry.path)))
                except (ValueError, FileNotFoundError):
                    continue  # a stray file, or deleted while we listed
        out.sort(key=lambda i: (i.created, i.hash))
        return out

    def open_range(self, hash: str, start: int = 0) -> BinaryIO:
        """Open image ``hash`` for reading from byte ``start`` (for streaming and resumed pulls).

        The caller closes the file. An image deleted while open stays readable
        through this handle (POSIX unlink semantics).
        """
        if start < 0:
            raise ValueError(f"start must be ≥ 0, not {start}")
        f = open(self.path(hash), "rb")  # noqa: SIM115 — returned to the caller, who closes it
        try:
            size = os.fstat(f.fileno()).st_size
            if start > size:
                raise ValueError(f"start {start} is past the end of image {hash} ({size} bytes)")
            f.seek(start)
        except BaseException:
            f.close()
            raise
        return f

    def delete(self, hash: str) -> None:
        """Remove image ``hash`` and its signatures; ImageNotFound when it is not stored."""
        hex_part = parse_hash(hash)
        path = self._images / hex_part
        shared = self.replica is not None and self.replica.delete(hash)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            if not shared:
                raise ImageNotFound(hash) from None
            size = 0
        with self._lock:
            self._used -= size
            self._moved()
        sig_dir = self._sigs / hex_part
        if sig_dir.is_dir():
            for sig in sig_dir.iterdir():
                sig.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                sig_dir.rmdir()
        log.info("event=image_deleted hash=%s", hash)

    # -------------------------------------------------------- signatures

    def put_signature(self, hash: str, sig_bytes: bytes) -> None:
        """Store a signature of image ``hash`` (idempotent); the image must be stored.

        The bytes are kept as given: checking them against a key is the policy's
        job. The file is named by the sha3-256 of the signature, so the same
        signature uploaded twice is stored once.
        """
        hex_part = parse_hash(hash)
        if not self.exists(hash):
            raise ImageNotFound(hash)
        if not sig_bytes:
            raise ValueError("a signature cannot be empty")
        if len(sig_bytes) > MAX_SIGNATURE_BYTES:
            raise ValueError(
                f"a signature of {len(sig_bytes)} bytes is too big "
                f"(limit {MAX_SIGNATURE_BYTES}); is this really a signature?"
            )
        sig_dir = self._sigs / hex_part
        sig_dir.mkdir(exist_ok=True)
        final = sig_dir / (parse_hash(hash_bytes(sig_bytes)) + ".sig")
        if self.replica is not None:
            self.replica.put_signature(hash, final.name, sig_bytes)
        if final.exists():
            return
        tmp = self._tmp / f"{uuid.uuid4().hex}.sig.part"
        try:
            with open(tmp, "wb") as f:
                f.write(sig_bytes)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            with self._lock:
                self._moved()
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(sig_dir)
        log.info("event=signature_stored hash=%s size=%d", hash, len(sig_bytes))

    def signatures(self, hash: str) -> builtins.list[bytes]:
        """Every signature stored for image ``hash``, in a stable order (may be empty)."""
        sig_dir = self._sigs / parse_hash(hash)
        found = {p.name: p.read_bytes() for p in sig_dir.glob("*.sig")} if sig_dir.is_dir() else {}
        if self.replica is not None:
            found.update(self.replica.signatures(hash))
        return [found[name] for name in sorted(found)]

    # ----------------------------------------------------------- helpers

    def _info(self, hash: str, path: Path) -> ImageInfo:
        st = path.stat()
        # mtime, not ctime: the file is never written after it is stored, and
        # ctime on Linux is inode-change time, not creation.
        return ImageInfo(
            hash=hash, size=st.st_size, created=datetime.fromtimestamp(st.st_mtime, UTC)
        )

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        with os.scandir(self._tmp) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("event=stale_temp_removed path=%s", entry.path)


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run blocking ``fn`` in a thread; if cancelled, let it finish before re-raising.

    A thread cannot be interrupted, and the cleanup that follows a cancellation
    (closing and unlinking the temp file) must not race a write still running.
    """
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise
