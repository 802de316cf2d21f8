"""Image hashes and the native image format: the bytes every other layer agrees on.

An image is one file named by ``sha3-256:<hex>`` of its exact bytes. The hub's
store, the agent's cache and the policy check all use the helpers here, so a
hash means the same thing everywhere:

- ``hash_file`` / ``hash_bytes`` name finished bytes; ``Hasher`` names bytes
  while they stream past (an upload, a download), so nothing is read twice;
  ``HashingReader`` wraps a file object for code that wants to ``read()``.
- ``parse_hash`` is the one strict check of a hash string. Store and cache
  call it before a hash ever becomes part of a path: the hex is the file name,
  so a loose check would be a path traversal.
- ``pack_native`` turns a folder into a reproducible ``.tar.gz``: the same
  folder gives the same bytes, hence the same hash, whatever its mtimes, owners
  or umask were. That is what lets an ImagePolicy pin a native program by hash.

Hashing speed is the point of several choices here: sha3-256 (OpenSSL, ~600 MB/s
on one core) is the bottleneck of every pull and every verify-before-start, so
files are read with ``readinto`` into one reusable 1 MiB buffer and hashed
through a ``memoryview`` — no per-chunk allocation or copy on our side.
``hashlib`` releases the GIL while it hashes a large chunk, so other threads
(the agent's HTTP session, the hub's event loop) keep running meanwhile.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Final, Protocol, TypeAlias

HASH_PREFIX: Final = "sha3-256:"
# What hashing and writing accept without copying.
BytesLike: TypeAlias = bytes | bytearray | memoryview
# 1 MiB: big enough that per-call overhead is noise next to hashing, small
# enough to stay in L2/L3 while it is read and hashed.
CHUNK_SIZE: Final = 1 << 20

_HEX_RE = re.compile(r"[0-9a-f]{64}")


class InvalidImageHash(ValueError):
    """A string that is not ``sha3-256:`` followed by 64 lower-case hex digits."""


class ImageHashMismatch(Exception):
    """The bytes at hand do not hash to the hash they were asked for."""

    def __init__(self, expected: str, actual: str, where: str = "") -> None:
        self.expected = expected
        self.actual = actual
        self.where = where
        at = f" ({where})" if where else ""
        super().__init__(
            f"image bytes do not match their hash{at}: expected {expected}, got {actual}; "
            "the bytes were discarded — fetch or upload the image again, and check that "
            "the hash in the manifest names the file you meant"
        )


class PackError(ValueError):
    """A folder that cannot be packed as a native image (what and where is in the message)."""


def parse_hash(value: str) -> str:
    """Return the 64-hex part of ``sha3-256:<hex>``; raise InvalidImageHash on anything else.

    This is strict on purpose (lower-case only, no whitespace, no other
    algorithm): the hex becomes a file name in the hub store and agent cache.
    """
    if not isinstance(value, str) or not value.startswith(HASH_PREFIX):
        raise InvalidImageHash(
            f"{value!r} is not an image hash: expected 'sha3-256:' followed by 64 lower-case hex"
        )
    hex_part = value[len(HASH_PREFIX) :]
    if not _HEX_RE.fullmatch(hex_part):
        raise InvalidImageHash(
            f"{value!r} is not an image hash: expected 'sha3-256:' followed by 64 lower-case hex"
        )
    return hex_part


def is_hash(value: str) -> bool:
    """True when ``value`` is a well-formed ``sha3-256:<hex>`` image hash."""
    try:
        parse_hash(value)
    except InvalidImageHash:
        return False
    return True


class Hasher:
    """sha3-256 of bytes fed in pieces, plus their count; ``hash`` is ``sha3-256:<hex>``."""

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        self._h = hashlib.sha3_256()
        self.size = 0

    def update(self, chunk: BytesLike) -> None:
        """Feed the next piece (bytes, bytearray or memoryview; never copied)."""
        view = memoryview(chunk)
        self._h.update(view)
        self.size += view.nbytes

    def hexdigest(self) -> str:
        """The bare hex digest of everything fed so far."""
        return self._h.hexdigest()

    @property
    def hash(self) -> str:
        """The image hash (``sha3-256:<hex>``) of everything fed so far."""
        return HASH_PREFIX + self._h.hexdigest()


class ReadableStream(Protocol):
    """What HashingReader wraps: a binary file object (buffered or raw)."""

    def read(self, size: int = -1, /) -> bytes | None: ...

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


class HashingReader:
    """A read-only file wrapper that hashes every byte read through it.

    For code that consumes a stream with ``read``/``readinto`` (tarfile,
    shutil.copyfileobj) and should learn the hash of what it consumed.
    """

    def __init__(self, raw: ReadableStream) -> None:
        self.raw = raw
        self.hasher = Hasher()

    def read(self, size: int = -1) -> bytes:
        """Read like ``raw.read`` and hash what came back."""
        data = self.raw.read(size) or b""
        self.hasher.update(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read like ``raw.readinto`` and hash what came back."""
        n = self.raw.readinto(buffer)
        if n:
            self.hasher.update(memoryview(buffer)[:n])
        return n or 0

    def readable(self) -> bool:
        """Always True: this is a reader."""
        return True

    @property
    def hash(self) -> str:
        """The image hash of the bytes read so far."""
        return self.hasher.hash


def hash_bytes(data: BytesLike) -> str:
    """The image hash (``sha3-256:<hex>``) of ``data``."""
    return HASH_PREFIX + hashlib.sha3_256(data).hexdigest()


def hash_file(path: Path) -> str:
    """The image hash (``sha3-256:<hex>``) of the file's bytes as they are on disk now."""
    return hash_stream(path)[0]


def hash_stream(path: Path) -> tuple[str, int]:
    """The image hash and byte count of a file, read once through one reusable buffer."""
    h = hashlib.sha3_256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    size = 0
    # buffering=0: readinto goes straight to the kernel, skipping the
    # BufferedReader copy that would double the memory traffic.
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
            size += n
    return HASH_PREFIX + h.hexdigest(), size


# ------------------------------------------------------------- native pack


class _HashingWriter:
    """Write-through file wrapper that hashes what is written (the packed bytes)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hasher = Hasher()

    def write(self, data: BytesLike) -> int:
        self.hasher.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _check_link(src: Path, link: Path, rel: PurePosixPath) -> str:
    """Return the link's target if it stays inside ``src``; raise PackError if it escapes."""
    target = os.readlink(link)
    escapes = os.path.isabs(target)
    if not escapes:
        # Lexical check: what the target means once unpacked anywhere.
        joined = os.path.normpath(os.path.join(str(rel.parent), target))
        escapes = joined == ".." or joined.startswith("../")
    if not escapes:
        # Real check: a chain of links inside the folder can still lead out of it
        # (a -> ../.. hidden behind b -> a/x); the unpacked tree resolves the same way.
        real = os.path.realpath(link)
        escapes = os.path.commonpath([real, str(src)]) != str(src)
    if escapes:
        raise PackError(
            f"{link}: symlink to {target!r} points outside {src}; an image must be "
            "self-contained — copy the target into the folder or use a relative link inside it"
        )
    return target


def _entries(src: Path) -> list[tuple[PurePosixPath, Path, os.stat_result]]:
    """Every entry below ``src`` in a fixed order (names sorted per directory, parents first)."""
    out: list[tuple[PurePosixPath, Path, os.stat_result]] = []

    def walk(directory: Path, rel: PurePosixPath) -> None:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = directory / name
            entry_rel = rel / name
            st = path.lstat()
            out.append((entry_rel, path, st))
            if stat.S_ISDIR(st.st_mode):
                walk(path, entry_rel)

    walk(src, PurePosixPath())
    return out


def pack_native(src: Path, out: Path, *, compresslevel: int = 6) -> str:
    """Pack the folder ``src`` into a reproducible ``.tar.gz`` at ``out``; return its hash.

    Everything that varies between machines or checkouts is normalised: entry
    order (sorted), mtimes (0), owners (0/0, no names), modes (0755 for
    directories and files with any execute bit, 0644 for other files) and the
    gzip header (mtime 0, no file name). Symlinks are kept as links when they
    resolve inside ``src``; one that escapes, and any special file (fifo,
    device, socket), raises PackError. The hash is stable for a given zlib;
    another zlib build may compress differently, which is why the hash of the
    packed file — not of the folder — is what names the image.
    """
    src = Path(src).resolve(strict=True)
    if not src.is_dir():
        raise PackError(f"{src} is not a folder: pack_native packs a folder's contents")
    out = Path(out)
    out_abs = out.parent.resolve() / out.name
    if out_abs == src or src in out_abs.parents:
        raise PackError(f"{out}: the output lies inside the folder being packed ({src})")

    return _pack(src, out, compresslevel)[0]


def pack_tar(src: Path, out: Path) -> tuple[str, int, int]:
    """Pack the folder ``src`` into a reproducible plain tar at ``out`` (a blob: ``gu blob
    push DIR``), normalised as ``pack_native`` does; ``(hash, size, files)``, ``files``
    counting the regular files. The bytes are exactly ``tar_stream``'s."""
    files, chunks = tar_stream(src)
    hasher = Hasher()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                hasher.update(chunk)
                f.write(chunk)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hasher.hash, hasher.size, files


def tar_stream(src: Path, chunk: int = CHUNK_SIZE) -> tuple[int, Iterator[bytes]]:
    """A reproducible plain tar of the folder ``src`` as a stream of chunks (the bytes
    tarfile writes for the same members, in ``pack_native``'s order and normalisation),
    with the number of regular files in it: packed while it is sent, no copy on disk (a
    placement's outputs go to the hub so). PackError for what a tar cannot hold, before
    the first byte."""
    root = Path(src).resolve(strict=True)
    if not root.is_dir():
        raise PackError(f"{root} is not a folder")
    entries = _entries(root)
    for rel, path, st in entries:
        _member(root, rel, path, st)
    files = sum(1 for _, _, st in entries if stat.S_ISREG(st.st_mode))

    def chunks() -> Iterator[bytes]:
        written = 0
        for rel, path, st in entries:
            info = _member(root, rel, path, st)
            if info.type != tarfile.REGTYPE:
                header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
                written += len(header)
                yield header
                continue
            with open(path, "rb") as f:
                info.size = os.fstat(f.fileno()).st_size
                header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
                written += len(header)
                yield header
                left = info.size
                while left > 0:
                    data = f.read(min(chunk, left))
                    if not data:
                        raise PackError(f"{path} shrank while it was packed")
                    left -= len(data)
                    written += len(data)
                    yield data
            pad = -info.size % tarfile.BLOCKSIZE
            if pad:
                written += pad
                yield b"\0" * pad
        end = 2 * tarfile.BLOCKSIZE
        end += -(written + end) % tarfile.RECORDSIZE
        yield b"\0" * end

    return files, chunks()


def _member(root: Path, rel: PurePosixPath, path: Path, st: os.stat_result) -> tarfile.TarInfo:
    """The normalised tar header of one entry (see ``pack_native``); PackError for what an
    image or a blob cannot hold."""
    info = tarfile.TarInfo(str(rel))
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = _check_link(root, path, rel)
        info.mode = 0o777
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    else:
        raise PackError(
            f"{path}: not a regular file, folder or symlink (a fifo, socket or device); "
            "an image can only hold files — remove it from the folder"
        )
    return info


def _pack(
    src: Path, out: Path, compresslevel: int
) -> tuple[str, list[tuple[PurePosixPath, Path, os.stat_result]]]:
    """Write the gzipped tar through a temp file, fsynced; (its hash, the entries packed)."""
    entries = _entries(src)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as raw:
            sink = _HashingWriter(raw)
            with (
                gzip.GzipFile(
                    fileobj=sink,  # write/flush is all gzip needs
                    mode="wb",
                    mtime=0,
                    filename="",
                    compresslevel=compresslevel,
                ) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for rel, path, st in entries:
                    _add(tar, src, rel, path, st)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sink.hasher.hash, entries


def _add(
    tar: tarfile.TarFile, src: Path, rel: PurePosixPath, path: Path, st: os.stat_result
) -> None:
    info = _member(src, rel, path, st)
    if info.type == tarfile.REGTYPE:
        with open(path, "rb") as f:
            # Size from the open file, so a file swapped since the walk is packed whole.
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)
    else:
        tar.addfile(info)
