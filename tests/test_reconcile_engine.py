"""The reconcile engine: handlers run on create and change, retry with backoff, follow
watches, resync without writing, and stop cleanly."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.reconcile import Context, Controller, Result, engine
from controller.store import Change, ChangeText, Gone, SQLiteStore, Store


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "Widget", "metadata": {"name": name}, "spec": spec}


def run(body: Callable[[], Awaitable[None]], timeout: float = 8) -> None:
    asyncio.run(asyncio.wait_for(body(), timeout=timeout))


async def eventually(check: Callable[[], Any], timeout: float = 3.0, what: str = "it") -> Any:
    """Poll ``check`` on the loop until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


def test_a_handler_runs_on_create_and_on_change_with_the_current_object(store: Store) -> None:
    controller = Controller(store, workers=2)
    seen: list[tuple[str, int]] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        seen.append((obj["metadata"]["name"], obj["spec"]["size"]))

    store.create(widget("before", size=1))  # exists before the controller starts

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: ("before", 1) in seen, what="initial list")
            store.create(widget("w", size=1))
            await eventually(lambda: ("w", 1) in seen, what="create")
            store.replace(widget("w", size=2))
            await eventually(lambda: ("w", 2) in seen, what="change")

    run(body)
    assert controller.stats()["errors"] == 0


def test_a_handler_is_not_called_for_an_object_that_is_gone(store: Store) -> None:
    controller = Controller(store)
    calls: list[str] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        calls.append(obj["metadata"]["name"])

    store.create(widget("w"))
    store.delete("Widget", "w")
    assert controller.reconcile("Widget", "w") is None
    assert calls == []


def test_a_failing_handler_is_retried_with_backoff_until_it_succeeds(store: Store) -> None:
    controller = Controller(store, workers=2)
    attempts: list[float] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= 4:
            raise RuntimeError("provider not reachable yet")

    store.create(widget("w"))

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: len(attempts) >= 5, what="success after retries")
            await asyncio.sleep(0.1)  # and no further retries after the success

    run(body)
    assert len(attempts) == 5
    assert controller.stats()["errors"] == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[3] >= 0.035  # the 4th retry waited 5 ms * 2**3
    assert gaps[3] > gaps[0]


def test_requeue_after_runs_the_handler_again_without_a_change(store: Store) -> None:
    controller = Controller(store)
    calls: list[float] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> Result:
        calls.append(time.monotonic())
        return Result(requeue_after=0.05)

    store.create(widget("w"))

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: len(calls) >= 3, what="requeued runs")

    run(body)
    assert calls[2] - calls[1] >= 0.04


def test_a_watched_kind_enqueues_the_objects_its_mapper_names(store: Store) -> None:
    controller = Controller(store)
    seen: list[tuple[str, bool]] = []

    def widgets_using(gear: dict[str, Any], s: Store) -> list[str]:
        return [
            w["metadata"]["name"]
            for w in s.list_where("Widget", "$.gear", gear["metadata"]["name"])
        ]

    @controller.reconciler("Widget", watches={"Gear": widgets_using})
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        found = ctx.store.try_get("Gear", obj["spec"]["gear"]) is not None
        seen.append((obj["metadata"]["name"], found))

    store.create(widget("uses-g", gear="g"))
    store.create(widget("other", gear="h"))

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: ("uses-g", False) in seen, what="initial pass")
            store.create({"kind": "Gear", "metadata": {"name": "g"}, "spec": {}})
            await eventually(lambda: ("uses-g", True) in seen, what="mapped wake-up")
            await asyncio.sleep(0.05)

    run(body)
    assert seen.count(("other", False)) == 1  # not woken by an unrelated Gear


def test_the_feed_decodes_only_the_changes_of_watched_kinds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change of a kind no mapper watches wakes its key from kind and name alone: the
    engine's feed does not decode its object (a Session pass's own writes are most of
    the changes while scheduling)."""
    controller = Controller(store)
    seen: list[str] = []
    decoded: list[str] = []
    real = ChangeText.decoded

    def counted(self: ChangeText) -> Change:
        decoded.append(self.kind)
        return real(self)

    monkeypatch.setattr(ChangeText, "decoded", counted)

    @controller.reconciler("Widget", watches={"Gear": lambda gear, s: ["w1"]})
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        seen.append(obj["metadata"]["name"])

    async def body() -> None:
        async with running(controller):
            store.create(widget("w1"))
            store.create(widget("w2"))
            await eventually(lambda: {"w1", "w2"} <= set(seen), what="both widgets")
            store.create({"kind": "Gear", "metadata": {"name": "g"}, "spec": {}})
            await eventually(lambda: seen.count("w1") >= 2, what="the mapped wake-up")

    run(body)
    assert decoded == ["Gear"]


def test_resync_reruns_handlers_and_a_converged_resync_writes_nothing(store: Store) -> None:
    controller = Controller(store, resync_period=0.05, jitter=0.2)
    calls: list[str] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        calls.append(obj["metadata"]["name"])
        ctx.update_status(obj, {"observedGeneration": obj["metadata"]["generation"], "ok": True})

    store.create(widget("a"))
    store.create(widget("b"))

    async def body() -> None:
        async with running(controller):
            await eventually(
                lambda: all(store.get("Widget", n)["status"].get("ok") for n in "ab"),
                what="converged",
            )
            await asyncio.sleep(0.05)  # let the wake-ups of our own status writes settle
            rv, before = store.resource_version, len(calls)
            await eventually(lambda: len(calls) >= before + 6, what="three resyncs")
            assert store.resource_version == rv

    run(body)
    assert controller.stats()["last_resync"] is not None


def test_when_the_change_log_is_gone_everything_is_relisted(store: Store) -> None:
    controller = Controller(store)
    seen: list[str] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        seen.append(obj["metadata"]["name"])

    store.create(widget("old"))
    real_changes = store.change_texts
    gone_next = threading.Event()  # the next read of the log finds it compacted

    def changes_gone_once(since: int, limit: int = 1000) -> list[Any]:
        if gone_next.is_set():
            gone_next.clear()
            raise Gone("compacted")
        return real_changes(since, limit)

    store.change_texts = changes_gone_once  # type: ignore[method-assign]

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: "old" in seen, what="initial list")
            seen.clear()
            gone_next.set()
            store.create(widget("new"))
            await eventually(lambda: {"old", "new"} <= set(seen), what="relist")

    run(body)
    assert controller.stats()["relists"] == 1


def test_events_are_not_repeated_when_nothing_new_happened(store: Store) -> None:
    controller = Controller(store)

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        ctx.event(obj, "Waiting", f"for {obj['spec']['on']}", "Warning")

    store.create(widget("w", on="gear"))
    for _ in range(3):
        controller.reconcile("Widget", "w")
    store.replace(widget("w", on="belt"))
    controller.reconcile("Widget", "w")
    assert [e.message for e in store.events("Widget", "w")] == ["for gear", "for belt"]


def test_stop_waits_for_a_running_handler_then_returns(store: Store) -> None:
    controller = Controller(store, workers=1)
    finished = threading.Event()
    started = threading.Event()

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        started.set()
        time.sleep(0.2)
        finished.set()

    store.create(widget("w"))

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        await eventually(started.is_set, what="handler started")
        stop.set()
        await asyncio.wait_for(task, timeout=3)
        assert finished.is_set()

    run(body)


def test_stop_gives_up_on_a_stuck_handler_after_the_timeout(store: Store) -> None:
    controller = Controller(store, workers=1, stop_timeout=0.2)
    release = threading.Event()
    started = threading.Event()

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        started.set()
        release.wait(timeout=5)

    store.create(widget("w"))

    async def body() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        await eventually(started.is_set, what="handler started")
        begin = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=3)
        assert time.monotonic() - begin < 2

    try:
        run(body)
    finally:
        release.set()


def test_enqueue_from_another_thread_reaches_the_handler(store: Store) -> None:
    controller = Controller(store, resync_period=60)
    calls: list[str] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        calls.append(obj["metadata"]["name"])

    store.create(widget("w"))

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: calls == ["w"], what="initial pass")
            thread = threading.Thread(target=controller.enqueue, args=("Widget", "w"))
            thread.start()
            thread.join(timeout=1)
            await eventually(lambda: len(calls) == 2, what="enqueued pass")

    run(body)
    stats = controller.stats()
    assert stats["reconciles"] == 2
    assert {"errors", "queue_length", "last_resync"} <= set(stats)


def test_a_controller_refuses_a_second_reconciler_for_one_kind(store: Store) -> None:
    controller = Controller(store)
    controller.reconciler("Widget")(lambda obj, ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        controller.reconciler("Widget")(lambda obj, ctx: None)


def test_recording_events_inside_and_outside_store_transactions_cannot_deadlock(
    tmp_path: Path,
) -> None:
    """Regression: the Session reconciler records events while its store transaction
    holds the store lock; other reconcilers record events without one. Both orders
    must be safe (they once took two locks in opposite orders and froze the hub)."""
    import threading

    store = SQLiteStore(tmp_path / "locks.db")
    controller = Controller(store)
    store.create({"kind": "App", "metadata": {"name": "a"}, "spec": {}})
    obj = store.get("App", "a")
    errors: list[BaseException] = []

    def inside(n: int) -> None:
        try:
            for i in range(n):
                with store.transaction():
                    controller.record_event(obj, "Inside", f"event {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def outside(n: int) -> None:
        try:
            for i in range(n):
                controller.record_event(obj, "Outside", f"event {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=f, args=(300,), daemon=True) for f in (inside, outside)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "event recording deadlocked"
    assert errors == []
    assert store.events("App", "a")


def test_resyncs_of_an_empty_store_leave_the_engine_running(store: Store) -> None:
    """(A resync with nothing to queue once failed the engine, and with it the hub.)"""
    controller = Controller(store, resync_period=0.05, jitter=0)
    seen: list[str] = []

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        seen.append(obj["metadata"]["name"])

    async def body() -> None:
        async with running(controller) as task:
            await asyncio.sleep(0.5)  # several resyncs of nothing
            assert not task.done()
            store.create(widget("late"))
            await eventually(lambda: "late" in seen, what="a reconcile after them")

    run(body)


def test_a_pass_is_not_woken_again_by_its_own_writes_but_others_are(store: Store) -> None:
    """A handler's status write, and a write it reports with ``ctx.wrote``, wake neither
    it again (it knew what it wrote) — a watcher of that kind is woken all the same, and
    so is the handler by anybody else's write."""
    controller = Controller(store, workers=2)
    passes: list[str] = []
    gadget_passes: list[str] = []

    @controller.reconciler("Widget", watches={"Part": lambda part, _s: [part["spec"]["of"]]})
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        passes.append(obj["metadata"]["name"])
        ctx.update_status(obj, {"seen": obj["spec"].get("size")})
        part = store.try_get("Part", obj["metadata"]["name"])
        if part is None:
            ctx.wrote(store.create({"kind": "Part", "metadata": {"name": obj["metadata"]["name"]},
                                    "spec": {"of": obj["metadata"]["name"]}}))  # fmt: skip

    @controller.reconciler(
        "Gadget",
        watches={"Part": lambda part, _store: ["g"], "Widget": lambda w, _store: ["g"]},
    )
    def gadget(obj: dict[str, Any], ctx: Context) -> None:
        gadget_passes.append(obj["metadata"]["name"])

    store.create({"kind": "Gadget", "metadata": {"name": "g"}, "spec": {}})

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: "g" in gadget_passes, what="the gadget listed")
            store.create(widget("w", size=1))
            await eventually(lambda: store.try_get("Part", "w") is not None, what="its part")
            await asyncio.sleep(0.5)  # time for any wake-up its own writes would cause
            assert passes == ["w"], passes  # its status and its part woke it no more
            assert len(gadget_passes) >= 2  # the watcher of parts and widgets was woken
            store.replace(widget("w", size=2))  # somebody else's write
            await eventually(lambda: passes == ["w", "w"], what="a pass for that")

    run(body)


@pytest.mark.parametrize("careful", [engine.CAREFUL_SECONDS, 0.0])
def test_ready_passes_share_one_commit_and_a_failed_one_rolls_back_only_once(
    store: Store, careful: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty keys ready at once go through one worker as one group: one commit. The
    pass of ``w07`` writes, then fails on its first two attempts. Its first failure rolls
    back the group so far (passes run without savepoints of their own): nothing of
    ``w00``…``w07`` is stored, and they run again. Its second failure, in backoff now,
    runs in a savepoint: it undoes only its own write, and the group around it
    commits. Its third attempt is stored. (With ``careful`` 0 the retry is in a
    savepoint because its key is in backoff, not because a group was rolled back.)"""
    monkeypatch.setattr(engine, "CAREFUL_SECONDS", careful)
    controller = Controller(store, workers=1, commit_window=5.0)
    attempts: dict[str, int] = {}

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        name = obj["metadata"]["name"]
        attempts[name] = attempts.get(name, 0) + 1
        ctx.update_status(obj, {"attempt": attempts[name]})
        if name == "w07" and attempts[name] <= 2:
            raise RuntimeError("not yet")

    store.apply([widget(f"w{i:02d}", size=i) for i in range(20)])
    start = store.resource_version
    commits: list[float] = []
    store.time_commits(commits.append)

    async def body() -> None:
        async with running(controller):
            await eventually(
                lambda: all(w["status"] for w in store.list("Widget")), what="every status"
            )

    run(body)
    statuses = {w["metadata"]["name"]: w["status"] for w in store.list("Widget")}
    assert statuses["w07"] == {"attempt": 3}
    for i in range(20):
        if i != 7:  # the first seven ran twice: their first pass was rolled back
            assert statuses[f"w{i:02d}"] == {"attempt": 2 if i < 7 else 1}, i
    written = [(c.name, c.object["status"]) for c in store.changes(start)]
    assert ("w07", {"attempt": 1}) not in written
    assert ("w07", {"attempt": 2}) not in written
    assert ("w00", {"attempt": 1}) not in written
    assert len(written) == 20  # each once: nothing of the rolled back group, no failure
    assert controller.stats()["rolled_back_groups"] == 1
    assert len(commits) <= 3  # (the retries of w07 may join a group or come alone)


def test_what_a_failed_pass_wrote_and_undid_is_told_to_on_lost_commit(store: Store) -> None:
    """A pass's writes may have been read back in memory (``ClusterState`` reads its
    own transaction's writes). Attempt 1 fails before writing: its group is rolled back
    anyway, so ``on_lost_commit`` hears of it. Attempt 2 (in a savepoint: its key is in
    backoff) fails before writing: nothing was undone, nobody is told. Attempt 3 writes
    and then fails: its savepoint undoes the write, whose rv the next write takes again,
    so ``on_lost_commit`` hears of it. Attempt 4 succeeds."""
    controller = Controller(store, workers=1, commit_window=5.0)
    lost: list[int] = []
    attempts: list[int] = []
    controller.on_lost_commit(lambda: lost.append(len(attempts)))

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 3:
            ctx.update_status(obj, {"attempt": 3})
        if len(attempts) < 4:
            raise RuntimeError("not yet")
        ctx.update_status(obj, {"attempt": 4})

    store.apply([widget("w", size=1)])

    async def body() -> None:
        async with running(controller):
            await eventually(lambda: store.get("Widget", "w")["status"], what="its status")

    run(body)
    assert attempts == [1, 2, 3, 4]
    assert lost == [1, 3]
    assert store.get("Widget", "w")["status"] == {"attempt": 4}
    assert controller.stats()["rolled_back_groups"] == 1


def test_a_group_ends_at_once_while_another_writer_waits(store: Store) -> None:
    """With another process waiting for the writer lock (``Store.writer_waiting``; that
    signal itself is tested across real processes in ``test_store_processes``), each
    ready key is committed by itself, however long the window."""
    controller = Controller(store, workers=1, commit_window=5.0)

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        ctx.update_status(obj, {"seen": True})

    store.apply([widget(f"w{i:02d}", size=i) for i in range(20)])
    commits: list[float] = []
    store.time_commits(commits.append)
    store.writer_waiting = lambda: True  # type: ignore[method-assign]

    async def body() -> None:
        async with running(controller):
            await eventually(
                lambda: all(w["status"] for w in store.list("Widget")), what="every status"
            )

    run(body)
    assert len(commits) == 20


def test_a_group_whose_commit_fails_is_retried_and_its_readers_told(store: Store) -> None:
    """The commit of a group fails once (a fault the test injects: a disk or a database
    that goes away at that moment). Nothing of it is stored, the ``on_lost_commit``
    callbacks run, and every key of the group is retried and converges."""
    controller = Controller(store, workers=1, commit_window=5.0)
    lost: list[str] = []
    controller.on_lost_commit(lambda: lost.append("lost"))

    @controller.reconciler("Widget")
    def reconcile(obj: dict[str, Any], ctx: Context) -> None:
        ctx.update_status(obj, {"done": True})

    store.apply([widget(f"w{i}", size=i) for i in range(5)])
    real = store.transaction
    failures = itertools.count()
    depth = threading.local()

    @contextmanager
    def failing_once(savepoint: bool = False) -> Iterator[None]:
        outer = getattr(depth, "n", 0) == 0
        depth.n = getattr(depth, "n", 0) + 1
        try:
            with real(savepoint=savepoint):
                yield
                worker = threading.current_thread().name.startswith("gu-reconcile-worker")
                if outer and worker and next(failures) == 0:
                    raise OSError("disk I/O error (injected)")
        finally:
            depth.n -= 1

    store.transaction = failing_once  # type: ignore[method-assign]

    async def body() -> None:
        async with running(controller):
            await eventually(
                lambda: all(w["status"] for w in store.list("Widget")),
                timeout=5,
                what="every status",
            )

    run(body)
    assert lost == ["lost"]
    assert controller.stats()["lost_commits"] == 1
    assert all(w["status"] == {"done": True} for w in store.list("Widget"))
