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
        self.beat_http = httpx.AsyncClient(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)
        )
        self.watch_http = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(120, read=None),
            limits=httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8),
        )

    async def enrol_all(self, join: str) -> None:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> tuple[str, str]:
            async with sem:
                node, token = await enrol(self.beat_http, join, i)
                await self.beat(i, token)
                return node, token

        self.agents = list(await asyncio.gather(*(one(self.first + k) for k in range(self.count))))

    async def beat(self, i: int, token: str) -> float:
        t = time.perf_counter()
        resp = await self.beat_http.post(
            "/v1/agents/heartbeat", json=beat_body(i), headers={"Authorization": f"Bearer {token}"}
        )
        resp.raise_for_status()
        return time.perf_counter() - t

    async def watch(self, token: str, stop: asyncio.Event) -> None:
        """One agent's watch stream on its Placements, re-opened if it ends.

        Like the real agent: list first, then watch from the list's resourceVersion
        (and list again when the stream ends with an error)."""
        rv: int | None = None
        headers = {"Authorization": f"Bearer {token}"}
        while not stop.is_set():
            try:
                if rv is None:
                    listed = await self.watch_http.get("/v1/placements", headers=headers)
                    listed.raise_for_status()
                    rv = int(listed.json()["resourceVersion"])
                async with self.watch_http.stream(
                    "GET",
                    "/v1/watch",
                    params={"kind": "Placement", "resourceVersion": rv},
                    headers=headers,
                ) as resp:
                    async for raw in resp.aiter_lines():
                        if not raw:
                            continue
                        ev = json.loads(raw)
                        rv = ev.get("resourceVersion", rv)
                        if ev.get("type") != "BOOKMARK":
                            self.watch_events += 1
                        if stop.is_set():
                            return
            except httpx.HTTPError:
                self.watch_errors += 1
                rv = None  # list again, as the agent does
                await asyncio.sleep(1)

    async def beat_always(self, period: float, stop: asyncio.Event) -> None:
        """Every agent heartbeats every ``period`` seconds (spread evenly) until ``stop``,
        as real agents do all the time; latencies are kept while ``measuring``."""
        n = len(self.agents)

        async def loop(k: int, token: str) -> None:
            await asyncio.sleep(period * k / n)
            while not stop.is_set():
                if self.paused:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    took = await self.beat(self.first + k, token)
                    if self.measuring:
                        self.latencies.append(took)
                except httpx.HTTPError:
                    if self.measuring:
                        self.errors += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), period)

        await asyncio.gather(*(loop(k, tok) for k, (_, tok) in enumerate(self.agents)))

    async def measure(self, seconds: float) -> dict[str, Any]:
        self.latencies, self.errors, self.measuring = [], 0, True
        await asyncio.sleep(seconds)
        self.measuring = False
        return {"event": "beats", "latencies": self.latencies, "errors": self.errors}


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
    t = time.perf_counter()
    await pool.enrol_all(args.join)
    stop = asyncio.Event()
    watches = (
        [asyncio.create_task(pool.watch(tok, stop)) for _, tok in pool.agents] if args.watch else []
    )
    beating = asyncio.create_task(pool.beat_always(args.period, stop))
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
    for task in watches:
        task.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    await pool.beat_http.aclose()
    await pool.watch_http.aclose()


if __name__ == "__main__":
    asyncio.run(main())
