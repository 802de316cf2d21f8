"""The agent's image cache: images pulled from the hub, kept by hash, verified on read.

Layout under ``root``::

    <hex>        an image whose bytes hashed to sha3-256:<hex> when they arrived
    index.json   size and last use of every cached image (the LRU order)
    tmp/         downloads in flight

The flow of a workload start:

1. ``ensure(hash, fetch)`` returns the cached file, or pulls it: ``fetch(hash)``
   yields chunks (the hub's ``GET /v1/images/{hash}``), which are hashed while
   written to ``tmp/`` (receive, hash and write overlap on three threads, and
   the write bypasses the page cache where it can: see ``PullPipeline``),
   fsynced, compared and only then renamed to ``<hex>``.
   A mismatch deletes the temp file and raises ``ImageHashMismatch``: bytes
   that do not match never sit under a final name. Two threads ensuring the
   same hash download it once (a per-hash lock); the second finds it cached.
2. ``verify(hash)`` re-hashes the cached file right before its bytes run, so a
   file changed on disk since the pull (bit rot, a stray process) is caught;
   on a mismatch the file is removed and ``ImageHashMismatch`` raised. The
   cheap check on the ensure path only compares sizes.
3. While a workload uses an image it is pinned (``pin``/``unpin`` or the
   ``use`` context manager, which pins *before* ensuring so no eviction can
   slip in between), and pinned images are never evicted.

Eviction is least-recently-used by our own record of last use, not the file
atime: atime is off (``noatime``) or lazy (``relatime``) on most mounts. After
every pull and every unpin the oldest unpinned images are removed until the
total is within ``max_bytes``; an image being pulled or verified right now
counts as in use. If pinned images alone exceed the budget the cache stays over
it (and says so in the log) rather than pulling the floor from under a workload.

One agent process owns a cache root. The index is rewritten atomically but not
fsynced: losing last-use times in a crash only blurs the LRU order, and the
index is reconciled with the files on every start.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from agent.images.pull import PullPipeline, hash_cached
from specs.fileio import fsync_dir
from specs.images import (
    HASH_PREFIX,
    BytesLike,
    ImageHashMismatch,
    parse_hash,
)

log = logging.getLogger("gu.agent.images")

GiB: Final = 1 << 30
_INDEX_VERSION: Final = 1

Fetch = Callable[[str], Iterable[BytesLike]]
"""Yields the bytes of an image, given its hash (e.g. an httpx streaming response)."""


class ImageNotCached(LookupError):
    """The image is not in the agent's cache (``ensure`` it first)."""

    def __init__(self, hash: str) -> None:
        self.hash = hash
        super().__init__(f"image {hash} is not in the agent's image cache; ensure() it first")


@dataclass(frozen=True)
class CachedImage:
    """One cached image as the cache sees it."""

    hash: str
    size: int
    last_used: datetime
    pins: int


@dataclass
class _Entry:
    size: int
    last_used_ns: int


class _KeyLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: str, *, blocking: bool = True) -> Iterator[bool]:
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        acquired = lock.acquire(blocking)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]


class ImageCache:
    """The agent's LRU cache of images under ``root``, at most ``max_bytes`` unpinned."""

    def __init__(self, root: Path, max_bytes: int = 10 * GiB) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be ≥ 0, not {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._tmp = self.root / "tmp"
        self._index_path = self.root / "index.json"
        self._lock = threading.Lock()  # guards _entries, _pins, _last_tick and index.json
        self._keys = _KeyLocks()  # one per hash: a pull, verify or eviction of that image
        self._entries: dict[str, _Entry] = {}
        self._pins: dict[str, int] = {}
        self._last_tick = 0
        # Whatever is in tmp/ is a download that died with the previous process.
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------ public

    def ensure(self, hash: str, fetch: Fetch) -> Path:
        """Return the path of cached image ``hash``, pulling it with ``fetch`` if needed.

        The cached file counts as present when its size matches the size
        recorded when it was pulled; call ``verify`` before running it to
        re-check its bytes. A pulled image whose bytes do not hash to ``hash``
        raises ImageHashMismatch and leaves nothing behind.
        """
        hex_part = parse_hash(hash)
        with self._keys.hold(hex_part):
            path = self._hit(hex_part)
            if path is not None:
                log.debug("event=image_cache_hit hash=%s", hash)
                return path
            path = self._pull(hash, hex_part, fetch)
            # Still holding this hash's lock, so the eviction cannot take the
            # image just pulled even when it alone is over budget.
            self._evict()
        return path

    def verify(self, hash: str) -> Path:
        """Re-hash the cached file of ``hash`` now; return its path if the bytes match.

        On a mismatch the file is removed from the cache and ImageHashMismatch
        raised; ImageNotCached when it is not cached at all. Note the usual
        check-then-use caveat: run the returned path promptly, while pinned.
        """
        hex_part = parse_hash(hash)
        with self._keys.hold(hex_part):
            path = self.root / hex_part
            with self._lock:
                if hex_part not in self._entries:
                    raise ImageNotCached(hash)
            started = time.perf_counter()
            try:
                actual, size = hash_cached(path)
            except FileNotFoundError:
                self._forget(hex_part)
                raise ImageNotCached(hash) from None
            seconds = time.perf_counter() - started
            if actual != hash:
                log.error(
                    "event=image_corrupt hash=%s actual=%s size=%d path=%s action=removed",
                    hash,
                    actual,
                    size,
                    path,
                )
                self._remove_file(path)
                self._forget(hex_part)
                raise ImageHashMismatch(hash, actual, f"agent cache {path}")
            self._touch(hex_part)
            log.info(
                "event=image_verified hash=%s size=%d seconds=%.3f mbps=%.1f",
                hash,
                size,
                seconds,
                size / 1e6 / max(seconds, 1e-9),
            )
            return path

    def pin(self, hash: str) -> None:
        """Mark ``hash`` in use: never evicted until unpinned as often as pinned.

        An image may be pinned before it is cached, which reserves it against
        eviction the moment it arrives.
        """
        hex_part = parse_hash(hash)
        with self._lock:
            self._pins[hex_part] = self._pins.get(hex_part, 0) + 1

    def unpin(self, hash: str) -> None:
        """Undo one ``pin``; when the last pin goes, evict if the cache is over budget."""
        hex_part = parse_hash(hash)
        with self._lock:
            count = self._pins.get(hex_part, 0)
            if count == 0:
                raise ValueError(f"image {hash} is not pinned")
            if count == 1:
                del self._pins[hex_part]
            else:
                self._pins[hex_part] = count - 1
        self._evict()

    @contextlib.contextmanager
    def use(self, hash: str, fetch: Fetch | None = None, *, verify: bool = False) -> Iterator[Path]:
        """Pin ``hash`` for the ``with`` block and yield its path.

        With ``fetch`` the image is ensured (pulled if missing), without it it
        must be cached already (ImageNotCached otherwise). ``verify=True``
        re-hashes it before yielding. The pin is taken first, so the image
        cannot be evicted between arriving and being used.
        """
        self.pin(hash)
        try:
            path = self.ensure(hash, fetch) if fetch is not None else self.path(hash)
            if verify:
                path = self.verify(hash)
            yield path
        finally:
            self.unpin(hash)

    def path(self, hash: str) -> Path:
        """The cached file of ``hash`` (no pull, no verify); ImageNotCached if absent."""
        hex_part = parse_hash(hash)
        with self._lock:
            if hex_part not in self._entries:
                raise ImageNotCached(hash)
        return self.root / hex_part

    def __contains__(self, hash: object) -> bool:
        if not isinstance(hash, str):
            return False
        try:
            hex_part = parse_hash(hash)
        except ValueError:
            return False
        with self._lock:
            return hex_part in self._entries

    def remove(self, hash: str) -> None:
        """Drop ``hash`` from the cache now, pinned or not (ImageNotCached if absent)."""
        hex_part = parse_hash(hash)
        with self._keys.hold(hex_part):
            with self._lock:
                if hex_part not in self._entries:
                    raise ImageNotCached(hash)
            self._remove_file(self.root / hex_part)
            self._forget(hex_part)
        log.info("event=image_removed hash=%s", hash)

    def list(self) -> builtins.list[CachedImage]:
        """Every cached image, least recently used first."""
        with self._lock:
            items = sorted(self._entries.items(), key=lambda kv: kv[1].last_used_ns)
            return [
                CachedImage(
                    hash=HASH_PREFIX + hex_part,
                    size=e.size,
                    last_used=datetime.fromtimestamp(e.last_used_ns / 1e9, UTC),
                    pins=self._pins.get(hex_part, 0),
                )
                for hex_part, e in items
            ]

    @property
    def total_bytes(self) -> int:
        """Bytes held by cached images (pinned or not)."""
        with self._lock:
            return sum(e.size for e in self._entries.values())

    # ------------------------------------------------------------- pulls

    def _hit(self, hex_part: str) -> Path | None:
        """The cached path if the entry exists and its file has the recorded size."""
        path = self.root / hex_part
        with self._lock:
            entry = self._entries.get(hex_part)
        if entry is None:
            return None
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size != entry.size:
            log.warning(
                "event=image_cache_damaged hash=%s%s recorded_size=%d size=%d action=refetch",
                HASH_PREFIX,
                hex_part,
                entry.size,
                size,
            )
            self._remove_file(path)
            self._forget(hex_part)
            return None
        self._touch(hex_part)
        return path

    def _pull(self, hash: str, hex_part: str, fetch: Fetch) -> Path:
        tmp = self._tmp / f"{hex_part}.{uuid.uuid4().hex}.part"
        final = self.root / hex_part
        started = time.perf_counter()
        log.info("event=image_pull_started hash=%s", hash)
        pipeline = PullPipeline(tmp)
        chunks = iter(fetch(hash))
        try:
            for chunk in chunks:
                pipeline.feed(chunk)
            hasher = pipeline.close()
            actual = hasher.hash
            if actual != hash:
                log.error(
                    "event=image_pull_rejected hash=%s actual=%s size=%d reason=hash_mismatch",
                    hash,
                    actual,
                    hasher.size,
                )
                raise ImageHashMismatch(hash, actual, "download into the agent cache")
            os.replace(tmp, final)
        except BaseException:
            pipeline.abort()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            # A generator over an HTTP response releases its connection when closed,
            # not whenever the garbage collector gets to it.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        fsync_dir(self.root)
        with self._lock:
            self._entries[hex_part] = _Entry(hasher.size, self._tick())
            self._save()
        seconds = time.perf_counter() - started
        log.info(
            "event=image_pulled hash=%s size=%d seconds=%.3f mbps=%.1f",
            hash,
            hasher.size,
            seconds,
            hasher.size / 1e6 / max(seconds, 1e-9),
        )
        return final

    # ---------------------------------------------------------- eviction

    def _evict(self) -> builtins.list[str]:
        """Remove least-recently-used unpinned images until the total fits ``max_bytes``."""
        evicted: builtins.list[str] = []
        with self._lock:
            total = sum(e.size for e in self._entries.values())
            if total <= self.max_bytes:
                return evicted
            by_age = sorted(self._entries.items(), key=lambda kv: kv[1].last_used_ns)
            for hex_part, entry in by_age:
                if total <= self.max_bytes:
                    break
                if self._pins.get(hex_part):
                    continue
                # Non-blocking: an image being pulled or verified is in use, and
                # waiting here (holding _lock) could deadlock with that thread.
                with self._keys.hold(hex_part, blocking=False) as free:
                    if not free:
                        continue
                    self._remove_file(self.root / hex_part)
                    del self._entries[hex_part]
                total -= entry.size
                evicted.append(HASH_PREFIX + hex_part)
                log.info(
                    "event=image_evicted hash=%s%s size=%d",
                    HASH_PREFIX,
                    hex_part,
                    entry.size,
                )
            if evicted:
                self._save()
            if total > self.max_bytes:
                log.warning(
                    "event=image_cache_over_budget total=%d max=%d reason=in_use",
                    total,
                    self.max_bytes,
                )
        return evicted

    # ------------------------------------------------------------- index

    def _tick(self) -> int:
        """A strictly increasing last-use stamp (wall-clock ns), so LRU order never ties."""
        self._last_tick = max(time.time_ns(), self._last_tick + 1)
        return self._last_tick

    def _touch(self, hex_part: str) -> None:
        with self._lock:
            entry = self._entries.get(hex_part)
            if entry is not None:
                entry.last_used_ns = self._tick()
                self._save()

    def _forget(self, hex_part: str) -> None:
        with self._lock:
            if self._entries.pop(hex_part, None) is not None:
                self._save()

    def _remove_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _save(self) -> None:
        """Rewrite index.json atomically (caller holds _lock)."""
        data = {
            "version": _INDEX_VERSION,
            "images": {
                h: {"size": e.size, "lastUsedNs": e.last_used_ns} for h, e in self._entries.items()
            },
        }
        tmp = self._index_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self._index_path)

    def _load(self) -> None:
        """Read index.json and reconcile it with the files actually in ``root``."""
        recorded: dict[str, _Entry] = {}
        try:
            data = json.loads(self._index_path.read_text())
            if data.get("version") == _INDEX_VERSION:
                for h, e in data["images"].items():
                    recorded[h] = _Entry(int(e["size"]), int(e["lastUsedNs"]))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("event=image_index_unreadable path=%s error=%r", self._index_path, exc)
        with os.scandir(self.root) as it:
            for entry in it:
                if not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    parse_hash(HASH_PREFIX + entry.name)
                except ValueError:
                    continue
                st = entry.stat(follow_symlinks=False)
                known = recorded.get(entry.name)
                if known is None:
                    # Renamed in just before a crash lost the index write: the bytes
                    # were verified before the rename, so keep them.
                    known = _Entry(st.st_size, st.st_mtime_ns)
                elif known.size != st.st_size:
                    log.warning(
                        "event=image_cache_damaged hash=%s%s recorded_size=%d size=%d "
                        "action=removed",
                        HASH_PREFIX,
                        entry.name,
                        known.size,
                        st.st_size,
                    )
                    os.unlink(entry.path)
                    continue
                self._entries[entry.name] = known
                self._last_tick = max(self._last_tick, known.last_used_ns)
        with self._lock:
            self._save()
        log.info(
            "event=image_cache_opened root=%s images=%d bytes=%d max_bytes=%d",
            self.root,
            len(self._entries),
            sum(e.size for e in self._entries.values()),
            self.max_bytes,
        )
