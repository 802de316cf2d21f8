"""What wakes a Session: mappers from a changed object to the Session keys it affects.

App, Priority and VirtualNetwork → the Sessions naming it; ImagePolicy → the
Sessions of the apps it names. Placement and Provider changes are mapped by
``SessionReconciler`` itself (it holds the ``ClusterState`` they consult);
:func:`provider_facts` says which Provider fields matter to scheduling, so a
heartbeat that changes only usage wakes nobody.
"""

from __future__ import annotations

import json
from typing import Any

from controller.reconcile import Mapper
from controller.store import Store

Obj = dict[str, Any]


def provider_facts(provider: Obj) -> tuple[str, str]:
    """What of a Provider matters to scheduling: (readiness, labels and inventory)."""
    status = provider.get("status") or {}
    ready = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = f"{cond.get('status')}@{cond.get('lastTransitionTime')}"
    rest = json.dumps(
        [
            provider["metadata"].get("labels"),
            (provider.get("spec") or {}).get("labels"),
            status.get("inventory"),
        ],
        sort_keys=True,
    )
    return ready, rest


def sessions_naming(field: str) -> Mapper:
    """A mapper: the Sessions whose ``spec.<field>`` is the changed object's name."""

    def mapper(changed: Obj, store: Store) -> list[str]:
        name = changed["metadata"]["name"]
        return [s["metadata"]["name"] for s in store.list_where("Session", f"$.{field}", name)]

    mapper.__name__ = f"sessions_naming_{field}"
    return mapper


def sessions_of_policy_apps(changed: Obj, store: Store) -> list[str]:
    """Mapper: a policy changed → the Sessions of the apps it names (a policy that
    stops naming an app is caught by the periodic resync)."""
    out: list[str] = []
    for app in (changed.get("spec") or {}).get("apps") or []:
        out.extend(o["metadata"]["name"] for o in store.list_where("Session", "$.app", app))
    return out
