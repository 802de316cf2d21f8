"""The scheduler picks distinct, Ready, matching providers with room, best ranked first,
and explains a refusal the way Kubernetes does: one count per node, by its first failing
predicate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controller.scheduler import NodeView, RankedNodes, rank_key, schedule
from specs.kinds import CpuInfo, Inventory, OsInfo, Session, Usage

GIB = 1024**3
IMAGE = "sha3-256:" + "ab" * 32


def nid(i: int) -> str:
    return "0x" + f"{i:040x}"


def node(
    i: int,
    *,
    cores: int = 4,
    memory_gib: int = 8,
    available_gib: float | None = None,
    os: str = "Linux",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    cpu: float = 0.0,
    memory_mib: float = 0.0,
    active: int = 0,
    inventory: bool = True,
    runtimes: tuple[str, ...] = ("native",),
) -> NodeView:
    inv = (
        Inventory(
            os=OsInfo(name=os, version="1"),
            cpu=CpuInfo(architecture="x86_64", bit=[64], cores=cores, threads=cores * 2),
            memoryBytes=memory_gib * GIB,
            storageBytes=100 * GIB,
            runtimes=list(runtimes),
        )
        if inventory
        else None
    )
    avail = memory_gib if available_gib is None else available_gib
    return NodeView(
        node_id=nid(i),
        labels=labels or {},
        inventory=inv,
        usage=Usage(memoryAvailableBytes=int(avail * GIB)),
        ready=ready,
        not_ready_since=None if ready else datetime(2024, 1, 1, tzinfo=UTC),
        allocated_cpu=cpu,
        allocated_memory_mib=memory_mib,
        active=active,
    )


def session(
    count: int = 1,
    *,
    cpu: float = 1.0,
    memory_mib: int = 256,
    selector: dict[str, Any] | None = None,
    nodes: list[str] | None = None,
    runtime: str = "native",
) -> Session:
    providers: dict[str, Any] = {"count": count}
    if selector is not None:
        providers["selector"] = selector
    if nodes is not None:
        providers["nodes"] = nodes
    return Session.model_validate(
        {
            "kind": "Session",
            "metadata": {"name": "s"},
            "spec": {
                "app": "demo",
                "providers": providers,
                "workload": {
                    "runtime": runtime,
                    "image": {"hash": IMAGE},
                    "resources": {"cpu": cpu, "memoryMiB": memory_mib},
                },
            },
        }
    )


@pytest.fixture(params=["list", "ranked"])
def pool(request: pytest.FixtureRequest) -> Any:
    """Run each test against a plain list and against RankedNodes: same answers."""
    if request.param == "list":
        return list
    return RankedNodes


def test_picks_distinct_ready_nodes(pool: Any) -> None:
    nodes = pool([node(1), node(2), node(3, ready=False)])
    decision = schedule(session(2), nodes, 2)
    assert decision.nodes == [nid(1), nid(2)]
    assert decision.reason == ""


def test_not_ready_nodes_are_refused(pool: Any) -> None:
    decision = schedule(session(), pool([node(1, ready=False), node(2, ready=False)]), 1)
    assert decision.nodes == []
    assert decision.reason == "0/2 providers: 2 not Ready"


def test_os_is_compared_case_insensitively(pool: Any) -> None:
    nodes = pool([node(1, os="Windows"), node(2, os="Linux")])
    assert schedule(session(selector={"os": "linux"}), nodes, 1).nodes == [nid(2)]
    refused = schedule(session(selector={"os": "darwin"}), nodes, 1)
    assert refused.reason == "0/2 providers: 2 run another os"


def test_min_cores(pool: Any) -> None:
    nodes = pool([node(1, cores=2), node(2, cores=8)])
    assert schedule(session(selector={"minCores": 4}), nodes, 1).nodes == [nid(2)]
    assert (
        schedule(session(selector={"minCores": 16}), nodes, 1).reason
        == "0/2 providers: 2 have too few cores"
    )


def test_min_memory_is_checked_against_available_memory(pool: Any) -> None:
    nodes = pool([node(1, memory_gib=16, available_gib=1), node(2, memory_gib=8, available_gib=6)])
    assert schedule(session(selector={"minMemoryMiB": 4096}), nodes, 1).nodes == [nid(2)]


def test_labels_must_all_be_equal(pool: Any) -> None:
    nodes = pool(
        [
            node(1, labels={"gpu": "yes", "room": "lab"}),
            node(2, labels={"gpu": "yes"}),
            node(3, labels={"gpu": "no", "room": "lab"}),
        ]
    )
    decision = schedule(session(3, selector={"labels": {"gpu": "yes", "room": "lab"}}), nodes, 3)
    assert decision.nodes == [nid(1)]
    assert decision.reason == "1/3 providers: 2 do not match the labels"


def test_idle_means_no_active_placement(pool: Any) -> None:
    nodes = pool([node(1, cpu=1, memory_mib=256, active=1), node(2)])
    assert schedule(session(2, selector={"idle": True}), nodes, 2).nodes == [nid(2)]


def test_explicit_nodes_only(pool: Any) -> None:
    nodes = pool([node(1), node(2), node(3), node(4, ready=False)])
    decision = schedule(session(nodes=[nid(3), nid(4)]), nodes, 2)
    assert decision.nodes == [nid(3)]
    assert decision.reason == "1/4 providers: 2 not in providers.nodes, 1 not Ready"


def test_excluded_nodes_are_not_chosen_again(pool: Any) -> None:
    nodes = pool([node(1), node(2)])
    decision = schedule(session(2), nodes, 2, exclude={nid(1)})
    assert decision.nodes == [nid(2)]
    assert decision.reason == "1/2 providers: 1 already run this session"


def test_policy_reasons_are_counted_by_their_text(pool: Any) -> None:
    nodes = pool([node(1), node(2, labels={"zone": "x"}), node(3, labels={"zone": "x"})])

    def allowed(n: NodeView) -> str | None:
        return "denied by ImagePolicy" if n.labels.get("zone") == "x" else None

    decision = schedule(session(3), nodes, 3, allowed)
    assert decision.nodes == [nid(1)]
    assert decision.reason == "1/3 providers: 2 denied by ImagePolicy"


def test_cpu_and_memory_must_fit_what_is_not_allocated(pool: Any) -> None:
    nodes = pool(
        [
            node(1, cores=4, cpu=3.5, memory_mib=0, active=1),  # 0.5 cpu left
            node(2, memory_gib=8, memory_mib=7 * 1024, active=1),  # 1 GiB unallocated
            node(3, memory_gib=8, available_gib=0.5),  # allocated nothing, little available
            node(4),
        ]
    )
    decision = schedule(session(4, cpu=1, memory_mib=2048), nodes, 4)
    assert decision.nodes == [nid(4)]
    assert decision.reason == "1/4 providers: 2 lack memory, 1 lack cpu"


def test_each_node_is_counted_once_by_its_first_failing_predicate(pool: Any) -> None:
    nodes = pool(
        [
            node(1, memory_gib=1),
            node(2, memory_gib=1, os="Windows"),  # wrong os comes before memory
            node(3, ready=False, memory_gib=1),  # not Ready comes first of all
        ]
    )
    decision = schedule(session(memory_mib=4096, selector={"os": "linux"}), nodes, 1)
    assert decision.reason == "0/3 providers: 1 not Ready, 1 run another os, 1 lack memory"


def test_the_example_reason_text(pool: Any) -> None:
    nodes = pool([node(1, memory_gib=1), node(2, memory_gib=1), node(3, ready=False)])
    decision = schedule(session(memory_mib=4096), nodes, 1)
    assert decision.reason == "0/3 providers: 2 lack memory, 1 not Ready"


def test_no_providers_at_all(pool: Any) -> None:
    assert schedule(session(), pool([]), 1).reason == "0/0 providers: none registered"


def test_a_node_without_inventory_has_no_room(pool: Any) -> None:
    decision = schedule(session(), pool([node(1, inventory=False)]), 1)
    assert decision.reason == "0/1 providers: 1 lack cpu"


def test_ranking_prefers_idle_then_least_loaded_then_node_id(pool: Any) -> None:
    nodes = pool(
        [
            node(1, cores=4, cpu=2, memory_mib=512, active=1),  # half loaded
            node(2, cores=4, cpu=1, memory_mib=4096, active=1),  # quarter cpu, more memory
            node(3, cores=4, cpu=1, memory_mib=512, active=1),  # quarter cpu, less memory
            node(5),  # idle
            node(4),  # idle, lower id
        ]
    )
    assert schedule(session(5), nodes, 5).nodes == [nid(4), nid(5), nid(3), nid(2), nid(1)]


def test_resources_accumulate_within_one_pass() -> None:
    nodes = RankedNodes([node(1, cores=4), node(2, cores=2)])
    first = schedule(session(cpu=3), nodes, 1)
    assert first.nodes == [nid(1)]
    nodes.allocate(nid(1), 3, 256)
    # node 1 now has 1 core left, node 2 is idle: node 2 ranks first and is the only fit
    second = schedule(session(cpu=2), nodes, 1)
    assert second.nodes == [nid(2)]
    nodes.allocate(nid(2), 2, 256)
    third = schedule(session(cpu=2), nodes, 1)
    assert third.nodes == []
    assert third.reason == "0/2 providers: 2 lack cpu"
    nodes.allocate(nid(1), -3, -256, -1)
    assert schedule(session(cpu=2), nodes, 1).nodes == [nid(1)]


def test_ranked_nodes_keep_rank_order_as_a_sequence() -> None:
    views = [node(i, cpu=float(i % 3), active=i % 3) for i in range(1, 8)]
    views.append(node(9, ready=False))
    nodes = RankedNodes(views)
    ready = sorted((v for v in views if v.ready), key=rank_key)
    assert [n.node_id for n in nodes] == [v.node_id for v in ready] + [nid(9)]
    assert nodes[0].node_id == ready[0].node_id
    assert nodes[-1].node_id == nid(9)
    assert len(nodes) == 8
    nodes.upsert(node(9))  # becomes Ready, idle: goes to the front among idle nodes
    assert nid(9) in [n.node_id for n in nodes][:3]
    nodes.remove(nid(9))
    assert nid(9) not in nodes


def test_scheduling_is_fast_over_a_thousand_nodes() -> None:
    import time

    nodes = RankedNodes(node(i, cores=16, memory_gib=64) for i in range(1000))
    s = session(10, cpu=1, memory_mib=512)
    start = time.perf_counter()
    for _ in range(1000):
        decision = schedule(s, nodes, 10)
        for chosen in decision.nodes:
            nodes.allocate(chosen, 1, 512)
    elapsed = time.perf_counter() - start
    assert sum(n.active for n in nodes) == 10_000
    assert elapsed < 2.0, f"10,000 placements took {elapsed:.2f}s"


def test_providers_without_the_runtime_are_refused_naming_it(pool: Any) -> None:
    nodes = pool([node(1), node(2), node(3, runtimes=("native", "docker"))])
    decision = schedule(session(2, runtime="docker"), nodes, 2)
    assert decision.nodes == [nid(3)]
    assert decision.reason == "1/3 providers: 2 lack runtime docker"
