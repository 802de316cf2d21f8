"""One SQLite file written by several processes (the hub's API and its engine process):
rvs taken in turn, commits heard across processes, compaction seen by every reader.
Real processes (``multiprocessing``, spawned), a real file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from controller.store import Gone, SQLiteStore
from controller.store.notify import POLL_SECONDS
from tests.helpers import wait_for

SPAWN = multiprocessing.get_context("spawn")


def prio(name: str) -> dict:
    return {"kind": "Priority", "metadata": {"name": name}, "spec": {"value": 1}}


def write_many(path: str, prefix: str, n: int, grouped: int) -> None:
    """(A child process.) ``n`` creates, ``grouped`` of them to a transaction."""
    store = SQLiteStore(path, shared=True)
    for i in range(0, n, grouped):
        with store.transaction():
            for j in range(i, min(i + grouped, n)):
                store.create(prio(f"{prefix}{j}"))
    store.close()


def record_one(path: str) -> None:
    """(A child process.) One event, recorded outside any transaction of the caller's (as
    the API records an agent's enrolment)."""
    store = SQLiteStore(path, shared=True)
    store.record_event("Priority", "held", "Seen", "by another process")
    store.close()


def test_writers_in_several_processes_take_every_rv_once_and_hear_each_other(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "hub.db")
    here = SQLiteStore(path, shared=True)
    heard: list[int] = []
    got = threading.Event()
    total = 3 * 300

    def listener(rv: int) -> None:
        heard.append(rv)
        if rv >= total:
            got.set()

    here.subscribe(listener)
    children = [
        SPAWN.Process(target=write_many, args=(path, prefix, 300, grouped))
        for prefix, grouped in (("a", 1), ("b", 7))
    ]
    for child in children:
        child.start()
    for i in range(300):  # meanwhile, here too
        here.create(prio(f"c{i}"))
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert got.wait(10), f"heard up to {max(heard, default=0)} of {total}"
    rvs = [c.rv for c in here.changes(0, limit=10_000)]
    assert rvs == list(range(1, total + 1))  # each rv once, none skipped
    assert here.resource_version == total
    assert len(here.names("Priority")) == total
    here.close()
    assert not list(Path(path + ".peers").glob("*.sock"))  # each process removed its own


def hold_a_peer_socket(path: str, ready: Any) -> None:
    """(A child process.) Joins the file's peers, then waits to be killed."""
    SQLiteStore(path, shared=True)
    ready.set()
    time.sleep(120)


def test_a_peer_killed_with_minus_9_is_dropped_at_the_next_announce(tmp_path: Path) -> None:
    path = str(tmp_path / "hub.db")
    ready = SPAWN.Event()
    child = SPAWN.Process(target=hold_a_peer_socket, args=(path, ready))
    child.start()
    assert ready.wait(30)
    here = SQLiteStore(path, shared=True)
    theirs = Path(path + ".peers") / f"{child.pid}.sock"
    assert theirs.exists()
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    here.create(prio("after"))  # its announce finds nobody listening there
    assert not theirs.exists()
    here.close()


def test_a_reader_behind_another_process_s_compaction_is_told_to_relist(tmp_path: Path) -> None:
    path = str(tmp_path / "hub.db")
    reader = SQLiteStore(path, shared=True)
    reader.create(prio("first"))
    child = SPAWN.Process(target=write_many, args=(path, "x", 400, 50))
    # the child's store keeps the default limit; compaction is forced below instead
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    compactor = SQLiteStore(path, shared=True, changelog_limit=100, compact_chunk=1000)
    compactor.create(prio("last"))  # its commit compacts the log to the newest 50
    last = compactor.resource_version
    compactor.close()
    wait_for(lambda: reader.resource_version == last, timeout=10, what="the last commit heard")
    with pytest.raises(Gone):
        reader.changes(1)  # this process never compacted: the file says what is gone
    newest = reader.changes(reader.resource_version - 10)
    assert len(newest) == 10
    reader.close()


def test_a_commit_is_heard_even_if_the_wake_up_datagram_is_lost(tmp_path: Path) -> None:
    """The receiver looks at the file every ``POLL_SECONDS`` anyway (a fault the kernel
    causes only under a full socket buffer: the datagram is dropped here by hand)."""
    path = str(tmp_path / "hub.db")
    here = SQLiteStore(path, shared=True)
    heard = threading.Event()
    here.subscribe(lambda rv: heard.set())
    other = SQLiteStore(path, shared=True)
    assert other._peers is not None
    other._peers._peers_mtime = -2  # (the list is refreshed: then emptied below)
    other._peers._current_peers()
    other._peers._peers = []
    other._peers._peers_mtime = other._peers.dir.stat().st_mtime_ns
    other._peers._listed_at = float("inf")  # (nor listed again by the clock)
    other.create(prio("quiet"))
    assert heard.wait(POLL_SECONDS * 3)
    assert here.resource_version == 1
    other.close()
    here.close()
    # (a socket path of a process that is gone does not stop a new store from starting)
    stale = Path(path + ".peers") / f"{os.getpid()}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(stale))
    s.close()
    SQLiteStore(path, shared=True).close()


def test_a_writer_waiting_in_another_process_is_known_to_the_one_holding_the_lock(
    tmp_path: Path,
) -> None:
    """The engine's process ends a group commit early when the API's process waits for
    the writer lock (``Store.writer_waiting``): the waiter says so as it starts to wait."""
    path = str(tmp_path / "hub.db")
    here = SQLiteStore(path, shared=True)
    child = SPAWN.Process(target=write_many, args=(path, "w", 1, 1))
    with here.transaction():
        here.create(prio("held"))
        assert not here.writer_waiting()
        child.start()
        wait_for(here.writer_waiting, timeout=30, what="the other process waiting")
        assert child.exitcode is None  # (it cannot write while this transaction is open)
    assert not here.writer_waiting()  # this commit let it in
    child.join(timeout=30)
    assert child.exitcode == 0
    wait_for(lambda: here.resource_version == 2, timeout=10, what="its commit heard")
    assert here.names("Priority") == ["held", "w0"]
    here.close()


def test_an_event_recorded_outside_a_transaction_takes_the_writer_lock_in_turn(
    tmp_path: Path,
) -> None:
    """An event written with no transaction of the caller's still waits for the writer
    lock of every process (and says so), rather than for SQLite's own busy polling."""
    path = str(tmp_path / "hub.db")
    here = SQLiteStore(path, shared=True)
    child = SPAWN.Process(target=record_one, args=(path,))
    with here.transaction():
        here.create(prio("held"))
        child.start()
        wait_for(here.writer_waiting, timeout=30, what="the event's writer waiting")
    child.join(timeout=30)
    assert child.exitcode == 0
    assert [e.message for e in here.events("Priority", "held")] == ["by another process"]
    here.close()
