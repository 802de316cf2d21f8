"""The work queue: dedupe, one worker per key, backoff with a cap, forget, delayed adds.

One queue serves the hub's reconcile engine and the agent (``controller.client.workqueue``);
these tests drive it from plain threads, as both do.
"""

from __future__ import annotations

import threading
import time

import pytest

from controller.client.workqueue import Backoff, QueueShutDown, TokenBucket, WorkQueue


def no_key_within(queue: WorkQueue, seconds: float) -> bool:
    return queue.get(timeout=seconds) is None


def test_a_key_added_several_times_is_handed_out_once() -> None:
    q = WorkQueue()
    for _ in range(3):
        q.add("Session/a")
    q.add("Session/b")
    assert len(q) == 2
    assert q.get(timeout=1) == "Session/a"
    assert q.get(timeout=1) == "Session/b"
    assert no_key_within(q, 0.05)


def test_a_key_added_while_processed_waits_until_done() -> None:
    q = WorkQueue()
    q.add("k")
    key = q.get(timeout=1)
    assert key == "k"
    q.add("k")  # changed while a worker holds it: dirty, not handed out
    q.add("k")
    assert q.len() == 0
    assert no_key_within(q, 0.05)
    q.done(key)
    assert q.len() == 1
    assert q.get(timeout=1) == "k"
    q.done("k")
    assert no_key_within(q, 0.05)


def test_workers_never_hold_one_key_at_once() -> None:
    q = WorkQueue()
    holding: set[str] = set()
    overlaps: list[str] = []
    handled: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                key = q.get(timeout=2)
            except QueueShutDown:
                return
            if key is None:
                return
            with lock:
                if key in holding:
                    overlaps.append(key)
                holding.add(key)
            time.sleep(0.002)
            with lock:
                holding.discard(key)
                handled.append(key)
            q.done(key)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for i in range(200):
        q.add(f"k{i % 3}")
        if i % 7 == 0:
            time.sleep(0.001)
    deadline = time.monotonic() + 2
    while (q.len() or q.processing()) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shutdown()
    for w in workers:
        w.join(timeout=1)
    assert not any(w.is_alive() for w in workers)
    assert overlaps == []
    assert set(handled) == {"k0", "k1", "k2"}
    assert len(handled) < 200  # collapsed, not one run per add


def test_backoff_doubles_per_failure_and_is_capped() -> None:
    q = WorkQueue(base_delay=0.005, max_delay=0.04, rate=1e6, burst=1000)
    delays = [q.add_rate_limited("k") for _ in range(7)]
    assert delays == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.04, 0.04, 0.04])
    assert q.num_requeues("k") == 7
    assert q.waiting() == 1  # one pending deadline, however many failures
    q.shutdown()


def test_a_retry_loop_backs_off_on_the_same_curve() -> None:
    backoff = Backoff(0.005, 0.04)
    assert [backoff.next() for _ in range(7)] == pytest.approx(
        [0.005, 0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
    )
    backoff.reset()
    assert backoff.next() == pytest.approx(0.005)


def test_forget_resets_the_backoff() -> None:
    q = WorkQueue(base_delay=0.005, rate=1e6, burst=1000)
    for _ in range(5):
        q.add_rate_limited("k")
    q.forget("k")
    assert q.num_requeues("k") == 0
    assert q.add_rate_limited("k") == pytest.approx(0.005)
    q.shutdown()


def test_the_global_rate_limit_wins_when_it_is_longer() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert [bucket.reserve(), bucket.reserve()] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # each caller gets its own place in line
    now[0] += 1.0
    assert bucket.reserve() == 0.0

    q = WorkQueue(base_delay=0.005, rate=10, burst=1)
    assert q.add_rate_limited("a") == pytest.approx(0.005)
    assert q.add_rate_limited("b") == pytest.approx(0.1, abs=0.01)
    q.shutdown()


def test_add_after_fires_once_at_the_earliest_deadline() -> None:
    q = WorkQueue()
    start = time.monotonic()
    q.add_after("k", 0.5)
    q.add_after("k", 0.03)  # earlier: replaces
    q.add_after("k", 0.2)  # later: ignored
    assert q.waiting() == 1
    assert q.get(timeout=2) == "k"
    assert 0.02 <= time.monotonic() - start < 0.4
    q.done("k")
    assert q.waiting() == 0
    assert no_key_within(q, 0.3)  # neither 0.2 nor 0.5 fires again


def test_a_waiting_get_wakes_for_a_deadline_added_after_it_began() -> None:
    q = WorkQueue()
    got: list[str | None] = []
    getter = threading.Thread(target=lambda: got.append(q.get(timeout=3)))
    getter.start()
    time.sleep(0.05)
    start = time.monotonic()
    q.add_after("k", 0.05)
    getter.join(timeout=3)
    assert got == ["k"]
    assert time.monotonic() - start < 1.0


def test_many_delayed_adds_keep_one_deadline_per_key() -> None:
    q = WorkQueue()
    for i in range(1000):
        q.add_after(f"k{i % 10}", 10 - i * 0.001)  # always earlier: supersedes
    assert q.waiting() == 10
    assert len(q._heap) <= 2 * 10 + 64 + 1
    q.shutdown()


def test_shutdown_wakes_a_waiting_get() -> None:
    q = WorkQueue()
    errors: list[BaseException] = []

    def getter() -> None:
        try:
            q.get(timeout=5)
        except QueueShutDown as exc:
            errors.append(exc)

    thread = threading.Thread(target=getter)
    thread.start()
    time.sleep(0.01)
    q.shutdown()
    thread.join(timeout=1)
    assert len(errors) == 1 and isinstance(errors[0], QueueShutDown)
    q.add("k")  # ignored after shutdown
    assert q.len() == 0
