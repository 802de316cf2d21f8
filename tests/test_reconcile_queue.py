"""The work queue: dedupe, one worker per key, backoff with a cap, forget, delayed adds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from controller.reconcile.queue import QueueShutDown, TokenBucket, WorkQueue

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body with a hard deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(body(), timeout=5)

    return asyncio.run(bounded())


async def no_key_within(queue: WorkQueue, seconds: float) -> bool:
    try:
        await asyncio.wait_for(queue.get(), timeout=seconds)
    except TimeoutError:
        return True
    return False


def test_a_key_added_several_times_is_handed_out_once() -> None:
    async def body() -> None:
        q = WorkQueue()
        for _ in range(3):
            q.add("Session/a")
        q.add("Session/b")
        assert len(q) == 2
        assert await q.get() == "Session/a"
        assert await q.get() == "Session/b"
        assert await no_key_within(q, 0.05)

    run(body)


def test_a_key_added_while_processed_waits_until_done() -> None:
    async def body() -> None:
        q = WorkQueue()
        q.add("k")
        key = await q.get()
        q.add("k")  # changed while a worker holds it: dirty, not handed out
        q.add("k")
        assert q.len() == 0
        assert await no_key_within(q, 0.05)
        q.done(key)
        assert q.len() == 1
        assert await q.get() == "k"
        q.done("k")
        assert await no_key_within(q, 0.05)

    run(body)


def test_workers_never_hold_one_key_at_once() -> None:
    async def body() -> None:
        q = WorkQueue()
        holding: set[str] = set()
        overlaps: list[str] = []
        handled: list[str] = []

        async def worker() -> None:
            while True:
                try:
                    key = await q.get()
                except QueueShutDown:
                    return
                if key in holding:
                    overlaps.append(key)
                holding.add(key)
                await asyncio.sleep(0.002)
                holding.discard(key)
                handled.append(key)
                q.done(key)

        workers = [asyncio.create_task(worker()) for _ in range(4)]
        for i in range(200):
            q.add(f"k{i % 3}")
            if i % 7 == 0:
                await asyncio.sleep(0.001)
        deadline = asyncio.get_running_loop().time() + 2
        while (q.len() or q.processing()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        q.shutdown()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=1)
        assert overlaps == []
        assert set(handled) == {"k0", "k1", "k2"}
        assert len(handled) < 200  # collapsed, not one run per add

    run(body)


def test_backoff_doubles_per_failure_and_is_capped() -> None:
    async def body() -> None:
        q = WorkQueue(base_delay=0.005, max_delay=0.04, rate=1e6, burst=1000)
        delays = [q.add_rate_limited("k") for _ in range(7)]
        assert delays == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.04, 0.04, 0.04])
        assert q.num_requeues("k") == 7
        assert q.waiting() == 1  # one pending deadline, however many failures
        q.shutdown()

    run(body)


def test_forget_resets_the_backoff() -> None:
    async def body() -> None:
        q = WorkQueue(base_delay=0.005, rate=1e6, burst=1000)
        for _ in range(5):
            q.add_rate_limited("k")
        q.forget("k")
        assert q.num_requeues("k") == 0
        assert q.add_rate_limited("k") == pytest.approx(0.005)
        q.shutdown()

    run(body)


def test_the_global_rate_limit_wins_when_it_is_longer() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert [bucket.reserve(), bucket.reserve()] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # each caller gets its own place in line
    now[0] += 1.0
    assert bucket.reserve() == 0.0

    async def body() -> None:
        q = WorkQueue(base_delay=0.005, rate=10, burst=1)
        assert q.add_rate_limited("a") == pytest.approx(0.005)
        assert q.add_rate_limited("b") == pytest.approx(0.1, abs=0.01)
        q.shutdown()

    run(body)


def test_add_after_fires_once_at_the_earliest_deadline() -> None:
    async def body() -> None:
        q = WorkQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        q.add_after("k", 0.5)
        q.add_after("k", 0.03)  # earlier: replaces
        q.add_after("k", 0.2)  # later: ignored
        assert q.waiting() == 1
        assert await q.get() == "k"
        assert 0.02 <= loop.time() - start < 0.4
        q.done("k")
        assert q.waiting() == 0
        assert await no_key_within(q, 0.3)  # neither 0.2 nor 0.5 fires again

    run(body)


def test_many_delayed_adds_keep_one_deadline_per_key() -> None:
    async def body() -> None:
        q = WorkQueue()
        for i in range(1000):
            q.add_after(f"k{i % 10}", 10 - i * 0.001)  # always earlier: supersedes
        assert q.waiting() == 10
        assert len(q._heap) <= 2 * 10 + 64 + 1
        q.shutdown()

    run(body)


def test_shutdown_wakes_a_waiting_get() -> None:
    async def body() -> None:
        q = WorkQueue()
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0.01)
        q.shutdown()
        with pytest.raises(QueueShutDown):
            await asyncio.wait_for(getter, timeout=1)
        q.add("k")  # ignored after shutdown
        assert q.len() == 0

    run(body)
