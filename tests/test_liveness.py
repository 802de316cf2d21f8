"""Provider liveness: usage-only heartbeats live in memory and wake nobody.

The unit tests drive ``controller.liveness.Liveness`` with a fake clock; the
hub tests run the hub's real parts in process (its store, API app, reconcile
engine, heartbeat flusher and liveness task, everything ``gu hub`` runs but
uvicorn) and count what a burst of heartbeats writes and wakes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.enrollment import create_join_token
from controller.hub import Hub, HubSettings
from controller.liveness import Liveness, keep
from controller.reconcilers.placement import ClusterState
from controller.store import Store
from specs.identity import LOGIN_PAYLOAD_TYPE, generate_key, login_body, public_key_str, sign
from tests.test_reconcilers_scheduling import GIB, add_provider

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# ------------------------------------------------------------------ unit


def test_a_lease_expires_once_after_three_periods_and_a_beat_renews_it() -> None:
    clock = Clock()
    live = Liveness(default_period=5.0, clock=clock)
    live.beat("n1", {"cpuPercent": 1.0})
    live.beat("n2", {"cpuPercent": 2.0}, period=1.0)
    clock.advance(2.9)
    assert live.expired() == []
    clock.advance(0.2)  # n2: 3.1 s > 3 × 1 s
    assert live.expired() == ["n2"]
    assert live.expired() == []  # reported once per silence
    clock.advance(12)  # n1: 15.1 s ≥ 3 × 5 s
    assert live.expired() == ["n1"]
    live.beat("n2", {}, period=1.0)
    clock.advance(3.5)
    assert live.expired() == ["n2"]  # silent again: reported again


def test_overlay_serves_live_usage_and_last_seen_on_providers_only() -> None:
    clock = Clock()
    live = Liveness(clock=clock)
    stored = {
        "kind": "Provider",
        "metadata": {"name": "n1"},
        "status": {"lastHeartbeat": "2026-12-01T11:00:00Z", "usage": {"cpuPercent": 9.0}},
    }
    assert live.overlay(stored) is stored  # no lease: as stored
    live.beat("n1", {"cpuPercent": 42.0})
    shown = live.overlay(stored)
    assert shown["status"]["usage"] == {"cpuPercent": 42.0}
    assert shown["status"]["lastHeartbeat"] == "2026-12-01T12:00:00Z"
    assert stored["status"]["usage"] == {"cpuPercent": 9.0}  # a copy: the stored one is kept
    session = {"kind": "Session", "metadata": {"name": "n1"}, "status": {}}
    assert live.overlay(session) is session


def test_a_restarted_hub_counts_silence_from_its_own_start(store: Store) -> None:
    """The checkpoint brings back each provider's last-seen time, and nobody is declared
    gone because the hub was down: silence is measured from the hub's start."""
    clock = Clock()
    before = Liveness(default_period=5.0, clock=clock)
    before.beat("n1", {"cpuPercent": 3.0})
    before.beat("gone", {})
    assert before.checkpoint(store) == 2
    assert before.checkpoint(store) == 0  # nothing beaten since: nothing written
    clock.advance(3600)  # the hub is down for an hour
    after = Liveness(default_period=5.0, clock=clock)
    assert after.load(store, providers=["n1"]) == 1  # "gone" was deleted meanwhile
    assert [k for k, _ in store.meta_items("lease/")] == ["lease/n1"]
    lease = after.lease("n1")
    assert lease is not None and lease.last == T0 and lease.usage == {"cpuPercent": 3.0}
    assert after.overlay({"kind": "Provider", "metadata": {"name": "n1"}, "status": {}})["status"][
        "lastHeartbeat"
    ] == ("2026-12-01T12:00:00Z")
    clock.advance(14)
    assert after.expired() == []
    clock.advance(1.5)
    assert after.expired() == ["n1"]


def test_a_lease_known_only_from_the_store_is_adopted_with_the_same_grace() -> None:
    clock = Clock()
    live = Liveness(default_period=5.0, clock=clock)
    status = {"lastHeartbeat": "2026-12-01T11:00:00Z", "heartbeatSeconds": 2.0}
    lease = live.lease("n1", status)
    assert lease is not None and lease.period == 2.0 and lease.observed == T0
    assert live.lease("n2", {}) is None  # never beaten: no lease


def test_the_scheduler_takes_usage_from_the_lease_table(store: Store) -> None:
    """A usage-only beat writes nothing, but the scheduler still sees free memory shrink."""
    node = add_provider(store, 1, memory_gib=8)
    live = Liveness()
    state = ClusterState(store, liveness=live)
    state.refresh()
    view = state.nodes.get(node)
    assert view is not None and view.free_memory_mib == 8 * 1024
    live.beat(node, {"memoryAvailableBytes": GIB // 2})
    rv = store.resource_version
    state.refresh()
    assert state.nodes.get(node) is view and view.free_memory_mib == 512
    assert store.resource_version == rv


# ------------------------------------------------------------------ the hub


def inventory(cores: int = 4) -> dict[str, Any]:
    return {
        "os": {"name": "Linux", "version": "6.1"},
        "cpu": {"architecture": "x86_64", "bit": [64], "cores": cores, "threads": cores},
        "memoryBytes": 8 * GIB,
        "storageBytes": 100 * GIB,
        "runtimes": ["native"],
    }


def beat_body(n: int, cores: int = 4, period: float = 1.0) -> dict[str, Any]:
    return {
        "inventory": inventory(cores),
        "usage": {
            "cpuPercent": float(n % 100),
            "memoryAvailableBytes": (4 + n % 3) * GIB,
            "storageFreeBytes": 50 * GIB,
            "workloads": 0,
        },
        "period": period,
    }


async def enrol(http: httpx.AsyncClient, join: str) -> tuple[str, str]:
    key = generate_key()
    pub = public_key_str(key)
    chal = (
        await http.post("/v1/auth/challenge", json={"publicKey": pub, "purpose": "enroll"})
    ).json()
    expiry = int(time.time()) + 60
    body = login_body(chal["hubId"], chal["nonce"], "enroll", expiry)
    resp = await http.post(
        "/v1/agents/enroll",
        json={
            "publicKey": pub,
            "nonce": chal["nonce"],
            "expiry": expiry,
            "signature": sign(key, LOGIN_PAYLOAD_TYPE, body),
            "joinToken": join,
            "name": "sim",
        },
    )
    resp.raise_for_status()
    return resp.json()["nodeId"], resp.json()["token"]


async def until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.02)):  # bounded
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ready(hub: Hub, node: str) -> str | None:
    for cond in hub.store.get("Provider", node)["status"].get("conditions") or []:
        if cond["type"] == "Ready":
            return str(cond["status"])
    return None


def idle(hub: Hub) -> bool:
    stats = hub.controller.stats()
    return (
        stats["queue_length"] == 0
        and stats["in_flight"] == 0
        and hub.heartbeats.pending() == 0
        and stats["feed_resource_version"] == hub.store.resource_version
    )


def run_hub(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Hub, httpx.AsyncClient, str], Awaitable[None]],
) -> None:
    """The hub's parts in process (what ``Hub.serve`` runs, minus uvicorn and signals)."""
    monkeypatch.setenv("GU_CONFIG", str(tmp_path / "config.yaml"))
    hub = Hub(HubSettings(state_dir=tmp_path / "hub", heartbeat=1.0, resync_period=3600))
    from controller.api.app import create_app

    async def main() -> None:
        stop = asyncio.Event()
        hub.feed.attach(asyncio.get_running_loop())
        tasks = [
            asyncio.create_task(hub.controller.run(stop)),
            asyncio.create_task(hub.heartbeats.run(stop)),
            asyncio.create_task(
                keep(
                    hub.liveness,
                    hub.store,
                    lambda n: hub.controller.enqueue("Provider", n),
                    stop,
                    sweep=0.05,
                )
            ),
        ]
        transport = httpx.ASGITransport(app=create_app(hub.api_deps()))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://hub") as http:
                join, _ = create_join_token(hub.store)
                await scenario(hub, http, join)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)

    try:
        asyncio.run(main())
    finally:
        hub.store.close()


def test_usage_only_heartbeats_write_no_change_and_wake_no_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        node, token = await enrol(http, join)
        auth = {"Authorization": f"Bearer {token}"}
        (
            await http.post("/v1/agents/heartbeat", json=beat_body(0), headers=auth)
        ).raise_for_status()
        await until(lambda: ready(hub, node) == "True", "the provider to be Ready")
        hub.store.create(  # a Session placed on it: a wake-up would reach it too
            {
                "apiVersion": "gu/v1",
                "kind": "Session",
                "metadata": {"name": "s"},
                "spec": {
                    "app": "demo",
                    "workload": {"runtime": "native", "image": {"hash": "sha3-256:" + "a" * 64}},
                },
            }
        )
        await until(lambda: idle(hub), "the hub to settle")
        for _ in range(20):  # settled: no write for 0.3 s (the first Ready flip may be late)
            rv = hub.store.resource_version
            await asyncio.sleep(0.3)
            if hub.store.resource_version == rv and idle(hub):
                break
        rv, reconciles = hub.store.resource_version, hub.controller.stats()["reconciles"]

        for n in range(1, 51):  # a burst of usage-only beats
            resp = await http.post("/v1/agents/heartbeat", json=beat_body(n), headers=auth)
            resp.raise_for_status()
        await asyncio.sleep(0.5)  # two flush intervals, ten liveness sweeps
        assert hub.store.resource_version == rv, "usage-only heartbeats wrote change rows"
        assert hub.controller.stats()["reconciles"] == reconciles, "and woke reconciles"

        # what users read is live all the same
        shown = (await http.get(f"/v1/providers/{node}", headers=admin(hub))).json()
        assert shown["status"]["usage"]["cpuPercent"] == 50.0
        lease = hub.liveness.lease(node)
        assert lease is not None
        assert shown["status"]["lastHeartbeat"] == lease.last.isoformat().replace("+00:00", "Z")
        peer = (await http.get(f"/peers/{node}", headers=admin(hub))).json()
        assert (
            peer["usage"]["cpuPercent"] == 50.0
            and peer["lastSeen"] == (shown["status"]["lastHeartbeat"])
        )
        cpu = (await http.get(f"/peers/{node}/inf/cpu", headers=admin(hub))).json()
        assert cpu["usage"] == 50.0

        # a beat that changes capacity is a decision: one change row, reconciles run
        resp = await http.post("/v1/agents/heartbeat", json=beat_body(51, cores=8), headers=auth)
        resp.raise_for_status()
        await until(lambda: hub.store.resource_version > rv, "the capacity change to be written")
        await until(lambda: idle(hub), "the hub to settle")
        stored = hub.store.get("Provider", node)["status"]
        assert stored["inventory"]["cpu"]["cores"] == 8
        assert hub.controller.stats()["reconciles"] > reconciles

    run_hub(tmp_path, monkeypatch, scenario)


def test_a_silent_provider_goes_not_ready_and_its_next_beat_brings_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        node, token = await enrol(http, join)
        auth = {"Authorization": f"Bearer {token}"}
        (
            await http.post("/v1/agents/heartbeat", json=beat_body(7), headers=auth)
        ).raise_for_status()
        await until(lambda: ready(hub, node) == "True", "the provider to be Ready")
        flipped = time.monotonic()
        # no more beats: 3 × 1 s later it is NotReady, and its last word is in the store
        await until(lambda: ready(hub, node) == "False", "the provider to go NotReady", 10)
        silent = time.monotonic() - flipped
        assert silent >= 2.5, f"NotReady after {silent:.2f}s of silence, before 3 periods"
        status = hub.store.get("Provider", node)["status"]
        lease = hub.liveness.lease(node)
        assert lease is not None
        assert status["lastHeartbeat"] == lease.last.isoformat().replace("+00:00", "Z")
        assert status["usage"]["cpuPercent"] == 7.0
        (
            await http.post("/v1/agents/heartbeat", json=beat_body(8), headers=auth)
        ).raise_for_status()
        await until(lambda: ready(hub, node) == "True", "the provider to be Ready again")

    run_hub(tmp_path, monkeypatch, scenario)


def admin(hub: Hub) -> dict[str, str]:
    from controller.auth import Principal

    key = next(iter(hub.admin_keys))
    token = hub.auth.make_token(Principal("admin", "admin", key), 60)
    return {"Authorization": f"Bearer {token}"}


def test_an_agent_lists_its_placements_by_index_not_by_reading_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        mine, token = await enrol(http, join)
        other, _ = await enrol(http, join)
        for i, node in enumerate([mine, mine, other]):
            hub.store.create(
                {
                    "kind": "Placement",
                    "metadata": {"name": f"p{i}", "labels": {"gu/session": "s"}},
                    "spec": {"session": "s", "node": node, "app": "demo"},
                }
            )
        listed: list[str] = []
        real_list = hub.store.list

        def spy(kind: str, selector: dict[str, str | None] | None = None) -> list:
            listed.append(kind)
            return real_list(kind, selector)

        monkeypatch.setattr(hub.store, "list", spy)
        auth = {"Authorization": f"Bearer {token}"}
        resp = await http.get("/v1/placements", headers=auth)
        resp.raise_for_status()
        assert [p["metadata"]["name"] for p in resp.json()["items"]] == ["p0", "p1"]
        assert "Placement" not in listed  # read through the $.node index
        resp = await http.get(
            "/v1/placements", params={"labelSelector": "gu/session=x"}, headers=auth
        )
        assert resp.json()["items"] == []
        # an admin's list is the whole kind
        everything = (await http.get("/v1/placements", headers=admin(hub))).json()["items"]
        assert len(everything) == 3 and "Placement" in listed

    run_hub(tmp_path, monkeypatch, scenario)


def test_a_watch_that_skipped_other_kinds_ends_with_a_bookmark_of_how_far_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Placement watch over a run of Session changes (older than the ring: read from
    the store) yields no event, but ends at its deadline with a BOOKMARK at the rv it
    reached, so the next watch starts there instead of reading them all again."""

    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        since = hub.store.resource_version
        hub.feed.capacity = 10  # the ring keeps little: the stream starts from the store
        for i in range(40):
            hub.store.create({"kind": "App", "metadata": {"name": f"a{i}"}, "spec": {}})
        await until(lambda: hub.feed.rv == hub.store.resource_version, "the ring to follow")
        resp = await http.get(
            "/v1/watch",
            params={"kind": "Placement", "resourceVersion": since, "timeout": 1},
            headers=admin(hub),
        )
        events = [json.loads(x) for x in resp.text.splitlines() if x]
        assert events == [
            {"type": "BOOKMARK", "object": None, "resourceVersion": hub.store.resource_version}
        ]

    run_hub(tmp_path, monkeypatch, scenario)


# ------------------------------------------------------- the heartbeat fast path


def test_provider_decisions_keep_the_newest_and_forget_on_delete_or_reset() -> None:
    from controller.liveness import ProviderDecisions
    from controller.store import Change

    def provider(ready: str, cores: int) -> dict[str, Any]:
        return {
            "kind": "Provider",
            "metadata": {"name": "n1"},
            "status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "inventory": inventory(cores),
                "endpoints": [],
                "heartbeatSeconds": 1.0,
            },
        }

    decision = {"inventory": inventory(4), "endpoints": [], "heartbeatSeconds": 1.0}
    known = ProviderDecisions()
    assert not known.unchanged("n1", decision)  # never seen: the route decides
    known.note("n1", 5, provider("True", 4))
    assert known.unchanged("n1", decision)
    assert not known.unchanged("n1", {**decision, "heartbeatSeconds": 2.0})
    known.note("n1", 4, provider("True", 8))  # an older read, late: ignored
    assert known.unchanged("n1", decision)
    known.on_batch([Change(6, "MODIFIED", "Provider", "n1", provider("False", 4))])
    assert not known.unchanged("n1", decision)  # NotReady: the route brings it back
    known.on_batch([Change(7, "MODIFIED", "Provider", "n1", provider("True", 4))])
    assert known.unchanged("n1", decision)
    known.on_batch([Change(8, "DELETED", "Provider", "n1", provider("True", 4))])
    assert not known.unchanged("n1", decision)
    known.note("n1", 7, provider("True", 4))  # a read from before the delete: ignored
    assert not known.unchanged("n1", decision)
    known.note("n1", 9, provider("True", 4))
    known.on_batch(None)  # the feed started afresh
    assert not known.unchanged("n1", decision)


def read_all(hub: Hub) -> bool:
    """The change feed has read every committed change (and knows it)."""
    return hub.feed.rv >= hub.store.resource_version and hub.feed.caught_up


def test_usage_only_beats_are_answered_beside_the_route_and_everything_else_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        node, token = await enrol(http, join)
        auth = {"Authorization": f"Bearer {token}"}
        (
            await http.post("/v1/agents/heartbeat", json=beat_body(0), headers=auth)
        ).raise_for_status()
        await until(lambda: ready(hub, node) == "True", "the provider to be Ready")
        await until(lambda: idle(hub) and read_all(hub), "the hub to settle")

        from controller.api.agents import heartbeat as heartbeat_route

        reads: list[str] = []  # the route reads the caller's Provider; the fast path does not
        store_get = hub.store.try_get

        def counted(kind: str, name: str) -> dict[str, Any] | None:
            if kind == "Provider" and sys._getframe(1).f_code is heartbeat_route.__code__:
                reads.append(name)
            return store_get(kind, name)

        monkeypatch.setattr(hub.store, "try_get", counted)
        for n in range(1, 21):
            resp = await http.post("/v1/agents/heartbeat", json=beat_body(n), headers=auth)
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert answer["ok"] is True and answer["heartbeat"] == 1.0
            assert abs(answer["time"] - time.time()) < 5
        assert reads == [], "a usage-only beat of a known Ready provider reached the route"
        assert (hub.liveness.usage(node) or {})["cpuPercent"] == 20.0
        timed = hub.metrics.registry.get_sample_value(
            "gu_api_request_duration_seconds_count",
            {"route": "/v1/agents/heartbeat", "method": "POST", "code": "200"},
        )
        assert timed is not None and timed >= 21  # timed under the route's name

        # what the route refuses, it still refuses, in its own words
        resp = await http.post(
            "/v1/agents/heartbeat", json=beat_body(1), headers={"Authorization": "Bearer x.y.z"}
        )
        assert resp.status_code == 401 and "bearer token" in resp.text
        resp = await http.post("/v1/agents/heartbeat", json=beat_body(1), headers=admin(hub))
        assert resp.status_code == 403 and "only enrolled agents" in resp.text
        implausible = beat_body(1)
        implausible["usage"]["memoryAvailableBytes"] = 64 * GIB  # more than it has
        resp = await http.post("/v1/agents/heartbeat", json=implausible, headers=auth)
        assert resp.status_code == 422 and "cannot be true" in resp.text
        resp = await http.post("/v1/agents/heartbeat", json={"usage": {}}, headers=auth)
        assert resp.status_code == 422 and "inventory" in resp.text
        assert reads == [node], "refusals by the route (only the implausible one reads)"

        # a new inventory is the route's: written, and the fast path follows it
        resp = await http.post("/v1/agents/heartbeat", json=beat_body(30, cores=8), headers=auth)
        resp.raise_for_status()
        await until(
            lambda: hub.store.get("Provider", node)["status"]["inventory"]["cpu"]["cores"] == 8,
            "the new inventory to be written",
        )
        await until(lambda: read_all(hub), "the feed to read it")
        before = len(reads)
        await http.post("/v1/agents/heartbeat", json=beat_body(31, cores=8), headers=auth)
        assert len(reads) == before, "the written inventory is known: fast path again"

        # (a provider gone NotReady comes back through the route: the test above)

    run_hub(tmp_path, monkeypatch, scenario)


def test_a_feed_behind_on_other_changes_keeps_the_fast_path_but_not_its_own_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the reconcile workers commit, the feed is mostly a little behind. A hub that
    is its store's only writer still answers a beat beside the route unless a write of
    that beat's own Provider is among the changes not read yet; a hub sharing its store
    (whose writes it does not all know) sends every beat to the route meanwhile."""
    import dataclasses

    from controller.api.fastbeat import PATH, HeartbeatFastPath

    class Behind:  # the feed, told of commits it has not read yet
        def __init__(self, rv: int) -> None:
            self.rv = rv
            self.caught_up = False

    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        node, token = await enrol(http, join)
        auth = {"Authorization": f"Bearer {token}"}
        (
            await http.post("/v1/agents/heartbeat", json=beat_body(0), headers=auth)
        ).raise_for_status()
        await until(lambda: ready(hub, node) == "True", "the provider to be Ready")
        await until(lambda: idle(hub) and read_all(hub), "the hub to settle")
        scope = {"headers": [(b"authorization", f"Bearer {token}".encode())], "path": PATH}
        body = json.dumps(beat_body(1)).encode()
        deps = hub.api_deps()  # (its own decisions: as the app's feed keeps them)
        assert deps.sole_writer  # (SQLite: this hub is its only writer)
        prov = hub.store.get("Provider", node)
        deps.decisions.note(node, prov["metadata"]["resourceVersion"], prov)

        def answer(**changes: Any) -> bytes | None:
            fast = HeartbeatFastPath(None, dataclasses.replace(deps, **changes))
            return fast._answer(scope, body)

        assert answer() is not None  # caught up: answered beside the route
        behind = Behind(hub.store.resource_version)
        hub.store.create({"kind": "App", "metadata": {"name": "other"}, "spec": {}})
        assert answer(feed=behind) is not None  # (an App it has not read: not this beat's)
        assert answer(feed=behind, sole_writer=False) is None
        hub.store.replace({**prov, "metadata": {**prov["metadata"], "labels": {"x": "y"}}})
        assert answer(feed=behind) is None  # its own Provider's change, unread: the route's
        assert answer(feed=Behind(hub.store.resource_version)) is not None  # read: fast again

    run_hub(tmp_path, monkeypatch, scenario)


def test_a_larger_pool_is_asked_to_beat_less_often_in_whole_periods() -> None:
    from controller.liveness import MAX_ASKED_PERIOD, asked_period

    assert asked_period(5.0, 10, 200.0) == 5.0
    assert asked_period(5.0, 1000, 200.0) == 5.0  # 200 a second: as asked
    assert asked_period(5.0, 1001, 200.0) == 10.0  # the next whole period, not 5.005
    assert asked_period(5.0, 5000, 200.0) == 25.0
    assert asked_period(5.0, 5001, 200.0) == 30.0
    assert asked_period(5.0, 10**9, 200.0) == MAX_ASKED_PERIOD
    assert asked_period(5.0, 10**9, 0.0) == 5.0  # 0: never


def test_the_hub_asks_a_large_pool_for_a_longer_period_and_expects_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from controller.api.app import create_app

    async def scenario(hub: Hub, http: httpx.AsyncClient, join: str) -> None:
        # the same hub, asking a pool of more than 2 to stay under 2 beats a second
        deps = dataclasses.replace(hub.api_deps(), max_heartbeats_per_second=2.0)
        transport = httpx.ASGITransport(app=create_app(deps))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as small:
            nodes = [await enrol(small, join) for _ in range(3)]
            answers = []
            for _node, token in nodes:  # each agent reports its own 1 s period
                resp = await small.post(
                    "/v1/agents/heartbeat",
                    json=beat_body(1),
                    headers={"Authorization": f"Bearer {token}"},
                )
                resp.raise_for_status()
                answers.append(resp.json()["heartbeat"])
            # (the pool as the hub knew it before each first beat: 0, 1, 2 providers)
            assert answers == [1.0, 1.0, 1.0]
            for _node, token in nodes:  # 3 providers at 1 s is over 2 a second: 2 s
                resp = await small.post(
                    "/v1/agents/heartbeat",
                    json=beat_body(2),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert resp.json()["heartbeat"] == 2.0
            for node, _ in nodes:  # expected every 2 s: NotReady after 6 s, not 3
                lease = hub.liveness.lease(node)
                assert lease is not None and lease.period == 2.0
                await until(
                    lambda n=node: (
                        hub.store.get("Provider", n)["status"].get("heartbeatSeconds") == 2.0
                    ),
                    "the period to be written",
                )

    run_hub(tmp_path, monkeypatch, scenario)
