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


def policy_apps_mapper() -> Mapper:
    """A mapper: a policy changed → the Sessions of the apps it names now and of those it
    named before (remembered from the changes it saw: a policy that stops naming an app
    must stop that app's Sessions too, without waiting for a resync)."""
    named: dict[str, set[str]] = {}

    def mapper(changed: Obj, store: Store) -> list[str]:
        name = changed["metadata"]["name"]
        apps = set((changed.get("spec") or {}).get("apps") or [])
        before = named.get(name, set())
        if changed["metadata"].get("deletionTimestamp") is None:
            named[name] = apps
        out: list[str] = []
        for app in sorted(apps | before):
            out.extend(o["metadata"]["name"] for o in store.list_where("Session", "$.app", app))
        return out

    mapper.__name__ = "sessions_of_policy_apps"
    return mapper


def priority_mapper() -> Mapper:
    """A mapper: a Priority changed → the Sessions naming it; and when it is, or was, the
    default class, the Sessions that name none (they run at the default). A change of
    the default is an administrator's rare act: reading every Session then is fine."""
    naming = sessions_naming("priority")
    defaults: set[str] = set()

    def mapper(changed: Obj, store: Store) -> list[str]:
        name = changed["metadata"]["name"]
        is_default = bool((changed.get("spec") or {}).get("default"))
        was_default = name in defaults
        (defaults.add if is_default else defaults.discard)(name)
        out = list(naming(changed, store))
        if is_default or was_default:
            out += [
                s["metadata"]["name"]
                for s in store.list("Session")
                if not (s.get("spec") or {}).get("priority")
            ]
        return out

    mapper.__name__ = "sessions_of_priority"
    return mapper
