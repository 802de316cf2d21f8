"""A hub killed with SIGKILL in the middle of applies loses no acknowledged write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from controller.client import ApiError, HubUnreachable
from tests.conftest import make_hub


def test_kill_9_during_applies_keeps_every_acknowledged_object(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    hub.start()
    client = hub.client()
    acknowledged: list[str] = []
    stop = threading.Event()

    def apply_loop() -> None:
        for i in range(5000):  # bounded; the kill ends it long before
            if stop.is_set():
                return
            name = f"p{i}"
            obj = {"apiVersion": "gu/v1", "kind": "Priority", "metadata": {"name": name}}
            try:
                client.apply([{**obj, "spec": {"value": i}}])
            except (HubUnreachable, ApiError):
                return
            acknowledged.append(name)

    writer = threading.Thread(target=apply_loop)
    writer.start()
    deadline_count = 50
    for _ in range(200):
        if len(acknowledged) >= deadline_count:
            break
        writer.join(0.05)
    hub.kill()
    stop.set()
    writer.join(10)
    assert len(acknowledged) >= deadline_count

    with sqlite3.connect(hub.state_dir / "hub.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    hub.start()
    try:
        names = {o["metadata"]["name"] for o in hub.client().list("Priority")}
        missing = [n for n in acknowledged if n not in names]
        assert missing == []
    finally:
        hub.stop()
