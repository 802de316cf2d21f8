"""Simulated agents for ``bench_pool.py``, in a process of their own.

Run by the benchmark (one process per slice of the pool), never by hand:
``python tests/bench/pool_agents.py URL JOIN_TOKEN FIRST COUNT [--watch]``.
Each simulated agent enrols with its own Ed25519 key and sends one heartbeat;
with ``--watch`` it then holds a watch stream on its Placements, as a real
agent does, for as long as the process runs. The process talks over
stdin/stdout in JSON lines:

- it prints ``{"event": "ready", "nodes": [...], "seconds": s}`` once enrolled;
- from then on every agent heartbeats every ``--period`` seconds (spread
  evenly), as real agents do, until the process ends;
- on ``{"beat": SECONDS}`` it records the heartbeats' latencies for
  ``SECONDS``; then it prints
  ``{"event": "beats", "latencies": [...], "errors": n, "watchEvents": n}``;
- on ``{"pause": true|false}`` it stops (resumes) beating, and answers;
- on ``{"quit": true}`` (or end of input) it closes its streams and exits.

Heartbeats and watch streams go over plain keep-alive HTTP/1.1 connections, one per
agent and purpose as a real agent holds them (``Conn``): httpx's connection pool, shared
by 500 agents, walked every queued request past every connection on each assignment
(O(requests × connections)), which took most of a generator's core and put the
generator's own queueing into the latencies it reported. Each process also reports its
event loop's lag (``loopLagP99Ms``), so a figure that includes the generator's own delay
shows it.

All traffic goes to the hub's loopback URL given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from specs.identity import (  # noqa: E402
    LOGIN_PAYLOAD_TYPE,
    generate_key,
    login_body,
    public_key_str,
    sign,
)

GIB = 1 << 30


def beat_body(i: int) -> dict[str, Any]:
    """A heartbeat: the same inventory every time, usage that moves."""
    return {
        "inventory": {
            "os": {"name": "Linux", "version": platform.release()},
            "cpu": {"architecture": "x86", "bit": [32, 64], "cores": 8, "threads": 16},
            "memoryBytes": 32 * GIB,
            "storageBytes": 500 * GIB,
            "runtimes": ["native"],
        },
        "usage": {
            "cpuPercent": float((i + int(time.time())) % 50),
            "memoryAvailableBytes": 24 * GIB,
            "storageFreeBytes": 300 * GIB,
            "workloads": 0,
        },
    }


class HttpError(Exception):
    """A request that failed: the connection broke or the hub answered an error."""


class Conn:
    """One keep-alive HTTP/1.1 connection to the hub, raw asyncio; reconnects on demand.

    Enough HTTP for the hub's answers: a status line, headers, and a body by
    Content-Length or chunked. A request sent on a reused connection that the hub had
    closed meanwhile (idle timeout) is sent once more on a new one."""

    def __init__(self, url: str) -> None:
        split = urlsplit(url)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _send(self, method: str, path: str, token: str, body: bytes | None) -> None:
        assert self.writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        await self.writer.drain()

    async def _head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        status = await self.reader.readline()
        if not status:
            raise ConnectionResetError("the hub closed the connection")
        code = int(status.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        return code, headers

    async def open(
        self, method: str, path: str, token: str, body: bytes | None = None
    ) -> dict[str, str]:
        """Send a request and read the answer's head; the body is the caller's to read."""
        for attempt in (0, 1):
            fresh = self.writer is None
            try:
                if fresh:
                    await self._connect()
                await self._send(method, path, token, body)
                code, headers = await self._head()
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                self.close()
                if fresh or attempt:
                    raise HttpError(f"{method} {path}: {exc!r}") from exc
                continue  # the hub closed an idle connection: once more on a new one
            if code >= 400:
                await self.body(headers)
                raise HttpError(f"{method} {path}: HTTP {code}")
            return headers
        raise AssertionError("unreachable")

    async def body(self, headers: dict[str, str]) -> bytes:
        assert self.reader is not None
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> Any:
        """The chunks of a chunked body, as they come (an async iterator of bytes)."""
        assert self.reader is not None
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def request(self, method: str, path: str, token: str, body: bytes | None = None) -> bytes:
        headers = await self.open(method, path, token, body)
        try:
            data = await self.body(headers)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise HttpError(f"{method} {path}: {exc!r}") from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        return data


def say(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def enrol(http: httpx.AsyncClient, join: str, i: int) -> tuple[str, str]:
    key = generate_key()
    pub = public_key_str(key)
    resp = await http.post("/v1/auth/challenge", json={"publicKey": pub, "purpose": "enroll"})
    chal = resp.json()
    expiry = int(time.time()) + 60
    body = login_body(chal["hubId"], chal["nonce"], "enroll", expiry)
    resp = await http.post(
        "/v1/agents/enroll",
        json={
            "publicKey": pub,
            "nonce": chal["nonce"],
            "expiry": expiry,
            "signature": sign(key, LOGIN_PAYLOAD_TYPE, body),
            "joinToken": join,
            "name": f"sim-{i}",
            "labels": {"sim": "yes"},
        },
    )
    resp.raise_for_status()
    return resp.json()["nodeId"], resp.json()["token"]


class Pool:
    def __init__(self, url: str, first: int, count: int) -> None:
        self.url = url
        self.first = first
        self.count = count
        self.agents: list[tuple[str, str]] = []
        self.watch_events = 0
        self.measuring = False
        self.paused = False
        self.latencies: list[float] = []
        self.errors = 0
        self.watch_errors = 0
        self.lags: list[float] = []
        self.enrol_http = httpx.AsyncClient(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)
        )
        self.beat_conns: dict[int, Conn] = {}
        self.period = 5.0  # what the agents are told to use (``--period``)
        self.periods: dict[int, float] = {}  # each agent's, once its hub asked for longer

    async def enrol_all(self, join: str) -> None:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> tuple[str, str]:
            async with sem:
                node, token = await enrol(self.enrol_http, join, i)
                await self.beat(i, token)
                return node, token

        self.agents = list(await asyncio.gather(*(one(self.first + k) for k in range(self.count))))

    async def beat(self, i: int, token: str) -> float:
        """One heartbeat on agent ``i``'s own connection; its latency in seconds."""
        conn = self.beat_conns.get(i)
        if conn is None:
            conn = self.beat_conns[i] = Conn(self.url)
        body = json.dumps({**beat_body(i), "period": self.period}).encode()
        t = time.perf_counter()
        answer = await conn.request("POST", "/v1/agents/heartbeat", token, body)
        took = time.perf_counter() - t
        asked = json.loads(answer).get("heartbeat")  # as the agent: a longer period, if asked
        if isinstance(asked, int | float):
            self.periods[i] = max(self.period, min(float(asked), 300.0))
        return took

    async def watch(self, token: str, stop: asyncio.Event) -> None:
        """One agent's watch stream on its Placements, re-opened if it ends.

        Like the real agent: list first, then watch from the list's resourceVersion
        (and list again when the stream ends with an error)."""
        rv: int | None = None
        conn = Conn(self.url)
        try:
            while not stop.is_set():
                try:
                    if rv is None:
                        listed = await conn.request("GET", "/v1/placements", token)
                        rv = int(json.loads(listed)["resourceVersion"])
                    query = urlencode({"kind": "Placement", "resourceVersion": rv})
                    headers = await conn.open("GET", f"/v1/watch?{query}", token)
                    if "content-length" in headers:  # an answer, not a stream
                        await conn.body(headers)
                        continue
                    pending = b""
                    async for chunk in conn.chunks():
                        *lines, pending = (pending + chunk).split(b"\n")
                        for raw in lines:
                            if not raw:
                                continue
                            ev = json.loads(raw)
                            rv = ev.get("resourceVersion", rv)
                            if ev.get("type") != "BOOKMARK":
                                self.watch_events += 1
                        if stop.is_set():
                            return
                except (HttpError, OSError, asyncio.IncompleteReadError, ValueError):
                    self.watch_errors += 1
                    conn.close()
                    rv = None  # list again, as the agent does
                    await asyncio.sleep(1)
        finally:
            conn.close()

    async def beat_always(self, period: float, stop: asyncio.Event) -> None:
        """Every agent heartbeats every ``period`` seconds (spread evenly) until ``stop``,
        as real agents do all the time; latencies are kept while ``measuring``."""
        n = len(self.agents)

        loop_ = asyncio.get_running_loop()

        async def loop(k: int, token: str) -> None:
            # each agent keeps its phase: a beat missed (paused, or the hub late) is
            # skipped, not sent late, so resuming after a pause is no herd of beats
            due = loop_.time() + period * k / n
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, due - loop_.time()))
                if stop.is_set():
                    return
                every = self.periods.get(self.first + k, period)
                due += every
                if due < loop_.time():
                    due += every * ((loop_.time() - due) // every + 1)
                if self.paused:
                    continue
                try:
                    took = await self.beat(self.first + k, token)
                    if self.measuring:
                        self.latencies.append(took)
                except HttpError:
                    if self.measuring:
                        self.errors += 1

        await asyncio.gather(*(loop(k, tok) for k, (_, tok) in enumerate(self.agents)))

    async def measure(self, seconds: float) -> dict[str, Any]:
        self.latencies, self.errors, self.lags, self.measuring = [], 0, [], True
        await asyncio.sleep(seconds)
        self.measuring = False
        lags = sorted(self.lags)
        return {
            "event": "beats",
            "periods": sorted(set(self.periods.values())),
            "latencies": self.latencies,
            "errors": self.errors,
            "loopLagP99Ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 1) if lags else 0.0,
        }

    async def watch_lag(self, stop: asyncio.Event) -> None:
        """How late this process's event loop wakes a 50 ms sleep (its own queueing,
        which the latencies it reports include), kept while ``measuring``."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(0.05)
            if self.measuring:
                self.lags.append(max(0.0, loop.time() - t - 0.05))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("join")
    ap.add_argument("first", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("--watch", action="store_true")
    ap.add_argument("--period", type=float, default=5.0)
    args = ap.parse_args()
    pool = Pool(args.url, args.first, args.count)
    pool.period = args.period
    t = time.perf_counter()
    await pool.enrol_all(args.join)
    stop = asyncio.Event()
    watches = (
        [asyncio.create_task(pool.watch(tok, stop)) for _, tok in pool.agents] if args.watch else []
    )
    beating = asyncio.create_task(pool.beat_always(args.period, stop))
    lag = asyncio.create_task(pool.watch_lag(stop))
    say(
        {
            "event": "ready",
            "nodes": [n for n, _ in pool.agents],
            "seconds": round(time.perf_counter() - t, 2),
        }
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        if not raw:
            break
        cmd = json.loads(raw)
        if cmd.get("quit"):
            break
        if "pause" in cmd:  # a quiet hub for the idle baseline (shorter than the grace)
            pool.paused = bool(cmd["pause"])
            say({"event": "paused" if pool.paused else "beating"})
        if "beat" in cmd:
            out = await pool.measure(float(cmd["beat"]))
            out["watchEvents"] = pool.watch_events
            out["watchErrors"] = pool.watch_errors
            say(out)
    stop.set()
    await beating
    await lag
    for task in watches:
        task.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    for conn in pool.beat_conns.values():
        conn.close()
    await pool.enrol_http.aclose()


if __name__ == "__main__":
    asyncio.run(main())
