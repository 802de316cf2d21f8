"""The hub stays responsive while its reconcilers work on a burst of mixed objects.

A burst of Sessions with Apps, Priorities and a policy keeps every worker busy;
API reads must still answer promptly and SIGTERM must still stop the hub. (The
lock-order deadlock once seen in such a burst is pinned down precisely in
tests/test_reconcile_engine.py; this is the whole-hub view of the same promise.)
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx

from tests.conftest import HubProcess

IMAGE = "sha3-256:" + "c" * 64


def burst(round_: int) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "gu/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "p"},
            "spec": {"apps": [f"app{i}" for i in range(5)], "allowImages": [IMAGE]},
        }
    ]
    for i in range(5):
        objs.append(
            {
                "apiVersion": "gu/v1",
                "kind": "App",
                "metadata": {"name": f"app{i}"},
                "spec": {"description": str(round_)},
            }
        )
        objs.append(
            {
                "apiVersion": "gu/v1",
                "kind": "Priority",
                "metadata": {"name": f"prio{i}"},
                "spec": {"value": i + round_},
            }
        )
    for i in range(25):
        objs.append(
            {
                "apiVersion": "gu/v1",
                "kind": "Session",
                "metadata": {"name": f"s{i}"},
                "spec": {
                    "app": f"app{i % 5}",
                    "priority": f"prio{i % 5}",
                    "providers": {"count": 1 + round_ % 2},
                    "workload": {"runtime": "native", "image": {"hash": IMAGE}, "command": ["x"]},
                },
            }
        )
    return objs


def test_a_burst_of_mixed_objects_leaves_the_hub_responsive(hub: HubProcess) -> None:
    client = hub.client()
    for round_ in range(4):
        client.apply(burst(round_))
    token = client.token()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        t = time.perf_counter()
        resp = httpx.get(
            hub.url + "/v1/sessions", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert resp.status_code == 200
        assert time.perf_counter() - t < 5, "the API hung while reconcilers worked"
        sessions = resp.json()["items"]
        if all(
            s["status"].get("observedGeneration") == s["metadata"]["generation"] for s in sessions
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the reconcilers never caught up with the burst")
    started = time.monotonic()
    assert hub.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 12
