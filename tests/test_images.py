"""Image hashes, native packing, the hub's image store and the agent's image cache.

Everything here runs on real files in a temp dir: hashes are checked against
hashlib, packs against a second pack, the store and cache against what is
actually on disk afterwards.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import resource
import shutil
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent.images import ImageCache, ImageNotCached, PullPipeline, hash_cached
from controller.images import ImageNotFound, ImageStore, ImageTooLarge
from specs.images import (
    HASH_PREFIX,
    Hasher,
    HashingReader,
    ImageHashMismatch,
    InvalidImageHash,
    PackError,
    hash_bytes,
    hash_file,
    pack_native,
    parse_hash,
)

BAD_HASHES = [
    "sha3-256:../../x",
    "sha3-256:" + "../" * 21 + "x",
    "sha3-256:" + "A" * 64,
    "sha3-256:" + "a" * 63,
    "sha3-256:" + "a" * 65,
    "sha3-256:" + "a" * 64 + "\n",
    "sha256:" + "a" * 64,
    "a" * 64,
    "",
]


def sha3(data: bytes) -> str:
    return HASH_PREFIX + hashlib.sha3_256(data).hexdigest()


def chunks_of(data: bytes, size: int = 100_003) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- hashing


def test_hash_file_equals_hashlib_sha3_of_the_bytes(tmp_path: Path) -> None:
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 17):
        data = os.urandom(size)
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert hash_file(path) == sha3(data)
        assert hash_bytes(data) == sha3(data)


def test_hasher_and_hashing_reader_agree_with_hash_bytes(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    h = Hasher()
    for chunk in chunks_of(data, 7777):
        h.update(memoryview(chunk))
    assert h.hash == sha3(data) and h.size == len(data)
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as f:
        reader = HashingReader(f)
        buf = bytearray(4096)
        assert reader.read(10) == data[:10]
        while reader.readinto(buf):
            pass
    assert reader.hash == sha3(data)


@pytest.mark.parametrize("bad", BAD_HASHES)
def test_malformed_hash_strings_are_refused(bad: str) -> None:
    with pytest.raises(InvalidImageHash):
        parse_hash(bad)


def test_mismatch_error_names_both_hashes() -> None:
    err = ImageHashMismatch(hash_bytes(b"a"), hash_bytes(b"b"), "somewhere")
    assert hash_bytes(b"a") in str(err) and hash_bytes(b"b") in str(err)


# ------------------------------------------------------------ native pack


def make_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "data" / "deep").mkdir(parents=True)
    (root / "bin" / "run").write_text("#!/bin/sh\necho hello\n")
    (root / "bin" / "run").chmod(0o700)
    (root / "data" / "a.txt").write_text("alpha\n")
    (root / "data" / "deep" / "b.bin").write_bytes(os.urandom(5000))
    (root / "data" / "deep" / "b.bin").chmod(0o600)
    (root / "empty").mkdir()
    os.symlink("../a.txt", root / "data" / "deep" / "link")
    return root


def test_pack_native_is_reproducible_across_mtime_changes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    first = pack_native(src, tmp_path / "one.tar.gz")
    for p in src.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    (src / "data" / "a.txt").chmod(0o664)  # group-writable: still a plain file
    second = pack_native(src, tmp_path / "two.tar.gz")
    assert first == second
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    assert first == hash_file(tmp_path / "one.tar.gz")


def test_pack_native_normalises_metadata(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    out = tmp_path / "img.tar.gz"
    pack_native(src, out)
    raw = out.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert not raw[3] & 0x08  # no FNAME in the gzip header
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == sorted(members, key=lambda n: n.split("/"))
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert members["bin"].mode == 0o755
    assert members["bin/run"].mode == 0o755
    assert members["data/a.txt"].mode == 0o644
    assert members["data/deep/b.bin"].mode == 0o644
    assert members["data/deep/link"].issym()
    assert members["data/deep/link"].linkname == "../a.txt"
    assert members["empty"].isdir()


def test_pack_native_different_content_gives_different_hash(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    before = pack_native(src, tmp_path / "a.tar.gz")
    (src / "data" / "a.txt").write_text("beta\n")
    assert pack_native(src, tmp_path / "b.tar.gz") != before


def test_pack_native_mode_change_changes_hash(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    before = pack_native(src, tmp_path / "a.tar.gz")
    (src / "data" / "a.txt").chmod(0o755)
    assert pack_native(src, tmp_path / "b.tar.gz") != before


@pytest.mark.parametrize("target", ["../../outside", "/etc/passwd", "../.."])
def test_pack_native_refuses_a_symlink_that_escapes(tmp_path: Path, target: str) -> None:
    src = make_tree(tmp_path / "src")
    os.symlink(target, src / "data" / "evil")
    out = tmp_path / "img.tar.gz"
    with pytest.raises(PackError, match="outside"):
        pack_native(src, out)
    assert not out.exists()
    assert not list(tmp_path.glob("*.part"))


def test_pack_native_refuses_an_escape_through_a_chain_of_links(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    # data/deep/top points back at the root of the image: fine on its own.
    os.symlink("../..", src / "data" / "deep" / "top")
    pack_native(src, tmp_path / "ok.tar.gz")
    # Read as text, 'data/deep/top/..' is data/deep; followed, it is the root's parent.
    os.symlink("data/deep/top/..", src / "sneaky")
    with pytest.raises(PackError, match="sneaky"):
        pack_native(src, tmp_path / "img.tar.gz")


def test_pack_native_refuses_output_inside_the_folder(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    with pytest.raises(PackError, match="inside"):
        pack_native(src, src / "img.tar.gz")


# ------------------------------------------------------------- hub store


def test_store_put_get_list_delete(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    data = os.urandom(2_500_000)
    info = store.put_stream(chunks_of(data))
    assert info.hash == sha3(data) and info.size == len(data)
    assert store.exists(info.hash)
    assert store.path(info.hash).read_bytes() == data
    assert store.path(info.hash) == tmp_path / "store" / "sha3-256" / parse_hash(info.hash)
    assert [i.hash for i in store.list()] == [info.hash]
    with store.open_range(info.hash, 1000) as f:
        assert f.read() == data[1000:]
    store.delete(info.hash)
    assert not store.exists(info.hash)
    assert store.list() == []
    with pytest.raises(ImageNotFound):
        store.path(info.hash)
    with pytest.raises(ImageNotFound):
        store.delete(info.hash)


def test_store_put_with_expected_hash(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    data = b"x" * 1000
    assert store.put_stream([data], expected=sha3(data)).hash == sha3(data)


def test_store_expected_hash_mismatch_keeps_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(root)
    wrong = sha3(b"something else")
    with pytest.raises(ImageHashMismatch) as err:
        store.put_stream(chunks_of(os.urandom(500_000)), expected=wrong)
    assert wrong in str(err.value)
    assert files_under(root) == []
    assert store.list() == []


def test_store_keeps_nothing_when_the_source_fails(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(root)

    def broken() -> Iterator[bytes]:
        yield b"a" * 1000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put_stream(broken())
    assert files_under(root) == []


def test_store_size_limit(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ImageStore(root, max_image_bytes=1000)
    with pytest.raises(ImageTooLarge):
        store.put_stream(chunks_of(b"y" * 1001, 300))
    assert files_under(root) == []
    assert store.put_stream([b"y" * 1000]).size == 1000


def test_store_concurrent_identical_puts(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    data = os.urandom(3_000_000)
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: store.put_stream(chunks_of(data, 65536)), range(8)))
    assert {i.hash for i in infos} == {sha3(data)}
    assert [i.hash for i in store.list()] == [sha3(data)]
    assert store.path(sha3(data)).read_bytes() == data
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_store_existing_image_is_kept_untouched(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    first = store.put_stream([b"same bytes"])
    inode = store.path(first.hash).stat().st_ino
    store.put_stream([b"same ", b"bytes"])
    assert store.path(first.hash).stat().st_ino == inode


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove-bytes"])
def test_pushing_again_repairs_a_stored_copy_changed_on_disk(tmp_path: Path, damage: str) -> None:
    store = ImageStore(tmp_path / "store")
    data = os.urandom(200_000)
    info = store.put_stream([data])
    stored = store.path(info.hash)
    stored.chmod(0o644)
    if damage == "flip":
        changed = bytearray(data)
        changed[len(data) // 2] ^= 0x01
        stored.write_bytes(bytes(changed))
    elif damage == "truncate":
        stored.write_bytes(data[:1000])
    else:
        stored.write_bytes(b"")
    inode = stored.stat().st_ino
    again = store.put_stream(chunks_of(data, 65536))
    assert again.hash == info.hash and again.size == len(data)
    assert store.path(info.hash).read_bytes() == data
    assert store.path(info.hash).stat().st_ino != inode
    assert (store.path(info.hash).stat().st_mode & 0o777) == 0o444
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_store_put_async(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    data = os.urandom(3_000_000)

    async def body() -> AsyncIterator[bytes]:
        for c in chunks_of(data, 65536):
            yield c

    async def bad_body() -> AsyncIterator[bytes]:
        yield data

    info = asyncio.run(store.put_async(body(), expected=sha3(data)))
    assert info.hash == sha3(data) and store.path(info.hash).read_bytes() == data
    with pytest.raises(ImageHashMismatch):
        asyncio.run(store.put_async(bad_body(), expected=sha3(b"other")))
    assert [i.hash for i in store.list()] == [info.hash]
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", BAD_HASHES)
def test_store_refuses_bad_hash_strings(tmp_path: Path, bad: str) -> None:
    store = ImageStore(tmp_path / "store")
    (tmp_path / "x").write_bytes(b"secret")
    for call in (
        store.path,
        store.exists,
        store.delete,
        store.open_range,
        store.signatures,
        lambda h: store.put_signature(h, b"sig"),
        lambda h: store.put_stream([b"x"], expected=h),
    ):
        with pytest.raises(InvalidImageHash):
            call(bad)
    assert (tmp_path / "x").read_bytes() == b"secret"


def test_store_signatures_are_stored_beside_the_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    info = store.put_stream([b"image"])
    assert store.signatures(info.hash) == []
    store.put_signature(info.hash, b"sig-one")
    store.put_signature(info.hash, b"sig-two")
    store.put_signature(info.hash, b"sig-one")  # idempotent
    assert sorted(store.signatures(info.hash)) == [b"sig-one", b"sig-two"]
    sig_file = (
        tmp_path
        / "store"
        / "sig"
        / parse_hash(info.hash)
        / (parse_hash(hash_bytes(b"sig-one")) + ".sig")
    )
    assert sig_file.read_bytes() == b"sig-one"
    store.delete(info.hash)
    assert store.signatures(info.hash) == []
    with pytest.raises(ImageNotFound):
        store.put_signature(info.hash, b"sig-one")


# ------------------------------------------------------------ agent cache


class Fetcher:
    """A fetch callable over a dict of images that counts its calls."""

    def __init__(self, images: dict[str, bytes], delay: float = 0.0) -> None:
        self.images = images
        self.delay = delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, hash: str) -> Iterator[bytes]:
        with self._lock:
            self.calls.append(hash)
        data = self.images[hash]
        for c in chunks_of(data, 50_000):
            if self.delay:
                time.sleep(self.delay)
            yield c


def image(size: int, seed: int) -> tuple[str, bytes]:
    data = bytes([seed % 256]) * size
    return sha3(data), data


def test_cache_ensure_pulls_from_a_generator_then_hits(tmp_path: Path) -> None:
    h, data = image(300_000, 1)
    fetch = Fetcher({h: data})
    cache = ImageCache(tmp_path / "cache")
    path = cache.ensure(h, fetch)
    assert path == tmp_path / "cache" / parse_hash(h)
    assert path.read_bytes() == data
    assert cache.ensure(h, fetch) == path
    assert fetch.calls == [h]
    assert h in cache and cache.total_bytes == len(data)


def test_cache_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    h, _ = image(1000, 1)
    root = tmp_path / "cache"
    cache = ImageCache(root)
    with pytest.raises(ImageHashMismatch) as err:
        cache.ensure(h, lambda _: iter([b"not the image"]))
    assert h in str(err.value)
    assert not (root / parse_hash(h)).exists()
    assert list((root / "tmp").iterdir()) == []
    assert h not in cache


def test_cache_fetch_failure_leaves_no_file(tmp_path: Path) -> None:
    h, _ = image(1000, 1)
    root = tmp_path / "cache"
    cache = ImageCache(root)

    def broken(_: str) -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionError("hub went away")

    with pytest.raises(ConnectionError):
        cache.ensure(h, broken)
    assert [p.name for p in root.iterdir() if p.is_file()] == ["index.json"]
    assert list((root / "tmp").iterdir()) == []


def test_cache_ensure_from_a_source_that_reuses_its_buffer(tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    h = sha3(data)
    (tmp_path / "src").write_bytes(data)

    def fetch(_: str) -> Iterator[bytearray]:
        buf = bytearray(70_000)
        with open(tmp_path / "src", "rb") as f:
            while n := f.readinto(buf):
                yield buf if n == len(buf) else buf[:n]

    path = ImageCache(tmp_path / "cache").ensure(h, fetch)
    assert path.read_bytes() == data


def test_cache_write_error_raises_and_leaves_no_file(tmp_path: Path) -> None:
    h, data = image(2_000_000, 4)
    root = tmp_path / "cache"
    cache = ImageCache(root)
    # A file size limit makes the kernel refuse the write (EFBIG), as a full disk would.
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
    try:
        closed = []

        def fetch(_: str) -> Iterator[bytes]:
            try:
                yield from chunks_of(data, 50_000)
            finally:
                closed.append(True)  # the source (an HTTP response) is released

        with pytest.raises(OSError) as err:
            cache.ensure(h, fetch)
        assert err.value.errno == errno.EFBIG
        assert closed == [True]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert h not in cache
    assert not (root / parse_hash(h)).exists()
    assert list((root / "tmp").iterdir()) == []
    assert cache.ensure(h, Fetcher({h: data})).read_bytes() == data


MiB = 1 << 20
EDGE_SIZES = [0, 1, 4095, 4096, 4097, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 9 * MiB + 123]


def cache_roots(tmp_path: Path) -> list[tuple[str, Path]]:
    """A cache on the test's disk (O_DIRECT) and, where there is one, on tmpfs (buffered)."""
    roots = [("disk", tmp_path / "disk-cache")]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        roots.append(("tmpfs", Path(tempfile.mkdtemp(dir=shm, prefix="gu-test-"))))
    return roots


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_cache_pulls_and_verifies_exact_bytes_at_every_block_edge(
    tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    h = sha3(data)
    for where, root in cache_roots(tmp_path):
        try:
            cache = ImageCache(root / "c")
            path = cache.ensure(h, lambda _h: chunks_of(data, 70_001))
            assert path.stat().st_size == size, where
            assert path.read_bytes() == data, where
            assert cache.verify(h) == path, where
            assert (path.stat().st_mode & 0o777) == 0o444
        finally:
            shutil.rmtree(root, ignore_errors=True)


def pipe_through(path: Path, data: bytes) -> PullPipeline:
    """Pull ``data`` into ``path`` through the pipeline, in 1 MiB chunks; checks the hash."""
    pipeline = PullPipeline(path)
    for chunk in chunks_of(data, 1 << 20):
        pipeline.feed(chunk)
    assert pipeline.close().hash == sha3(data)
    return pipeline


def test_the_cache_writes_with_o_direct(tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 7)
    writer = pipe_through(tmp_path / "f", data)
    assert writer.direct is True
    assert (tmp_path / "f").read_bytes() == data
    assert hash_cached(tmp_path / "f") == (sha3(data), len(data))


def test_a_file_system_without_o_direct_gets_buffered_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every file system here takes O_DIRECT (tmpfs too, since Linux 6.6), so
    # the refusal at open (EINVAL, as older tmpfs and some FUSE mounts answer)
    # is injected.
    real = os.open

    def open_(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", open_)
    data = os.urandom(5 * MiB + 7)
    writer = pipe_through(tmp_path / "f", data)
    assert writer.direct is False
    assert (tmp_path / "f").read_bytes() == data
    assert hash_cached(tmp_path / "f") == (sha3(data), len(data))
    cache = ImageCache(tmp_path / "cache")
    path = cache.ensure(sha3(data), lambda _h: chunks_of(data, 70_001))
    assert cache.verify(sha3(data)) == path and path.read_bytes() == data


def test_a_direct_write_refused_midway_finishes_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file system that takes O_DIRECT at open but refuses the I/O cannot be
    # made here; the refusal (EINVAL from the second block write) is injected.
    data = os.urandom(9 * MiB + 5)
    real = os.pwrite
    calls = []

    def pwrite(fd: int, buf: Any, offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        calls.append(direct)
        if direct and len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buf, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    writer = PullPipeline(tmp_path / "f")
    for chunk in chunks_of(data, 1 << 20):
        writer.feed(chunk)
    assert writer.close().hash == sha3(data)
    assert writer.direct is False
    assert calls[:2] == [True, True] and not any(calls[2:])
    assert (tmp_path / "f").read_bytes() == data


def test_cache_verify_detects_a_flipped_byte_and_removes_the_file(tmp_path: Path) -> None:
    h, data = image(200_000, 7)
    cache = ImageCache(tmp_path / "cache")
    path = cache.ensure(h, Fetcher({h: data}))
    assert cache.verify(h) == path
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(12345)
        f.write(bytes([data[12345] ^ 0x01]))
    with pytest.raises(ImageHashMismatch):
        cache.verify(h)
    assert not path.exists()
    assert h not in cache
    with pytest.raises(ImageNotCached):
        cache.verify(h)


def test_cache_ensure_refetches_a_file_of_the_wrong_size(tmp_path: Path) -> None:
    h, data = image(10_000, 3)
    fetch = Fetcher({h: data})
    cache = ImageCache(tmp_path / "cache")
    path = cache.ensure(h, fetch)
    path.chmod(0o644)
    with open(path, "ab") as f:
        f.write(b"junk")
    assert cache.ensure(h, fetch).read_bytes() == data
    assert fetch.calls == [h, h]


def test_cache_evicts_least_recently_used_first(tmp_path: Path) -> None:
    imgs = dict(image(1000, i) for i in range(4))
    a, b, c, d = imgs
    fetch = Fetcher(imgs)
    cache = ImageCache(tmp_path / "cache", max_bytes=3000)
    cache.ensure(a, fetch)
    cache.ensure(b, fetch)
    cache.ensure(c, fetch)
    cache.ensure(a, fetch)  # a is now more recent than b and c
    cache.ensure(d, fetch)
    assert [i.hash for i in cache.list()] == [c, a, d]
    assert b not in cache and not (tmp_path / "cache" / parse_hash(b)).exists()
    cache.verify(c)  # verify counts as use too
    cache.ensure(b, fetch)
    assert [i.hash for i in cache.list()] == [d, c, b]


def test_cache_lru_order_survives_a_restart(tmp_path: Path) -> None:
    imgs = dict(image(1000, i) for i in range(3))
    a, b, c = imgs
    fetch = Fetcher(imgs)
    cache = ImageCache(tmp_path / "cache", max_bytes=3000)
    for h in (a, b, c, a):
        cache.ensure(h, fetch)
    reopened = ImageCache(tmp_path / "cache", max_bytes=3000)
    assert [i.hash for i in reopened.list()] == [b, c, a]
    d, data = image(1000, 9)
    reopened.ensure(d, lambda _: iter([data]))
    assert [i.hash for i in reopened.list()] == [c, a, d]


def test_cache_never_evicts_pinned_images(tmp_path: Path) -> None:
    imgs = dict(image(1000, i) for i in range(3))
    a, b, c = imgs
    fetch = Fetcher(imgs)
    cache = ImageCache(tmp_path / "cache", max_bytes=1000)
    cache.pin(a)
    cache.ensure(a, fetch)
    cache.ensure(b, fetch)  # over budget, but a is pinned and b just arrived
    assert a in cache and b in cache
    with cache.use(c, fetch) as path:
        assert path.read_bytes() == imgs[c]
        assert a in cache and c in cache and b not in cache
    # Unpinning c lets the cache fall back within budget; a is still pinned.
    assert [i.hash for i in cache.list()] == [a]
    cache.unpin(a)  # within budget again: nothing to evict
    assert [i.hash for i in cache.list()] == [a]
    with pytest.raises(ValueError):
        cache.unpin(a)


def test_two_threads_ensuring_the_same_hash_fetch_once(tmp_path: Path) -> None:
    h, data = image(500_000, 5)
    fetch = Fetcher({h: data}, delay=0.005)
    cache = ImageCache(tmp_path / "cache")
    barrier = threading.Barrier(2)

    def go() -> Path:
        barrier.wait()
        return cache.ensure(h, fetch)

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: go(), range(2)))
    assert paths[0] == paths[1]
    assert fetch.calls == [h]
    assert paths[0].read_bytes() == data


def test_cache_refuses_bad_hash_strings(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    for bad in BAD_HASHES:
        with pytest.raises(InvalidImageHash):
            cache.ensure(bad, lambda _: iter([b"x"]))
        with pytest.raises(InvalidImageHash):
            cache.verify(bad)
        assert bad not in cache


def test_cache_cleans_leftover_temp_files_on_start(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "dead.part").write_bytes(b"half a download")
    ImageCache(root)
    assert list((root / "tmp").iterdir()) == []


def test_pull_from_store_to_cache_end_to_end(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    h = pack_native(src, tmp_path / "img.tar.gz")
    store = ImageStore(tmp_path / "hub")
    with open(tmp_path / "img.tar.gz", "rb") as f:
        store.put_stream(iter(lambda: f.read(65536), b""), expected=h)

    def fetch(hash: str) -> Iterator[bytes]:
        with store.open_range(hash) as f:
            yield from iter(lambda: f.read(65536), b"")

    cache = ImageCache(tmp_path / "agent")
    with cache.use(h, fetch, verify=True) as path:
        assert hash_file(path) == h


def test_a_reader_store_learns_of_the_writer_s_changes_and_removes_none_of_its_temps(
    tmp_path: Path,
) -> None:
    """The hub's engine process reads the image directory the API's process writes
    (``ImageStore(reader=True)``): what it keeps of an image's facts must go when the
    writer stores or deletes anything, and it must leave the writer's uploads alone."""
    from controller.admission import ImageFactsCache

    writer = ImageStore(tmp_path / "store")
    upload = tmp_path / "store" / "tmp" / "upload-in-progress"
    upload.write_bytes(b"half an image")
    reader = ImageStore(tmp_path / "store", reader=True)
    assert upload.exists()  # (a writer starting would have removed it)
    facts = ImageFactsCache(reader)
    missing = hash_bytes(b"image")
    assert facts(missing).size is None
    info = writer.put_stream([b"image"])
    assert info.hash == missing
    assert facts(info.hash).size == len(b"image")  # not the kept "unknown"
    assert facts(info.hash).signatures == []
    writer.put_signature(info.hash, b"not json")  # (unparsable: counted as none)
    before = reader.current_generation()
    writer.delete(info.hash)
    assert reader.current_generation() != before
    assert facts(info.hash).size is None
