"""The hub's copies of workload output: replaced per upload, the run before kept, swept with
their Placement."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.logs import PlacementLogs
from tests.conftest import make_hub
from tests.helpers import wait_for


def test_an_upload_replaces_the_copy_and_a_new_run_keeps_the_one_before(tmp_path: Path) -> None:
    logs = PlacementLogs(tmp_path / "logs")
    assert logs.read("p1") == "" and logs.read("p1", previous=True) == ""
    logs.store("p1", b"run 0, part\n", run=0)
    logs.store("p1", b"run 0, whole\n", run=0)  # same run: replaced, nothing kept aside
    assert logs.read("p1") == "run 0, whole\n"
    assert logs.read("p1", previous=True) == ""
    logs.store("p1", b"run 1\n", run=1)
    assert logs.read("p1") == "run 1\n"
    assert logs.read("p1", previous=True) == "run 0, whole\n"
    logs.store("p2", b"no run number\n", run=None)
    assert logs.read("p2") == "no run number\n"


def test_sweep_removes_only_the_files_of_placements_that_are_gone(tmp_path: Path) -> None:
    logs = PlacementLogs(tmp_path / "logs")
    for name in ("kept", "gone"):
        logs.store(name, b"0\n", run=0)
        logs.store(name, b"1\n", run=1)  # .log, .run and previous/.log each
    (logs.root / "gone.tmp").write_bytes(b"an upload cut short")
    (logs.root / "notes.txt").write_text("not ours: left alone")
    live = {"kept"}
    assert logs.sweep(live.__contains__) == 4
    assert sorted(p.name for p in logs.root.iterdir()) == [
        "kept.log",
        "kept.run",
        "notes.txt",
        "previous",
    ]
    assert [p.name for p in (logs.root / "previous").iterdir()] == ["kept.log"]
    assert logs.read("kept") == "1\n" and logs.read("kept", previous=True) == "0\n"
    assert logs.sweep(live.__contains__) == 0  # converged: nothing more to do


def test_sweep_of_a_hub_that_never_stored_logs_does_nothing(tmp_path: Path) -> None:
    assert PlacementLogs(tmp_path / "no-such-dir").sweep(lambda _: False) == 0


def test_sweep_every_runs_at_once_then_stops_when_told(tmp_path: Path) -> None:
    logs = PlacementLogs(tmp_path / "logs")
    logs.store("gone", b"x\n", run=0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(logs.sweep_every(lambda _: False, stop, interval=3600))
        for _ in range(200):  # bounded: 200 × 10 ms
            if not logs.path("gone").exists():
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)  # wakes from its hour-long wait at once

    asyncio.run(scenario())
    assert not logs.path("gone").exists() and not (logs.root / "gone.run").exists()


def test_a_starting_hub_removes_the_logs_of_placements_it_does_not_have(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    stray = hub.state_dir / "logs" / "placement-deleted-while-down.log"
    stray.parent.mkdir(parents=True)
    stray.write_text("output nobody can reach any more\n")
    hub.start()
    try:
        wait_for(lambda: not stray.exists(), timeout=10, what="the stray log swept")
        assert "event=logs_swept files=1" in hub.logs()
    finally:
        hub.stop()


def test_an_upload_is_kept_as_its_tail_while_it_streams() -> None:
    import asyncio

    from starlette.requests import Request

    from controller.api.logs import tail_of

    sent = [bytes([65 + i % 26]) * 65536 for i in range(64)]  # 4 MiB in 64 KiB chunks
    held: list[int] = []

    async def receive() -> dict[str, object]:
        chunk = sent.pop(0)
        held.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(sent)}

    request = Request({"type": "http", "method": "PUT", "headers": []}, receive)
    whole = b"".join(sent)
    tail = asyncio.run(tail_of(request, 1 << 20))
    assert tail == whole[-(1 << 20) :]
    assert sum(held) == len(whole)  # everything was read, but only the tail was kept
