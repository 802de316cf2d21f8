"""The shared ring of recent changes that watch streams read (controller/feed.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from controller import authz
from controller.auth import Principal
from controller.feed import ChangeFeed, entry_of, line, may_see
from controller.store import Store

PRINCIPALS = [
    Principal("admin", "admin"),
    Principal("app", "demo"),
    Principal("app", "other"),
    Principal("agent", "node-a"),
    Principal("agent", "node-b"),
]


def objects() -> list[dict[str, Any]]:
    return [
        {"kind": "Session", "metadata": {"name": "s1"}, "spec": {"app": "demo"}},
        {"kind": "Session", "metadata": {"name": "s2"}, "spec": {"app": "other"}},
        {"kind": "Placement", "metadata": {"name": "p1"}, "spec": {"session": "s1"}},
        {"kind": "Placement", "metadata": {"name": "p2"}, "spec": {"node": "node-a"}},
        {"kind": "Placement", "metadata": {"name": "p3"}, "spec": {"node": "node-b"}},
        {"kind": "Provider", "metadata": {"name": "node-a"}, "spec": {}},
        {"kind": "Provider", "metadata": {"name": "node-b"}, "spec": {}},
        {"kind": "App", "metadata": {"name": "demo"}, "spec": {}},
        {"kind": "ImagePolicy", "metadata": {"name": "pol"}, "spec": {"apps": ["demo"]}},
    ]


async def fill(feed: ChangeFeed) -> None:
    """Attach the feed to this loop and let it read what the store holds."""
    feed.attach(asyncio.get_running_loop())
    for _ in range(500):  # bounded: 500 × 10 ms
        if feed.rv == feed.store.resource_version:
            break
        await asyncio.sleep(0.01)
    feed.store.unsubscribe(feed._from_thread)
    assert feed.rv == feed.store.resource_version


def test_may_see_is_authz_visible_for_every_principal_and_kind(store: Store) -> None:
    for obj in objects():
        store.create(obj)
    changes = store.changes(0)
    assert len(changes) == len(objects())
    for change, text in zip(changes, store.change_texts(0), strict=True):
        entry = entry_of(text)
        for who in PRINCIPALS:
            want = authz.visible(who, change.kind, change.object)
            assert may_see(who, entry) == want, (who, change.kind, change.name)


def test_every_stream_reads_the_same_lines_it_would_from_the_store(store: Store) -> None:
    feed = ChangeFeed(store)  # made before the writes: it holds them all
    for obj in objects():
        store.create(obj)
    store.update_status("Placement", "p2", {"state": "Running"})
    store.delete("Placement", "p3")

    asyncio.run(fill(feed))
    assert feed.reads == 1  # one read of the log, whoever watches
    for who in PRINCIPALS:
        for kinds in (None, {"Placement"}, {"Session", "Provider"}):
            got = feed.read(0, who, kinds)
            assert got is not None
            lines, upto = got
            want = [
                (c.type, c.name, c.rv)
                for c in store.changes(0)
                if (kinds is None or c.kind in kinds) and authz.visible(who, c.kind, c.object)
            ]
            decoded = [json.loads(x) for x in lines]
            assert [
                (d["type"], d["object"]["metadata"]["name"], d["resourceVersion"]) for d in decoded
            ] == want, (who, kinds)
            assert upto == store.resource_version
    # from the middle: only what came after
    mid = store.resource_version - 2
    lines, _ = feed.read(mid, Principal("agent", "node-b"), None) or ([], 0)
    assert [json.loads(x)["type"] for x in lines] == ["DELETED"]


def test_a_stream_older_than_the_ring_reads_the_store_and_the_ring_stays_bounded(
    store: Store,
) -> None:
    feed = ChangeFeed(store, capacity=40)
    for i in range(120):
        store.create({"kind": "Session", "metadata": {"name": f"s{i}"}, "spec": {"app": "demo"}})
        if i % 10 == 9:
            asyncio.run(fill(feed))
    assert feed.rv == store.resource_version
    admin = Principal("admin", "admin")
    assert feed.read(0, admin, None) is None  # behind the ring: the caller reads the store
    got = feed.read(store.resource_version - 5, admin, None)
    assert got is not None and len(got[0]) == 5
    assert len(feed._entries) <= 50  # capacity plus a quarter before a trim


def test_a_limit_stops_at_the_last_line_returned(store: Store) -> None:
    feed = ChangeFeed(store)
    for i in range(10):
        store.create({"kind": "Session", "metadata": {"name": f"s{i}"}, "spec": {"app": "demo"}})
    asyncio.run(fill(feed))
    lines, upto = feed.read(0, Principal("app", "demo"), None, limit=4) or ([], 0)
    assert len(lines) == 4 and upto == json.loads(lines[-1])["resourceVersion"]
    rest, end = feed.read(upto, Principal("app", "demo"), None) or ([], 0)
    assert len(rest) == 6 and end == store.resource_version


def test_a_commit_wakes_the_streams_that_may_see_it_and_no_other(store: Store) -> None:
    """A Placement bound to node-a wakes node-a's agent stream and the admin's, not
    node-b's; the wake-ups cost one read of the log for all of them."""

    async def scenario() -> dict[str, bool]:
        feed = ChangeFeed(store)
        feed.attach(asyncio.get_running_loop())
        since = store.resource_version
        woke: dict[str, bool] = {}

        async def stream(who: Principal) -> None:
            t = asyncio.get_running_loop().time()
            await feed.wait(who, since, timeout=1.0)
            woke[f"{who.role}/{who.name}"] = asyncio.get_running_loop().time() - t < 0.9

        waiters = [
            asyncio.create_task(stream(w)) for w in (Principal("admin", "admin"), *PRINCIPALS[3:])
        ]
        await asyncio.sleep(0.05)  # all of them waiting
        await asyncio.to_thread(
            store.create,
            {"kind": "Placement", "metadata": {"name": "p"}, "spec": {"node": "node-a"}},
        )
        await asyncio.gather(*waiters)
        store.unsubscribe(feed._from_thread)
        assert feed.reads == 1
        return woke

    woke = asyncio.run(scenario())
    assert woke == {"admin/admin": True, "agent/node-a": True, "agent/node-b": False}


def test_an_agent_behind_the_ring_reads_only_its_own_changes_from_the_store(
    store: Store,
) -> None:
    """Its stream reads its node's changes by the log's node index, then goes on from
    where the log is: the other changes are never read for it (1,000 agents behind the
    ring once read every change each, and decoded it, to keep their own)."""
    import time
    from types import SimpleNamespace

    from controller.api.objects import _stream

    feed = ChangeFeed(store, capacity=10)
    store.create({"kind": "Provider", "metadata": {"name": "node-a"}, "spec": {}})
    for i in range(60):  # node-a's among many others'
        node = "node-a" if i % 20 == 0 else "node-b"
        store.create({"kind": "Placement", "metadata": {"name": f"p{i}"}, "spec": {"node": node}})
    whole_log_reads: list[int] = []
    real_changes = store.changes

    def counting(since: int, limit: int = 1000) -> list[Any]:
        whole_log_reads.append(since)
        return real_changes(since, limit)

    async def body() -> list[dict[str, Any]]:
        await fill(feed)
        feed.store.subscribe(feed._from_thread)
        store.changes = counting  # type: ignore[method-assign]
        agent = Principal("agent", "node-a")
        d = SimpleNamespace(store=store, feed=feed)
        out = [json.loads(x) async for x in _stream(d, agent, 0, None, time.monotonic() + 0.5)]  # type: ignore[arg-type]
        return out

    events = asyncio.run(body())
    names = [e["object"]["metadata"]["name"] for e in events if e["object"]]
    assert names == ["node-a", "p0", "p20", "p40"]
    assert (
        events[-1]["type"] == "BOOKMARK" and events[-1]["resourceVersion"] == store.resource_version
    )
    assert whole_log_reads == []


def test_lines_are_made_from_the_stored_text_and_listeners_get_only_their_kinds(
    store: Store,
) -> None:
    """The ring's line of a change is byte for byte ``line`` of the decoded change (it
    is made from the log's text, with no decode and re-encode); a listener gets the
    changes of the kinds it asked for, decoded, in order."""
    feed = ChangeFeed(store)
    got: dict[str, list[tuple[str, str, int]]] = {"providers": [], "placements": []}
    feed.listen(
        lambda b: got["providers"].extend((c.kind, c.name, c.rv) for c in b or []), ["Provider"]
    )
    feed.listen(
        lambda b: got["placements"].extend(
            (c.kind, c.object["spec"].get("node", ""), c.rv) for c in b or []
        ),
        ("Placement",),
    )
    for obj in objects():
        store.create(obj)
    store.update_status("Placement", "p2", {"state": "Running", "note": "ünïcode"})
    store.delete("Placement", "p3")
    asyncio.run(fill(feed))
    changes = store.changes(0)
    lines, _ = feed.read(0, Principal("admin", "admin"), None) or ([], 0)
    assert lines == [
        line({"type": c.type, "object": c.object, "resourceVersion": c.rv}) for c in changes
    ]
    assert got["providers"] == [(c.kind, c.name, c.rv) for c in changes if c.kind == "Provider"]
    assert got["placements"] == [
        (c.kind, c.object["spec"].get("node", ""), c.rv) for c in changes if c.kind == "Placement"
    ]


def test_commits_the_loop_has_not_looked_at_yet_wake_it_once(store: Store) -> None:
    """A burst of commits made before the loop runs again (the reconcile workers commit
    hundreds of times a second) is one wake-up of the loop, and the ring still reads
    up to the last of them."""

    async def body() -> tuple[int, int]:
        feed = ChangeFeed(store)
        feed.attach(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        before = feed.wakeups
        for i in range(20):  # the loop does not run in between: the commits pile up
            store.create({"kind": "App", "metadata": {"name": f"burst{i}"}, "spec": {}})
        for _ in range(500):  # bounded: 500 × 10 ms
            if feed.rv == store.resource_version:
                break
            await asyncio.sleep(0.01)
        store.unsubscribe(feed._from_thread)
        return feed.wakeups - before, feed.rv

    wakeups, rv = asyncio.run(body())
    assert wakeups == 1
    assert rv == store.resource_version
