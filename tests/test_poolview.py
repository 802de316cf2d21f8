"""The pool view (``controller.poolview``): what the web UI and /metrics read, kept from the
change feed, must equal a fresh read of the store after any sequence of changes."""

from __future__ import annotations

import itertools
import json
from typing import Any

from controller.auth import Principal
from controller.liveness import Liveness
from controller.poolview import PoolView, TableQuery
from controller.store import Store
from tests.test_reconcilers_scheduling import IMAGE, add_provider

ADMIN = Principal("admin", "admin")


def placement(name: str, node: str | None, app: str = "demo", state: str = "Running") -> Any:
    return {
        "kind": "Placement",
        "metadata": {"name": name},
        "spec": {
            "session": name.rsplit("-", 1)[0],
            "app": app,
            "node": node,
            "workload": {
                "runtime": "docker",
                "image": {"hash": IMAGE},
                "resources": {"cpu": 1.5, "memoryMiB": 512},
            },
        },
        "status": {"state": state},
    }


def follow(view: PoolView, db: Store, since: int) -> int:
    """Hand the view every change after ``since``, as the feed does; the rv reached."""
    batch = db.changes(since, 1000)
    if batch:
        view.on_changes(batch)
        return batch[-1].rv
    return since


def rows(view: PoolView, who: Principal = ADMIN) -> dict[str, Any]:
    return {r["node"]: r for r in json.loads(view.provider_table(who))["providers"]}


def tasks(view: PoolView) -> dict[str, list[str]]:
    return {n: sorted(t["placement"] for t in r["tasks"]) for n, r in rows(view).items()}


def test_followed_changes_give_what_a_fresh_load_gives(store: Store) -> None:
    live = Liveness()
    view = PoolView(store, live)
    view.load()
    rv = store.resource_version
    a, b = add_provider(store, 1), add_provider(store, 2, cores=8)
    store.create(placement("s-1", a))
    store.create(placement("s-2", a))
    store.create(placement("t-1", None, state="Pending"))
    rv = follow(view, store, rv)
    view._indexes.clear()  # (the index is kept for half a second)
    assert tasks(view) == {a: ["s-1", "s-2"], b: []}
    assert rows(view)[a]["freeCpu"] == 1.0 and rows(view)[a]["freeMemoryMiB"] == 8 * 1024 - 1024
    assert rows(view)[a]["runtimes"] == [{"name": "native", "accel": None}]

    # a placement moves to another node, one ends, one is deleted, a provider goes
    moved = store.get("Placement", "s-2")
    store.replace({**moved, "spec": {**moved["spec"], "node": b}})
    store.update_status("Placement", "t-1", {"state": "Succeeded"})
    store.delete("Placement", "s-1")
    c = add_provider(store, 3)
    store.create(placement("u-1", c))
    store.delete("Provider", c)
    rv = follow(view, store, rv)
    view._indexes.clear()
    fresh = PoolView(store, live)
    fresh.load()
    assert tasks(view) == tasks(fresh) == {a: [], b: ["s-2"]}
    assert view.counts() == fresh.counts()
    _, states = view.counts()
    assert states == {("Running", "docker"): 2, ("Succeeded", "docker"): 1}


def test_an_app_sees_the_providers_its_policy_allows_and_only_its_own_task_names(
    store: Store,
) -> None:
    view = PoolView(store, Liveness())
    a = add_provider(store, 1, labels={"zone": "lab"})
    b = add_provider(store, 2)
    store.create(placement("mine-1", a, app="web"))
    store.create(placement("theirs-1", a, app="other"))
    store.create(
        {
            "kind": "ImagePolicy",
            "metadata": {"name": "web"},
            "spec": {"apps": ["web"], "allowImages": [IMAGE],
                     "allowProviders": {"selector": {"zone": "lab"}}},
        }
    )  # fmt: skip
    view.load()
    web = rows(view, Principal("app", "web"))
    assert list(web) == [a]
    assert web[a]["taskCount"] == 2 and [t["placement"] for t in web[a]["tasks"]] == ["mine-1"]
    assert rows(view, Principal("app", "nobody")) == {}  # no policy: no provider
    assert view.provider_detail(Principal("app", "web"), b) is None
    assert view.provider_detail(ADMIN, b) is not None


def test_the_usage_history_is_bounded_and_spaced() -> None:
    live = Liveness()
    for i in range(500):
        live._sample("n", 1000.0 + 3 * i, {"cpuPercent": i % 100, "memoryAvailableBytes": i})
    samples = live.history("n")
    assert len(samples) == 120  # HISTORY_SAMPLES
    assert all(b[0] - a[0] >= 5.0 for a, b in itertools.pairwise(samples))
    assert live.history("n", 3) == samples[-3:]


def test_the_table_filters_sorts_and_pages_on_the_hub(store: Store) -> None:
    view = PoolView(store, Liveness())
    nodes = [add_provider(store, i, cores=i, labels={"zone": "lab"} if i % 2 else {}) for i in
             range(1, 8)]  # fmt: skip
    store.create(placement("busy-1", nodes[2]))  # 1.5 of node 3's 3 cores
    view.load()

    def page(**q: Any) -> dict[str, Any]:
        return dict(json.loads(view.provider_table(ADMIN, TableQuery(**q))))

    got = page(sort="cores", descending=True, size=3)
    assert [r["cores"] for r in got["providers"]] == [7, 6, 5]
    assert (got["total"], got["matched"], got["pages"]) == (7, 7, 3)
    assert [r["cores"] for r in page(sort="cores", size=3, page=2)["providers"]] == [7]
    assert page(sort="cores", size=3, page=99)["page"] == 2  # past the end: the last page
    lab = page(labels=TableQuery.parse_labels("zone=lab"))
    assert sorted(r["cores"] for r in lab["providers"]) == [1, 3, 5, 7] and lab["total"] == 7
    roomy = page(min_cpu=2.0)
    assert sorted(r["cores"] for r in roomy["providers"]) == [2, 4, 5, 6, 7]  # 3 has 1.5 left
    assert TableQuery.parse_labels(" zone = lab , gpu") == (("zone", "lab"), ("gpu", None))
