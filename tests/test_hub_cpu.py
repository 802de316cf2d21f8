"""``gu hub`` keeps its threads on one CPU, and its engine's process on another, unless
``--all-cpus`` (controller.hub.pin_to_one_cpu)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import make_hub
from tests.helpers import engine_pid, wait_for


def allowed_lists(pid: int) -> list[str]:
    """``Cpus_allowed_list`` of every thread of ``pid`` (e.g. ``"1"``, ``"0-1"``)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for row in (task / "status").read_text().splitlines():
            if row.startswith("Cpus_allowed_list:"):
                out.append(row.split(":", 1)[1].strip())
    return out


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="one CPU (or not Linux): there is nothing to choose",
)
def test_the_hub_keeps_its_threads_on_one_cpu_unless_told_otherwise(tmp_path: Path) -> None:
    mine = allowed_lists(os.getpid())[0]
    one = make_hub(tmp_path / "one")
    every = make_hub(tmp_path / "every", "--all-cpus")
    one.start()
    every.start()
    try:
        assert one.proc is not None and every.proc is not None
        pinned = allowed_lists(one.proc.pid)
        assert len(pinned) >= 4, pinned  # the API's loop, reconcile workers, feeds...
        assert len(set(pinned)) == 1 and pinned[0].isdigit(), pinned  # all on one CPU
        assert int(pinned[0]) in os.sched_getaffinity(0)
        assert f"event=hub_cpu cpu={pinned[0]}" in one.logs()
        free = allowed_lists(every.proc.pid)
        assert set(free) == {mine}, (free, mine)
        assert "event=hub_cpu" not in every.logs()
        # the engine's process (the default here, with two CPUs or more): another CPU
        one_pid, every_pid = one.proc.pid, every.proc.pid
        engine = wait_for(lambda: engine_pid(one_pid), timeout=20, what="the engine process")
        apart = allowed_lists(engine)
        assert len(set(apart)) == 1 and apart[0].isdigit(), apart
        assert apart[0] != pinned[0] and int(apart[0]) in os.sched_getaffinity(0)
        assert f"event=engine_process_started pid={engine} cpu={apart[0]}" in one.logs()
        roaming = wait_for(lambda: engine_pid(every_pid), timeout=20, what="its engine process")
        assert set(allowed_lists(roaming)) == {mine}
    finally:
        one.stop()
        every.stop()
