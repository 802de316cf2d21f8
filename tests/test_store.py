"""The store: generations, no-op writes, optimistic concurrency, atomic apply, the change feed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from controller.store import AlreadyExists, Conflict, Gone, NotFound, SQLiteStore, Store
from specs.selectors import parse_selector


def prio(name: str, value: int = 1, **labels: str) -> dict:
    return {
        "kind": "Priority",
        "metadata": {"name": name, "labels": labels},
        "spec": {"value": value},
    }


def change_rows(store: Store) -> int:
    """Rows in the change log, read behind the store's back."""
    if isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path) as db:
            return int(db.execute("SELECT COUNT(*) FROM changes").fetchone()[0])
    return int(store._read("SELECT count(*) FROM gu_changes")[0][0])  # type: ignore[attr-defined]


def event_rows(store: Store) -> int:
    if isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path) as db:
            return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    return int(store._read("SELECT count(*) FROM gu_events")[0][0])  # type: ignore[attr-defined]


def test_every_backend_satisfies_the_store_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_reapplying_unchanged_objects_writes_nothing(store: Store) -> None:
    store.apply([prio("a"), prio("b")], apply_set="s")
    rv = store.resource_version
    results = store.apply([prio("a"), prio("b")], apply_set="s")
    assert [r.action for r in results] == ["unchanged", "unchanged"]
    assert store.resource_version == rv
    assert len(store.changes(0)) == 2


def test_generation_moves_only_when_spec_changes(store: Store) -> None:
    store.apply([prio("a", 1)])
    store.apply([prio("a", 1, team="x")])  # labels only
    assert store.get("Priority", "a")["metadata"]["generation"] == 1
    store.apply([prio("a", 2, team="x")])
    assert store.get("Priority", "a")["metadata"]["generation"] == 2
    store.update_status("Priority", "a", {"observedGeneration": 2})
    assert store.get("Priority", "a")["metadata"]["generation"] == 2


def test_equal_status_write_is_a_no_op(store: Store) -> None:
    store.apply([prio("a")])
    store.update_status("Priority", "a", {"observedGeneration": 1})
    rv = store.resource_version
    store.update_status("Priority", "a", {"observedGeneration": 1})
    assert store.resource_version == rv


def test_stale_resource_version_is_a_conflict(store: Store) -> None:
    store.apply([prio("a")])
    old = store.get("Priority", "a")["metadata"]["resourceVersion"]
    store.apply([prio("a", 5)])
    with pytest.raises(Conflict, match="read it again"):
        store.update_status("Priority", "a", {"x": 1}, expected_rv=old)


def test_apply_is_all_or_nothing(store: Store) -> None:
    class Boom(Exception):
        pass

    def finalizers(kind: str) -> list[str]:
        if kind == "Session":
            raise Boom
        return []

    bad = {"kind": "Session", "metadata": {"name": "s"}, "spec": {}}
    with pytest.raises(Boom):
        store.apply([prio("a"), bad], finalizers=finalizers)
    assert store.count() == 0
    assert store.resource_version == 0


def test_dry_run_reports_and_writes_nothing(store: Store) -> None:
    results = store.apply([prio("a")], dry_run=True)
    assert results[0].action == "created"
    assert store.count() == 0 and store.resource_version == 0


def test_prune_deletes_only_objects_of_the_same_apply_set(store: Store) -> None:
    store.apply([prio("a"), prio("b")], apply_set="one")
    store.apply([prio("c")], apply_set="two")
    results = store.apply([prio("a")], apply_set="one", prune=True)
    assert [(r.name, r.action) for r in results] == [("a", "unchanged"), ("b", "pruned")]
    assert {o["metadata"]["name"] for o in store.list("Priority")} == {"a", "c"}


def test_finalizers_hold_deletion_until_removed(store: Store) -> None:
    store.apply([prio("a")], finalizers=lambda kind: ["gu/test"])
    marked = store.delete("Priority", "a")
    assert marked["metadata"]["deletionTimestamp"]
    assert store.get("Priority", "a")
    store.set_finalizers("Priority", "a", [])
    with pytest.raises(NotFound):
        store.get("Priority", "a")
    assert store.changes(0)[-1].type == "DELETED"


def test_change_feed_replays_in_order_and_reports_compaction(
    backend: Callable[..., Store], tmp_path: Path
) -> None:
    store = backend(tmp_path, changelog_limit=10)
    for i in range(30):
        store.apply([prio(f"p{i}")])
    recent = store.changes(store.resource_version - 3)
    assert [c.rv for c in recent] == [28, 29, 30]
    with pytest.raises(Gone):
        store.changes(1)


def test_state_survives_reopen(backend: Callable[..., Store], tmp_path: Path) -> None:
    store = backend(tmp_path)
    store.apply([prio("a", 7)])
    store.close()
    again = backend(tmp_path)
    assert again.get("Priority", "a")["spec"] == {"value": 7}
    assert again.resource_version == 1
    if isinstance(again, SQLiteStore):
        assert again.integrity_check() == "ok"


def test_label_selector() -> None:
    assert parse_selector("a=b, c") == {"a": "b", "c": None}
    assert parse_selector(None) == {}


def test_list_filters_by_labels(store: Store) -> None:
    store.apply([prio("a", team="x"), prio("b", team="y"), prio("c")])
    assert [o["metadata"]["name"] for o in store.list("Priority", {"team": "x"})] == ["a"]
    assert [o["metadata"]["name"] for o in store.list("Priority", {"team": None})] == ["a", "b"]


@pytest.mark.parametrize("path", ["$.session", "$.workload.image.hash", "$.app"])
def test_hot_spec_lookups_use_an_index_not_a_scan(store: Store, path: str) -> None:
    store.apply(
        [
            {"kind": "Placement", "metadata": {"name": f"p{i}"},
             "spec": {"session": f"s{i}", "app": f"a{i % 50}",
                      "workload": {"image": {"hash": f"h{i % 20}"}}}}
            for i in range(2000)
        ]
    )  # fmt: skip
    if not isinstance(store, SQLiteStore):  # PostgreSQL plans by statistics
        store._exec("ANALYZE gu_objects")  # type: ignore[attr-defined]
    plan = store.list_where_plan("Placement", path)  # type: ignore[attr-defined]
    if isinstance(store, SQLiteStore):
        assert "USING INDEX objects_spec_" in plan, plan
        assert "SCAN" not in plan, plan
    else:
        assert "gu_objects_spec_" in plan and "Seq Scan" not in plan, plan


def test_list_where_finds_by_an_indexed_and_an_unindexed_path(store: Store) -> None:
    store.apply([prio("a", 1), prio("b", 2)])
    store.create({"kind": "Session", "metadata": {"name": "s"}, "spec": {"app": "x", "n": 2}})
    assert [o["metadata"]["name"] for o in store.list_where("Session", "$.app", "x")] == ["s"]
    assert [o["metadata"]["name"] for o in store.list_where("Priority", "$.value", 2)] == ["b"]
    with pytest.raises(ValueError, match="must look like"):
        store.list_where("Session", "$.app') OR 1=1 --", "x")


def test_lookups_by_spec_follow_spec_writes_and_status_writes_leave_the_spec_alone(
    store: Store,
) -> None:
    """A status write keeps the row's spec (and on SQLite sends no spec: the spec's
    expression indexes stay as they are); a spec write moves what lookups find."""

    def on(node: str) -> list[str]:
        return [o["metadata"]["name"] for o in store.list_where("Placement", "$.node", node)]

    store.create({"kind": "Placement", "metadata": {"name": "p"}, "spec": {"node": "a"}})
    sent: list[str] = []
    if isinstance(store, SQLiteStore):
        store._db.set_trace_callback(sent.append)
    store.update_status("Placement", "p", {"state": "Running"})
    if isinstance(store, SQLiteStore):
        store._db.set_trace_callback(None)
        (update,) = [s for s in sent if s.startswith("UPDATE objects")]
        assert "spec=" not in update and "status=" in update
    assert on("a") == ["p"]
    assert store.get("Placement", "p")["spec"] == {"node": "a"}
    store.replace({"kind": "Placement", "metadata": {"name": "p"}, "spec": {"node": "b"}})
    assert (on("a"), on("b")) == ([], ["p"])
    got = store.get("Placement", "p")
    assert got["status"] == {"state": "Running"} and got["metadata"]["generation"] == 2


def test_creating_what_exists_is_refused_and_the_transaction_goes_on(store: Store) -> None:
    store.create(prio("a", 1))
    rv = store.resource_version
    with store.transaction():
        with pytest.raises(AlreadyExists, match="Priority/a already exists"):
            store.create(prio("a", 2))
        store.create(prio("b", 3))  # (the same transaction, after the refusal)
    assert store.get("Priority", "a")["spec"]["value"] == 1
    assert [(c.type, c.name) for c in store.changes(rv)] == [("ADDED", "b")]
    assert store.resource_version == rv + 1
    store.create({**prio("c"), "metadata": {"name": "c", "finalizers": ["x"]}})
    store.delete("Priority", "c")  # (still there until its finalizer goes)
    with pytest.raises(AlreadyExists):
        store.create(prio("c"))


def test_names_lists_a_kind_without_the_objects(store: Store) -> None:
    store.apply([prio("b"), prio("a")])
    store.create({"kind": "Session", "metadata": {"name": "s"}, "spec": {}})
    assert store.names("Priority") == ["a", "b"]
    assert store.names("Session") == ["s"]
    assert store.names("App") == []


def test_compaction_trims_the_log_a_chunk_per_commit(
    backend: Callable[..., Store], tmp_path: Path
) -> None:
    store = backend(tmp_path, changelog_limit=10, compact_chunk=2)
    counts = []
    for i in range(16):
        store.apply([prio(f"p{i}")])
        counts.append(change_rows(store))
    # up to the limit (11 rows at rv 11) nothing goes; past it the log is trimmed towards
    # half the limit two rows per commit (12 → 10, 9, 8), then grows again
    assert counts == [*range(1, 12), 10, 9, 8, 9, 10]
    with pytest.raises(Gone):
        store.changes(0)
    assert [c.rv for c in store.changes(store.resource_version - 2)] == [15, 16]


def test_readers_do_not_wait_behind_a_writer(store: Store) -> None:
    """A transaction in progress (the lock held, as through an fsync) blocks no reader
    on another thread: it reads the last committed state, and the committed rv."""
    import threading

    store.apply([prio("old")])
    rv0 = store.resource_version
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.transaction():
            store.apply([prio("new")])
            # read your own writes on the writer's connection
            assert store.try_get("Priority", "new") is not None
            inside.set()
            assert release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert inside.wait(10)
        seen: dict[str, object] = {}

        def reader() -> None:
            seen["names"] = store.names("Priority")
            seen["new"] = store.try_get("Priority", "new")
            seen["rv"] = store.resource_version
            seen["changes"] = [c.name for c in store.changes(rv0)]

        r = threading.Thread(target=reader)
        r.start()
        r.join(5)
        # it finished while the writer still holds its transaction open
        assert not r.is_alive() and t.is_alive()
        assert seen == {"names": ["old"], "new": None, "rv": rv0, "changes": []}
    finally:
        release.set()
        t.join(10)
    assert store.names("Priority") == ["new", "old"]
    assert store.resource_version > rv0
    assert [c.name for c in store.changes(rv0)] == ["new"]


def test_deleting_objects_removes_their_events_so_event_storage_returns_to_its_size(
    store: Store,
) -> None:
    store.create({"kind": "App", "metadata": {"name": "keep"}, "spec": {}})
    store.record_event("App", "keep", "Made", "stays")
    before = event_rows(store)
    for i in range(300):
        store.create({"kind": "App", "metadata": {"name": f"a{i}"}, "spec": {}})
        for n in range(30):  # more than the per-object cap
            store.record_event("App", f"a{i}", "Tick", f"event {n}")
    assert len(store.events("App", "a0")) == 20  # capped per object
    assert [e.message for e in store.events("App", "a0")] == [f"event {n}" for n in range(10, 30)]
    assert event_rows(store) == before + 300 * 20
    for i in range(300):
        store.delete("App", f"a{i}")
    assert event_rows(store) == before
    assert store.events("App", "a0") == []
    assert [e.message for e in store.events("App", "keep")] == ["stays"]


def test_an_event_that_repeats_the_newest_is_not_recorded_even_inside_its_transaction(
    store: Store,
) -> None:
    store.create({"kind": "App", "metadata": {"name": "a"}, "spec": {}})
    with store.transaction():
        assert store.record_event("App", "a", "Scheduled", "1 of 1", unless_repeated=True)
        # the newest event is this transaction's own, not committed yet: still seen
        assert not store.record_event("App", "a", "Scheduled", "1 of 1", unless_repeated=True)
        assert store.record_event("App", "a", "Scheduled", "0 of 1", unless_repeated=True)
        assert store.record_event("App", "a", "Scheduled", "1 of 1", unless_repeated=True)
    assert not store.record_event("App", "a", "Scheduled", "1 of 1", unless_repeated=True)
    assert store.record_event("App", "a", "Scheduled", "1 of 1")  # (asked to repeat: does)
    assert [e.message for e in store.events("App", "a")] == ["1 of 1", "0 of 1", "1 of 1", "1 of 1"]
    for n in range(25):
        assert store.record_event("App", "a", "Tick", f"{n}", unless_repeated=True)
    assert [e.message for e in store.events("App", "a")] == [f"{n}" for n in range(5, 25)]


def test_node_changes_are_a_nodes_placements_and_provider_by_index(store: Store) -> None:
    store.create({"kind": "Provider", "metadata": {"name": "a"}, "spec": {}})
    store.create({"kind": "Provider", "metadata": {"name": "b"}, "spec": {}})
    store.create({"kind": "Session", "metadata": {"name": "s"}, "spec": {"node": "a"}})
    store.create({"kind": "Placement", "metadata": {"name": "pa"}, "spec": {"node": "a"}})
    store.create({"kind": "Placement", "metadata": {"name": "pb"}, "spec": {"node": "b"}})
    store.create({"kind": "Placement", "metadata": {"name": "pu"}, "spec": {}})  # unbound
    store.update_status("Placement", "pa", {"state": "Running"})
    got = store.node_changes("a", 0)
    assert [(c.kind, c.name, c.type) for c in got] == [
        ("Provider", "a", "ADDED"), ("Placement", "pa", "ADDED"), ("Placement", "pa", "MODIFIED"),
    ]  # fmt: skip
    assert [c.name for c in store.node_changes("a", got[0].rv)] == ["pa", "pa"]
    assert store.node_changes("a", store.resource_version) == []
    if isinstance(store, SQLiteStore):
        plan = (
            store._reader()
            .execute(
                "EXPLAIN QUERY PLAN SELECT * FROM changes WHERE node = ? AND rv > ? ORDER BY rv",
                ("a", 0),
            )
            .fetchall()
        )
        assert "changes_node" in str(plan), plan


def test_node_changes_of_a_compacted_log_are_gone(
    backend: Callable[..., Store], tmp_path: Path
) -> None:
    store = backend(tmp_path, changelog_limit=10)
    for i in range(30):
        store.create({"kind": "Placement", "metadata": {"name": f"p{i}"}, "spec": {"node": "a"}})
    with pytest.raises(Gone):
        store.node_changes("a", 1)
    assert len(store.node_changes("a", store.resource_version - 3)) == 3


def test_a_change_log_from_before_the_node_index_gets_it_filled_in(tmp_path: Path) -> None:
    import sqlite3

    store = SQLiteStore(tmp_path / "hub.db")
    store.create({"kind": "Placement", "metadata": {"name": "p"}, "spec": {"node": "a"}})
    store.close()
    with sqlite3.connect(tmp_path / "hub.db") as db:  # as an older hub left it
        db.execute("DROP INDEX changes_node")
        db.execute("ALTER TABLE changes DROP COLUMN node")
    again = SQLiteStore(tmp_path / "hub.db")
    try:
        assert [c.name for c in again.node_changes("a", 0)] == ["p"]
    finally:
        again.close()


def test_threads_coming_and_going_never_lose_a_connection_under_their_reads(
    tmp_path: Path,
) -> None:
    """Readers on short-lived threads (as asyncio's and anyio's pools make them) while
    others start and end: no read fails, none finds its connection closed under it (a
    connection was once handed down by thread id and closed by a newcomer: a crash)."""
    import threading

    store = SQLiteStore(tmp_path / "hub.db")
    store.create({"kind": "App", "metadata": {"name": "a"}, "spec": {}})
    errors: list[BaseException] = []

    def read_a_while() -> None:
        try:
            for _ in range(30):
                assert store.try_get("App", "a") is not None
                store.changes(0, 10)
        except BaseException as exc:
            errors.append(exc)

    try:
        for _ in range(20):  # 20 waves of 10 threads (bounded)
            wave = [threading.Thread(target=read_a_while) for _ in range(10)]
            for t in wave:
                t.start()
            for t in wave:
                t.join(10)
        assert not errors, errors[:3]
        assert len(store._readers) <= 11  # the ended threads' connections were closed
    finally:
        store.close()


def test_a_failed_savepoint_undoes_its_own_writes_and_keeps_the_rest(store: Store) -> None:
    """Nested ``transaction(savepoint=True)``: an exception leaving it undoes what it
    wrote, the outer transaction goes on and commits the rest, and the rvs it took are
    handed out again (the change log has no gap and no undone change)."""
    start = store.resource_version
    with store.transaction():
        store.create(prio("before"))
        with pytest.raises(RuntimeError), store.transaction(savepoint=True):
            store.create(prio("undone"))
            store.update_status("Priority", "before", {"note": "undone"})
            raise RuntimeError("this part fails")
        with store.transaction(savepoint=True):
            store.create(prio("after"))
    assert [p["metadata"]["name"] for p in store.list("Priority")] == ["after", "before"]
    assert store.get("Priority", "before")["status"] == {}
    assert [(c.rv, c.name) for c in store.changes(start)] == [
        (start + 1, "before"),
        (start + 2, "after"),
    ]
    assert store.resource_version == start + 2


def test_savepoints_are_taken_at_a_blocks_first_write(store: Store) -> None:
    """Savepoints are lazy (``types.Savepoints``): a block that only reads and then
    raises leaves the outer transaction whole; an outer block that wrote nothing itself
    still undoes what a block inside it wrote before it raised; events are undone with
    their block."""
    start = store.resource_version
    with store.transaction():
        store.create(prio("kept"))
        with pytest.raises(RuntimeError), store.transaction(savepoint=True):
            assert store.get("Priority", "kept")["spec"]["value"] == 1  # reads only
            raise RuntimeError("fails before writing")
        with pytest.raises(RuntimeError), store.transaction(savepoint=True):
            store.get("Priority", "kept")  # outer: reads, no write of its own
            with store.transaction(savepoint=True):
                store.create(prio("inner"))
                store.record_event("Priority", "kept", "Inner", "undone with its block")
            raise RuntimeError("the outer block fails after the inner one ended well")
        with store.transaction(savepoint=True):
            store.get("Priority", "kept")
            with store.transaction(savepoint=True):
                store.create(prio("nested"))
    assert [p["metadata"]["name"] for p in store.list("Priority")] == ["kept", "nested"]
    assert [e.reason for e in store.events("Priority", "kept")] == []
    assert [(c.rv, c.name) for c in store.changes(start)] == [
        (start + 1, "kept"),
        (start + 2, "nested"),
    ]


def test_a_block_that_writes_nothing_sends_no_savepoint(tmp_path: Path) -> None:
    """The statements a read-only ``transaction(savepoint=True)`` costs: none beyond
    its reads (it was a SAVEPOINT and a RELEASE each: two round trips on PostgreSQL)."""
    store = SQLiteStore(tmp_path / "hub.db")
    try:
        store.create(prio("a"))
        sent: list[str] = []
        store._db.set_trace_callback(sent.append)
        with store.transaction():
            for _ in range(5):
                with store.transaction(savepoint=True):
                    store.get("Priority", "a")
            with store.transaction(savepoint=True):
                store.update_status("Priority", "a", {"note": "x"})
        store._db.set_trace_callback(None)
        savepoints = [s for s in sent if "SAVEPOINT" in s.upper()]
        assert savepoints == ["SAVEPOINT gu1", "RELEASE SAVEPOINT gu1"], sent
    finally:
        store.close()


def test_get_many_reads_the_named_objects_in_one_go(store: Store) -> None:
    """``get_many``: the named objects that exist, sorted by name (more names than one
    statement binds, too), and inside a transaction its own writes."""
    for i in range(600):
        store.create(prio(f"p{i:03d}", i))
    names = [f"p{i:03d}" for i in range(599, -1, -2)] + ["missing"]
    got = store.get_many("Priority", names)
    assert [o["metadata"]["name"] for o in got] == sorted(n for n in names if n != "missing")
    assert got[0]["spec"]["value"] == 1
    assert store.get_many("App", ["p001"]) == []
    with store.transaction():
        store.create(prio("late", 7))
        assert [o["spec"]["value"] for o in store.get_many("Priority", ["late", "p002"])] == [7, 2]


def test_an_apply_that_names_an_object_twice_sees_its_own_first_write(store: Store) -> None:
    """The apply reads what is stored of a batch in one query a kind; an object named
    again later in the same batch is read again (the first write is what it sees)."""
    results = store.apply([prio("twice", 1), prio("twice", 2), prio("other", 3)])
    assert [r.action for r in results] == ["created", "configured", "created"]
    assert store.get("Priority", "twice")["spec"]["value"] == 2
    again = store.apply([prio("twice", 2), prio("other", 4)])
    assert [r.action for r in again] == ["unchanged", "configured"]
