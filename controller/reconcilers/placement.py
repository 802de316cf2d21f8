"""Placements as the hub sees them: names, shapes, states, and the cluster view.

A Placement is one workload of one Session on one provider. The hub creates it
(``new_placement``), the agent of ``spec.node`` runs it and writes its status.
This module holds what the Session reconciler needs to reason about them:

- the contract with the agent: the name (``<session>-<5 random [a-z0-9]>``,
  at most 63 characters), the ``gu/session`` label, the spec fields and the
  terminal states;
- ``ClusterState``: an informer-like, in-memory view of every Provider (as a
  scheduler ``NodeView`` in a ``RankedNodes`` pool) and every Placement,
  indexed by session and by node, with each node's allocation summed from its
  active placements.

Why a view and not store reads: one Session pass needs the session's
placements and a ranked view of all providers with their allocations. Reading
those from SQLite every pass is O(placements + providers) JSON parsing, which
at 10,000 placements and 1,000 providers would cap scheduling at a few passes
a second. ``ClusterState.refresh`` instead reads the store's change feed from
the resourceVersion it last saw and applies only what changed (relisting if
the feed was compacted past it), so a pass costs what changed since the last
one. Every change carries the object's resourceVersion, so a change that is
older than what the view holds is skipped: the initial list and the feed may
overlap without harm.

Thread safety: callers hold ``ClusterState.lock`` around refresh, reads and
the writes they base on them. The Session reconciler takes the store's write
lock (a transaction) before it, and keeps both until its writes are in the
transaction, so two passes never place onto the same free capacity; inside a
transaction the refresh reads the writer's connection, so it also sees writes
of earlier passes of the same grouped commit (``forget`` drops them if that
commit fails).
"""

from __future__ import annotations

import bisect
import random
import string
import threading
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from controller.liveness import Liveness
from controller.scheduler import NodeView, RankedNodes
from controller.store import Change, Gone, Store
from specs.kinds import SELF_LABEL_PREFIX, Inventory, Resources, Usage

Obj = dict[str, Any]

SESSION_LABEL = "gu/session"
"""Label every Placement carries: the name of its Session."""

NODE_LOST_ANNOTATION = "gu/node-lost"
"""Set by the hub on a placement it declared lost (restartPolicy Never): the
placement counts as Failed/NodeLost whatever a returning agent writes later."""

TERMINAL_STATES = frozenset({"Stopped", "Succeeded", "Failed"})
STARTING_STATES = frozenset({"Pending", "Pulling", "Starting"})

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_NAMES = random.Random()  # seeded from the OS; a name need not be secret, only rarely repeated
_MAX_NAME = 63
_DEFAULT_CPU = Resources().cpu
_DEFAULT_MEMORY = Resources().memoryMiB


def placement_name(session: str) -> str:
    """``<session>-<5 random [a-z0-9]>``, the session part cut to keep 63 characters."""
    # (secrets.choice read the OS's randomness once a character: 5 system calls a
    # placement, under the scheduling lock; a name taken is refused by create anyway)
    suffix = "".join(_NAMES.choices(_SUFFIX_ALPHABET, k=5))
    return f"{session[: _MAX_NAME - 6]}-{suffix}"


def new_placement(
    name: str, session: str, spec: Obj, node: str | None, desired: str, reason: str = ""
) -> Obj:
    """A Placement object for ``store.create``.

    ``spec`` holds the fields copied from the Session (``app``, ``workload``,
    ``restartPolicy``, ``network``). Without a node the status says why
    (``reason: Unschedulable`` and the scheduler's message).
    """
    status: Obj = {"state": "Pending"}
    if node is None:
        status.update(reason="Unschedulable", message=reason)
    return {
        "apiVersion": "gu/v1",
        "kind": "Placement",
        "metadata": {"name": name, "labels": {SESSION_LABEL: session}},
        "spec": {"session": session, **spec, "node": node, "desiredState": desired},
        "status": status,
    }


def state_of(placement: Obj) -> str:
    """The placement's observed state (``Pending`` until an agent says otherwise)."""
    return str((placement.get("status") or {}).get("state") or "Pending")


def is_lost(placement: Obj) -> bool:
    """Whether the hub declared this placement lost with its node."""
    return NODE_LOST_ANNOTATION in (placement["metadata"].get("annotations") or {})


def is_active(placement: Obj) -> bool:
    """Not finished: it holds (or will hold) resources on its node."""
    return state_of(placement) not in TERMINAL_STATES and not is_lost(placement)


def resources_of(placement: Obj) -> tuple[float, float]:
    """(cpu, memoryMiB) the placement asks for, with the spec defaults."""
    res = ((placement.get("spec") or {}).get("workload") or {}).get("resources") or {}
    return float(res.get("cpu", _DEFAULT_CPU)), float(res.get("memoryMiB", _DEFAULT_MEMORY))


def is_preempted(placement: Obj) -> bool:
    """Whether the hub preempted this placement (``spec.preemption`` is set)."""
    return bool((placement.get("spec") or {}).get("preemption"))


def provider_labels(provider: Obj) -> dict[str, str]:
    """The labels a Provider is scheduled and admitted by: the trusted ones (the admin's:
    join token, `gu label provider`) as they are, and what the agent reports of itself
    under ``self.``, which no ImagePolicy selector may name."""
    spec = provider.get("spec") or {}
    reported = {SELF_LABEL_PREFIX + k: v for k, v in (spec.get("labels") or {}).items()}
    return {**reported, **(provider["metadata"].get("labels") or {})}


def holds_of(placement: Obj) -> tuple[float, float]:
    """(cpu, memoryMiB) an active placement holds on its node. A preempted one gives its
    cpu back at once; a suspended one keeps its memory (its process, container or VM is
    still resident), a stopped one gives that back too."""
    cpu, mem = resources_of(placement)
    preemption = (placement.get("spec") or {}).get("preemption")
    if preemption:
        return 0.0, mem if preemption.get("action") == "Suspend" else 0.0
    return cpu, mem


def priority_of(placement: Obj) -> int:
    """The priority value the placement was scheduled at (0 if none)."""
    return int((placement.get("spec") or {}).get("priority") or 0)


def is_preemptible(placement: Obj) -> bool:
    """Whether a Session of a higher priority may preempt it: active, not preempted
    already, not stopping, not being deleted."""
    return (
        is_active(placement)
        and not is_preempted(placement)
        and (placement.get("spec") or {}).get("desiredState") != "Stopped"
        and not placement["metadata"].get("deletionTimestamp")
    )


def created_of(placement: Obj) -> float:
    """The placement's creation time in seconds (0 if it has none)."""
    stamp = _parse_time(placement["metadata"].get("creationTimestamp"))
    return stamp.timestamp() if stamp is not None else 0.0


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def node_view(provider: Obj) -> NodeView:
    """A scheduler view of a Provider object (allocations zero; the pool adds them)."""
    status = provider.get("status") or {}
    inventory: Inventory | None = None
    usage: Usage | None = None
    try:
        if status.get("inventory"):
            inventory = Inventory.model_validate(status["inventory"])
        if status.get("usage"):
            usage = Usage.model_validate(status["usage"])
    except ValidationError:
        inventory, usage = None, None  # an agent that reports nonsense gets nothing placed
    ready = False
    since: datetime | None = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            since = None if ready else _parse_time(cond.get("lastTransitionTime"))
    return NodeView(
        node_id=provider["metadata"]["name"],
        labels=provider_labels(provider),
        inventory=inventory,
        usage=usage,
        ready=ready,
        not_ready_since=since,
    )


VIEWED_KINDS: Final = frozenset({"Placement", "Provider", "Priority", "VirtualNetwork"})
"""The kinds ``ClusterState`` holds: it reads only their changes (a Session pass writes a
Session status and events too; decoding those back would be wasted)."""


class ClusterState:
    """Providers and Placements in memory, kept current from the change feed (see module doc)."""

    def __init__(
        self, store: Store, *, batch: int = 2000, liveness: Liveness | None = None
    ) -> None:
        self.store = store
        self.liveness = liveness
        self.lock = threading.RLock()
        self.nodes = RankedNodes()
        self.placements: dict[str, Obj] = {}
        self._batch = batch
        self._rv: int | None = None
        self._provider_rv: dict[str, int] = {}
        self._by_session: dict[str, set[str]] = {}
        self._by_node: dict[str, set[str]] = {}
        self._unbound: dict[str, set[str]] = {}
        self._alloc: dict[str, tuple[float, float, int]] = {}
        self._holds: dict[str, tuple[str, float, float]] = {}
        self._preempted: dict[str, set[str]] = {}  # session → its active preempted placements
        #: node → what a higher priority may preempt there, in the order it is taken:
        #: (priority, -created, name), lowest priority then newest first
        self._preemptible: dict[str, list[tuple[int, float, str]]] = {}
        self._preemptible_key: dict[str, tuple[str, tuple[int, float, str]]] = {}
        #: Priority objects by name (the feed carries them too: resolving a Session's class
        #: costs no store read)
        self.priorities: dict[str, Obj] = {}
        #: VirtualNetwork objects by name, and the interfaces their active members hold
        #: (network → placement → (ip, mac)): what the next address is chosen against
        self.networks: dict[str, Obj] = {}
        self._ifaces: dict[str, dict[str, tuple[str, str]]] = {}
        #: moves whenever capacity may have been freed (an allocation released, a provider
        #: added or changed): what a waiting Session could not use before may fit now
        self.capacity_epoch = 0
        self.relists = 0

    # ------------------------------------------------------------- refresh

    def refresh(self) -> None:
        """Apply every change committed since the last refresh (relist the first time)."""
        with self.lock:
            if self._rv is None:
                self._relist()
                return
            # every change up to ``floor`` was committed before the read below, so it
            # sees them all: the view is current to at least ``floor`` even when the
            # changes after the last one it kept are all of other kinds
            floor = self.store.resource_version
            while True:
                try:
                    batch = self.store.changes(self._rv, limit=self._batch, kinds=VIEWED_KINDS)
                except Gone:
                    self._relist()
                    return
                for change in batch:
                    self._apply(change)
                    self._rv = change.rv
                if len(batch) < self._batch:
                    break
            self._rv = max(self._rv, floor)
            self._apply_usage()

    def forget(self) -> None:
        """Relist at the next refresh: a commit this view had read ahead of failed (the
        engine's ``on_lost_commit``), so what it holds may never have been written."""
        with self.lock:
            self._rv = None

    def _apply_usage(self) -> None:
        """The usage heartbeats reported since the last refresh (from the lease table: a
        usage-only beat writes no change; it reaches the scheduler here, per beat)."""
        if self.liveness is None:
            return
        for node, usage in self.liveness.take_usage_changes().items():
            view = self.nodes.get(node)
            if view is not None:
                view.set_usage(usage)

    def _relist(self) -> None:
        self.relists += 1
        rv = self.store.resource_version  # read first: the feed replays anything after it
        self.nodes = RankedNodes()
        self.placements.clear()
        self._provider_rv.clear()
        self._by_session.clear()
        self._by_node.clear()
        self._unbound.clear()
        self._alloc.clear()
        self._holds.clear()
        self._preempted.clear()
        self._preemptible.clear()
        self._preemptible_key.clear()
        self.capacity_epoch += 1
        self.priorities = {p["metadata"]["name"]: p for p in self.store.list("Priority")}
        self.networks = {n["metadata"]["name"]: n for n in self.store.list("VirtualNetwork")}
        self._ifaces.clear()
        for placement in self.store.list("Placement"):
            self._put_placement(placement)
        if self.liveness is not None:
            self.liveness.take_usage_changes()  # the relist reads the newest usage anyway
        for provider in self.store.list("Provider"):
            self._put_provider(provider)
        self._rv = rv

    def _apply(self, change: Change) -> None:
        obj = change.object
        if change.kind == "Placement":
            current = self.placements.get(change.name)
            if change.type == "DELETED":
                if current is not None and current["metadata"]["resourceVersion"] < change.rv:
                    self._drop_placement(change.name)
            elif current is None or current["metadata"]["resourceVersion"] < change.rv:
                self._put_placement(obj)
        elif change.kind == "VirtualNetwork":
            if change.type == "DELETED":
                self.networks.pop(change.name, None)
            else:
                self.networks[change.name] = obj
        elif change.kind == "Priority":
            if change.type == "DELETED":
                self.priorities.pop(change.name, None)
            else:
                self.priorities[change.name] = obj
        elif change.kind == "Provider":
            seen = self._provider_rv.get(change.name, -1)
            if seen >= change.rv:
                return
            if change.type == "DELETED":
                self._provider_rv.pop(change.name, None)
                self.nodes.remove(change.name)
            else:
                self._put_provider(obj)

    def _put_provider(self, provider: Obj) -> None:
        view = node_view(provider)
        usage = self.liveness.usage(view.node_id) if self.liveness is not None else None
        if usage is not None:  # newer than the stored status's
            view.set_usage(usage)
        cpu, mem, count = self._alloc.get(view.node_id, (0.0, 0.0, 0))
        view.allocated_cpu, view.allocated_memory_mib, view.active = cpu, mem, count
        self.nodes.upsert(view)
        self._provider_rv[view.node_id] = provider["metadata"]["resourceVersion"]
        self.capacity_epoch += 1

    def _put_placement(self, placement: Obj) -> None:
        name = placement["metadata"]["name"]
        before = self._holds.get(name)
        self._drop_placement(name, freed=False)
        self.placements[name] = placement
        spec = placement.get("spec") or {}
        session = str(spec.get("session") or "")
        node = spec.get("node")
        self._by_session.setdefault(session, set()).add(name)
        active = is_active(placement)
        if node:
            self._by_node.setdefault(node, set()).add(name)
            if active:
                cpu, mem = holds_of(placement)
                self._holds[name] = (node, cpu, mem)
                self._allocate(node, cpu, mem, 1)
                if is_preempted(placement):
                    self._preempted.setdefault(session, set()).add(name)
                elif is_preemptible(placement):
                    key = (priority_of(placement), -created_of(placement), name)
                    bisect.insort(self._preemptible.setdefault(node, []), key)
                    self._preemptible_key[name] = (node, key)
        iface = spec.get("networkInterface")
        if active and iface and spec.get("network"):
            ip = str(iface.get("address", "")).split("/")[0]
            self._ifaces.setdefault(str(spec["network"]), {})[name] = (ip, str(iface.get("mac")))
        hold = self._holds.get(name)
        if before is not None and (
            hold is None or hold[0] != before[0] or hold[1] < before[1] or hold[2] < before[2]
        ):
            self.capacity_epoch += 1  # it gave something back
        if not node and active and not placement["metadata"].get("deletionTimestamp"):
            # (a placement being deleted waits for nothing: no capacity wakes its Session)
            self._unbound.setdefault(session, set()).add(name)

    def _drop_placement(self, name: str, freed: bool = True) -> None:
        old = self.placements.pop(name, None)
        if old is None:
            return
        spec = old.get("spec") or {}
        session = str(spec.get("session") or "")
        _discard(self._by_session, session, name)
        _discard(self._unbound, session, name)
        _discard(self._preempted, session, name)
        network = spec.get("network")
        if network and name in self._ifaces.get(network, {}):
            del self._ifaces[network][name]
        victim = self._preemptible_key.pop(name, None)
        if victim is not None:
            keys = self._preemptible[victim[0]]
            del keys[bisect.bisect_left(keys, victim[1])]
            if not keys:
                del self._preemptible[victim[0]]
        if spec.get("node"):
            _discard(self._by_node, spec["node"], name)
        hold = self._holds.pop(name, None)
        if hold is not None:
            node, cpu, mem = hold
            self._allocate(node, -cpu, -mem, -1)
            if freed:
                self.capacity_epoch += 1

    def _allocate(self, node: str, cpu: float, mem: float, count: int) -> None:
        old_cpu, old_mem, old_count = self._alloc.get(node, (0.0, 0.0, 0))
        new = (old_cpu + cpu, old_mem + mem, old_count + count)
        if new[2] == 0:
            self._alloc.pop(node, None)  # no float dust on an empty node
            view = self.nodes.get(node)
            if view is not None:
                self.nodes.allocate(
                    node, -view.allocated_cpu, -view.allocated_memory_mib, -view.active
                )
            return
        self._alloc[node] = new
        self.nodes.allocate(node, cpu, mem, count)

    # --------------------------------------------------------------- reads

    def placements_of(self, session: str) -> list[Obj]:
        """The session's placements, by name."""
        return [self.placements[n] for n in sorted(self._by_session.get(session, ()))]

    def sessions_on_node(self, node: str) -> set[str]:
        """Sessions with a placement bound to ``node``."""
        return {str(self.placements[n]["spec"].get("session")) for n in self._by_node.get(node, ())}

    def interfaces_in(self, network: str) -> list[tuple[str, str]]:
        """The (ip, mac) pairs the active members of ``network`` hold."""
        return list(self._ifaces.get(network, {}).values())

    def preemption_order(self, below: int) -> list[str]:
        """Nodes with something a Session at priority ``below`` may preempt, the lowest
        such priority first (then by node id)."""
        return [
            node
            for _, node in sorted(
                (keys[0][0], node) for node, keys in self._preemptible.items() if keys[0][0] < below
            )
        ]

    def preemptible_on(self, node: str, below: int) -> list[Obj]:
        """The active placements on ``node`` a Session at priority ``below`` may preempt
        (strictly lower, not preempted or stopping yet), lowest priority then newest first.
        Indexed: a node with nothing below costs one lookup."""
        keys = self._preemptible.get(node)
        if not keys or keys[0][0] >= below:
            return []
        end = bisect.bisect_left(keys, (below,))
        return [self.placements[k[2]] for k in keys[:end]]

    def taken(self, name: str) -> bool:
        """Whether a Placement of that name exists."""
        return name in self.placements


def _discard(index: dict[str, set[str]], key: str, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]


__all__ = [
    "NODE_LOST_ANNOTATION",
    "SESSION_LABEL",
    "TERMINAL_STATES",
    "ClusterState",
    "created_of",
    "holds_of",
    "is_active",
    "is_lost",
    "is_preempted",
    "is_preemptible",
    "new_placement",
    "node_view",
    "placement_name",
    "priority_of",
    "resources_of",
    "state_of",
]
