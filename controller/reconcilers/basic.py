"""Reconcilers of the kinds that name nothing else: App, Priority, VirtualNetwork.

They are Ready once accepted, unless they clash with a sibling of their kind:

- Priority: at most one may be ``default: true`` (the one a Session without
  ``spec.priority`` gets). With several, each default Priority is
  ``Stalled``/``MultipleDefaults`` naming the others — the hub cannot pick one
  for the user. Sessions are not affected.
- VirtualNetwork: two networks with overlapping CIDRs would hand out clashing
  addresses, so each is ``Stalled``/``OverlappingCidr`` naming the other.

A clash is a property of a pair, so the watch of a kind on itself re-runs the
siblings that clash now *and* those stalled before (so they clear when the
culprit changes or goes).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from controller.reconcile import Context, Controller, Result
from controller.reconcilers.placement import is_active
from controller.reconcilers.refs import being_deleted, converge_conditions, is_stalled
from controller.store import Store

Obj = dict[str, Any]

ACCEPTED = "Accepted"
MULTIPLE_DEFAULTS = "MultipleDefaults"
OVERLAPPING_CIDR = "OverlappingCidr"
INVALID_SPEC = "InvalidSpec"


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _quoted(kind: str, plural: str, names: list[str]) -> str:
    listed = ", ".join(f'"{n}"' for n in names)
    return f"{kind} {listed} is" if len(names) == 1 else f"{plural} {listed} are"


# --------------------------------------------------------------------- App


def reconcile_app(obj: Obj, ctx: Context) -> Result | None:
    """An App is Ready once stored (its keys were validated on apply)."""
    if being_deleted(obj):
        return None
    converge_conditions(obj, ctx, [], stalled_reason="", ready_reason=ACCEPTED)
    return None


# ---------------------------------------------------------------- Priority


def default_priorities(store: Store) -> list[str]:
    """Names of the Priorities with ``spec.default: true`` that are not being deleted."""
    return [
        _name(p) for p in store.list_where("Priority", "$.default", True) if not being_deleted(p)
    ]


def reconcile_priority(obj: Obj, ctx: Context) -> Result | None:
    """Ready, or Stalled/MultipleDefaults naming the other defaults."""
    if being_deleted(obj):
        return None
    problems: list[str] = []
    if (obj.get("spec") or {}).get("default"):
        others = [n for n in default_priorities(ctx.store) if n != _name(obj)]
        if others:
            problems.append(
                f"{_quoted('Priority', 'Priorities', others)} also default; "
                "set spec.default: true on one Priority only"
            )
    converge_conditions(obj, ctx, problems, stalled_reason=MULTIPLE_DEFAULTS, ready_reason=ACCEPTED)
    return None


def priorities_to_recheck(changed: Obj, store: Store) -> list[str]:
    """Mapper: every default Priority (stale MultipleDefaults clear, new ones appear)."""
    return default_priorities(store)


# ---------------------------------------------------------- VirtualNetwork


def _network(obj: Obj) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(str((obj.get("spec") or {}).get("cidr")), strict=False)
    except ValueError:
        return None


def overlapping_networks(obj: Obj, store: Store) -> list[Obj]:
    """The other VirtualNetworks (not being deleted) whose CIDR overlaps ``obj``'s."""
    net = _network(obj)
    if net is None:
        return []
    out: list[Obj] = []
    for other in store.list("VirtualNetwork"):
        if _name(other) == _name(obj) or being_deleted(other):
            continue
        other_net = _network(other)
        if other_net is not None and net.overlaps(other_net):
            out.append(other)
    return out


def reconcile_virtual_network(obj: Obj, ctx: Context) -> Result | None:
    """Ready, or Stalled/OverlappingCidr naming each network it overlaps."""
    if being_deleted(obj):
        return None
    cidr = (obj.get("spec") or {}).get("cidr")
    if _network(obj) is None:
        problem = f"spec.cidr {cidr!r} is not an IPv4 network (e.g. 10.77.0.0/24)"
        converge_conditions(obj, ctx, [problem], stalled_reason=INVALID_SPEC, ready_reason=ACCEPTED)
        return None
    problems = [
        f'cidr {cidr} overlaps VirtualNetwork "{_name(o)}" ({o["spec"].get("cidr")})'
        for o in overlapping_networks(obj, ctx.store)
    ]
    converge_conditions(
        obj,
        ctx,
        problems,
        stalled_reason=OVERLAPPING_CIDR,
        ready_reason=ACCEPTED,
        extra={"members": network_members(_name(obj), ctx.store)},
    )
    return None


def network_members(network: str, store: Store) -> list[Obj]:
    """The active member placements of ``network``: placement, node, ip, mac (or why not)."""
    out = []
    for p in store.list_where("Placement", "$.network", network):
        if not is_active(p) or p["metadata"].get("deletionTimestamp"):
            continue
        iface = p["spec"].get("networkInterface") or {}
        status = p.get("status") or {}
        out.append(
            {
                "placement": p["metadata"]["name"],
                "node": p["spec"].get("node"),
                "ip": iface.get("address"),
                "mac": iface.get("mac"),
                "reason": "" if iface else str(status.get("message") or "waiting to be bound"),
            }
        )
    return sorted(out, key=lambda m: m["placement"])


def network_of_placement(changed: Obj, store: Store) -> list[str]:
    """Mapper: a member placement's change re-runs its network (its member list)."""
    network = (changed.get("spec") or {}).get("network")
    return [str(network)] if network else []


def networks_to_recheck(changed: Obj, store: Store) -> list[str]:
    """Mapper: networks overlapping the changed one, and those stalled on an overlap."""
    names = {_name(o) for o in overlapping_networks(changed, store)}
    names.update(_name(o) for o in store.list("VirtualNetwork") if is_stalled(o, OVERLAPPING_CIDR))
    names.discard(_name(changed))  # the changed one is queued by its own change
    return sorted(names)


def register(controller: Controller) -> None:
    """Register the App, Priority and VirtualNetwork reconcilers."""
    controller.reconciler("App")(reconcile_app)
    controller.reconciler("Priority", watches={"Priority": priorities_to_recheck})(
        reconcile_priority
    )
    controller.reconciler(
        "VirtualNetwork",
        watches={"VirtualNetwork": networks_to_recheck, "Placement": network_of_placement},
    )(reconcile_virtual_network)
