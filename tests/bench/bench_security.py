"""Benchmark: what authentication and verified image pulls cost, next to their raw primitives.

Run: ``.venv/bin/python tests/bench/bench_security.py [--size-mib 512] [--runs 3]
[--seconds 3]``. Prints one JSON line per figure
(``{"bench": "security", "figure", "value", "unit", ...}``):

- ``verify_token``: tokens checked per second by ``Authenticator.verify_token``
  in this process, and ``hmac_baseline``: plain ``hmac.new(key, same bytes,
  sha256).digest()`` in the same run; ``ratio_to_hmac`` is what the rest of a
  check (split, base64, constant-time compare, JSON, expiry) costs on top;
- ``login``: log-ins per second through the real hub API (challenge + signed
  token request), one client in a loop, and ``login_4_threads`` with four;
- ``image_push``: a ``--size-mib`` file of random bytes streamed to
  ``POST /v1/images`` as the admin (hashed and fsynced by the hub);
- ``image_pull_verify``: ``agent.images.ImageCache.ensure`` fed by an httpx
  streaming ``GET /v1/images/{hash}`` (admin token) over loopback: hash while
  writing, fsync, compare, rename — and ``sha3_baseline``: ``hashlib.sha3_256``
  over the same bytes read from disk in the same run; ``ratio_to_sha3`` is the
  share of raw hashing speed a verified pull keeps.

Throughput figures are the median of ``--runs`` (MB/s = 10**6 bytes per second);
rates are counted over ``--seconds`` each. The hub runs on 127.0.0.1 from a temp
dir; the hub, the temp files and the caches are removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.hubsession import tune_http_reads  # noqa: E402
from agent.images import ImageCache  # noqa: E402
from controller.auth import Authenticator, Principal  # noqa: E402
from controller.client import Client  # noqa: E402
from specs.identity import generate_key  # noqa: E402
from tests.conftest import HubProcess, make_hub  # noqa: E402

MiB = 1 << 20


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "security", "figure": figure, "value": round(value, 1), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second, counted over about ``seconds`` (batches of 1,000 calls)."""
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(1000):
            fn()
        calls += 1000
    return calls / elapsed


# ------------------------------------------------------------- (a) tokens


def bench_tokens(seconds: float) -> None:
    auth = Authenticator(generate_key(), lambda _key, _purpose: None, token_ttl=3600)
    token = auth.make_token(Principal("app", "bench", "ed25519:" + "A" * 43 + "="), 3600)
    signed = token.rsplit(".", 1)[0].encode()  # the bytes the MAC covers: "gu1.<payload>"
    key = auth._mac_key  # the same key the check uses, so the baseline does the same HMAC
    assert auth.verify_token(token).name == "bench"
    baseline = rate(lambda: hmac.new(key, signed, hashlib.sha256).digest(), seconds)
    verify = rate(lambda: auth.verify_token(token), seconds)
    emit("hmac_baseline", baseline, "checks/s", bytes=len(signed))
    emit("verify_token", verify, "tokens/s", ratio_to_hmac=round(verify / baseline, 3))


# ------------------------------------------------------------- (b) log-ins


def bench_logins(hub: HubProcess, seconds: float) -> None:
    key = hub.client().key

    def logins_per_second(threads: int) -> float:
        counts = [0] * threads
        deadline = time.perf_counter() + seconds

        def loop(i: int) -> None:
            with Client(hub.url, key) as client:
                while time.perf_counter() < deadline:
                    client.login()
                    counts[i] += 1

        started = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=seconds + 30)
        return sum(counts) / (time.perf_counter() - started)

    logins_per_second(1)  # warm-up: connections, imports, first nonces
    one = logins_per_second(1)
    emit("login", one, "log-ins/s", ms_per_login=round(1000 / one, 2))
    emit("login_4_threads", logins_per_second(4), "log-ins/s")


# -------------------------------------------------------- (c) image pulls


def make_file(path: Path, size_mib: int) -> None:
    """``size_mib`` MiB of random bytes (random, so no layer can shortcut them)."""
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            yield chunk


def sha3_of_file(path: Path) -> str:
    h = hashlib.sha3_256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha3-256:" + h.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_images(hub: HubProcess, workdir: Path, size_mib: int, runs: int) -> None:
    path = workdir / "image.bin"
    make_file(path, size_mib)
    size = path.stat().st_size
    expected = sha3_of_file(path)  # also brings the file into the page cache
    admin = hub.client()
    headers = {"Authorization": f"Bearer {admin.token()}"}

    tune_http_reads()  # as the agent's HubSession does
    with httpx.Client(base_url=hub.url, headers=headers, timeout=600) as http:
        push_s = timed(
            lambda: http.post(
                "/v1/images", params={"expected": expected}, content=read_chunks(path)
            ).raise_for_status()
        )
        emit("image_push", size / 1e6 / push_s, "MB/s", size_mib=size_mib)

        def fetch(h: str) -> Iterator[bytes]:
            with http.stream("GET", f"/v1/images/{h}") as resp:
                resp.raise_for_status()
                yield from resp.iter_bytes()  # as received, like the agent

        def pull_into_empty_cache(root: Path) -> float:
            cache = ImageCache(root, max_bytes=1 << 62)
            try:
                return timed(lambda: cache.ensure(expected, fetch))
            finally:
                shutil.rmtree(root)

        pulls, hashes = [], []
        for i in range(runs):  # interleaved, so noise falls on both figures alike
            hashes.append(timed(lambda: sha3_of_file(path)))
            pulls.append(pull_into_empty_cache(workdir / f"cache-{i}"))

    sha3 = size / 1e6 / statistics.median(hashes)
    pull = size / 1e6 / statistics.median(pulls)
    emit("sha3_baseline", sha3, "MB/s", runs=[round(size / 1e6 / s, 1) for s in hashes])
    emit(
        "image_pull_verify",
        pull,
        "MB/s",
        ratio_to_sha3=round(pull / sha3, 3),
        runs=[round(size / 1e6 / s, 1) for s in pulls],
        size_mib=size_mib,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="image size (default 512)")
    parser.add_argument("--runs", type=int, default=3, help="pulls (median kept; default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate figure (default 3)")
    args = parser.parse_args(argv)

    bench_tokens(args.seconds)
    workdir = Path(tempfile.mkdtemp(prefix="gu-bench-security-"))
    hub = make_hub(workdir)
    try:
        hub.start()
        bench_logins(hub, args.seconds)
        bench_images(hub, workdir, args.size_mib, args.runs)
    finally:
        hub.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
