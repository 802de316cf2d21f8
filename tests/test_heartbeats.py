"""The hub's heartbeat batcher: many beats, one transaction; merged, newest wins, never lost."""

from __future__ import annotations

import asyncio

from controller.heartbeats import HeartbeatBatcher
from controller.store import Store
from tests.test_reconcilers_scheduling import add_provider


def beat(n: int) -> dict[str, object]:
    return {"lastHeartbeat": f"2026-11-29T00:00:{n:02d}Z", "usage": {"workloads": n}}


def test_fifty_beats_are_one_commit_merged_into_each_status(store: Store) -> None:
    nodes = [add_provider(store, i) for i in range(1, 51)]
    with store.transaction():
        for node in nodes:  # the hub's own fields: a flush must keep them
            cur = store.get("Provider", node)
            store.update_status(
                "Provider", node, {**cur["status"], "conditions": [{"type": "Ready"}]}
            )
    commits: list[float] = []
    store.time_commits(commits.append)
    batcher = HeartbeatBatcher(store)
    for n, node in enumerate(nodes):
        batcher.record(node, beat(n % 60))
    assert batcher.pending() == 50
    assert batcher.flush() == 50
    assert len(commits) == 1  # one transaction, one fsync, for fifty beats
    for n, node in enumerate(nodes):
        status = store.get("Provider", node)["status"]
        assert status["lastHeartbeat"] == beat(n % 60)["lastHeartbeat"]
        assert status["usage"] == {"workloads": n % 60}
        assert status["conditions"] == [{"type": "Ready"}]
        assert status["inventory"]["cpu"]["cores"] == 4  # untouched fields stay
    assert batcher.flush() == 0 and len(commits) == 1  # nothing pending: no write


def test_the_newest_beat_wins_and_a_deleted_provider_is_skipped(store: Store) -> None:
    keep, gone = add_provider(store, 1), add_provider(store, 2)
    batcher = HeartbeatBatcher(store)
    batcher.record(keep, beat(1))
    batcher.record(keep, beat(2))
    batcher.record(gone, beat(3))
    store.delete("Provider", gone)
    assert batcher.flush() == 1
    assert store.get("Provider", keep)["status"]["lastHeartbeat"] == beat(2)["lastHeartbeat"]
    assert store.try_get("Provider", gone) is None


def test_the_flusher_writes_within_its_interval_and_once_more_on_stop(store: Store) -> None:
    node = add_provider(store, 1)
    batcher = HeartbeatBatcher(store, interval=0.05)

    async def scenario() -> tuple[str, str]:
        stop = asyncio.Event()
        task = asyncio.create_task(batcher.run(stop))
        batcher.record(node, beat(1))
        first = ""
        for _ in range(200):  # bounded: 200 × 10 ms
            await asyncio.sleep(0.01)
            first = store.get("Provider", node)["status"]["lastHeartbeat"]
            if first == beat(1)["lastHeartbeat"]:
                break
        batcher.record(node, beat(2))
        stop.set()  # the last beat is flushed on the way out
        await asyncio.wait_for(task, 5)
        return first, store.get("Provider", node)["status"]["lastHeartbeat"]

    first, last = asyncio.run(scenario())
    assert first == beat(1)["lastHeartbeat"]
    assert last == beat(2)["lastHeartbeat"]


def test_a_beat_that_arrives_while_the_last_flush_runs_is_written_on_stop(store: Store) -> None:
    """The hub stops while a flush is writing and a beat comes in: that beat is not lost.

    The beat and the stop are made inside the flush itself (on its worker thread), so the
    order is certain: the loop sees ``stop`` set right after that flush returns.
    """
    node = add_provider(store, 1)
    batcher = HeartbeatBatcher(store, interval=0.01)
    flush = batcher.flush

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def flush_then_beat_and_stop() -> int:
            written = flush()
            if written and not stop.is_set():  # the flush that wrote beat 1
                batcher.record(node, beat(2))
                loop.call_soon_threadsafe(stop.set)
            return written

        batcher.flush = flush_then_beat_and_stop  # type: ignore[method-assign]
        batcher.record(node, beat(1))
        await asyncio.wait_for(batcher.run(stop), 5)

    asyncio.run(scenario())
    assert store.get("Provider", node)["status"]["lastHeartbeat"] == beat(2)["lastHeartbeat"]
    assert batcher.pending() == 0
