"""Benchmark: how close image hashing, pulling and verifying come to raw hashlib speed.

Run: ``.venv/bin/python tests/bench/bench_image_verify.py [--size-mib 512] [--runs 5]``

It writes a file of random bytes to a temp dir, then measures in one run:

- ``hashlib_baseline``: a plain ``f.read(1 MiB)`` / ``sha3_256.update`` loop, the
  speed limit every other figure is compared with (``ratio_to_hashlib``);
- ``hash_file``: ``specs.images.hash_file``;
- ``cache_ensure``: ``ImageCache.ensure`` into an empty cache from a chunk
  generator reading the file (receive → hash → O_DIRECT write + fsync, in
  three overlapping stages: a pull minus the network);
- ``cache_verify``: ``ImageCache.verify`` of the cached file (the check right
  before a workload starts; it reads the disk with O_DIRECT, as the file was
  written without the page cache).

The pull through the hub's HTTP API is measured by ``bench_security.py``
(``image_pull_verify``).

Each figure is the median of ``--runs`` runs, in MB/s (10**6 bytes per
second), printed as one JSON line. The source file is in the page cache, so
the baseline measures hashing, not the disk; ``cache_ensure`` writes the image
to the disk and ``cache_verify`` reads it back from there, as a real pull and
check do. Everything is removed afterwards.

Reading ``cache_ensure``: receiving, hashing and writing overlap, so a pull
costs about the slowest stage, the hash. The writes bypass the page cache:
where fresh page-cache pages are expensive (a VM whose guest memory is handed
back to the host between runs) buffered writes cost more than the hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.images import ImageCache
from specs.images import hash_file

MiB = 1 << 20


def make_file(directory: Path, size_mib: int) -> Path:
    """A file of ``size_mib`` MiB of random bytes (random, so no layer can shortcut it)."""
    path = directory / "image.bin"
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    return path


def read_chunks(path: Path, chunk: int) -> Iterator[bytes]:
    """The file as a stream of ``chunk``-byte pieces, like an HTTP response body."""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ------------------------------------------------------------- the figures


def bench_hashlib_baseline(path: Path) -> float:
    """Seconds for the plain hashlib loop over the file."""

    def run() -> str:
        h = hashlib.sha3_256()
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                h.update(chunk)
        return h.hexdigest()

    return timed(run)


def bench_hash_file(path: Path) -> float:
    """Seconds for ``specs.images.hash_file``."""
    return timed(lambda: hash_file(path))


def bench_cache_ensure(path: Path, expected: str, workdir: Path, chunk: int) -> float:
    """Seconds for ``ImageCache.ensure`` into an empty cache (the cache is removed after)."""
    root = workdir / "cache-ensure"
    cache = ImageCache(root, max_bytes=1 << 62)
    try:
        return timed(lambda: cache.ensure(expected, lambda _h: read_chunks(path, chunk)))
    finally:
        shutil.rmtree(root)


def bench_cache_verify(cache: ImageCache, expected: str) -> float:
    """Seconds for ``ImageCache.verify`` of an image already cached."""
    return timed(lambda: cache.verify(expected))


# ------------------------------------------------------------------ report


def emit(figure: str, size: int, seconds: list[float], baseline: float | None) -> float:
    mbps = size / 1e6 / statistics.median(seconds)
    line = {
        "bench": "image_verify",
        "figure": figure,
        "value": round(mbps, 1),
        "unit": "MB/s",
        "ratio_to_hashlib": round(mbps / baseline, 3) if baseline else 1.0,
        "runs": [round(size / 1e6 / s, 1) for s in seconds],
    }
    print(json.dumps(line), flush=True)
    return mbps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="image size (default 512)")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median kept)")
    parser.add_argument(
        "--chunk-kib", type=int, default=1024, help="chunk size the fetch yields (default 1024)"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gu-bench-images-"))
    try:
        path = make_file(workdir, args.size_mib)
        size = path.stat().st_size
        expected = hash_file(path)  # also warms the page cache for every figure

        cache = ImageCache(workdir / "cache-verify", max_bytes=1 << 62)
        cache.ensure(expected, lambda _h: read_chunks(path, MiB))
        # Interleaved rounds, so that noise from other processes falls on every
        # figure alike and the ratios stay meaningful.
        times: dict[str, list[float]] = {
            "hashlib_baseline": [],
            "hash_file": [],
            "cache_ensure": [],
            "cache_verify": [],
        }
        for _ in range(args.runs):
            times["hashlib_baseline"].append(bench_hashlib_baseline(path))
            times["hash_file"].append(bench_hash_file(path))
            times["cache_ensure"].append(
                bench_cache_ensure(path, expected, workdir, args.chunk_kib * 1024)
            )
            times["cache_verify"].append(bench_cache_verify(cache, expected))
        baseline = emit("hashlib_baseline", size, times.pop("hashlib_baseline"), None)
        for figure, seconds in times.items():
            emit(figure, size, seconds, baseline)

    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
