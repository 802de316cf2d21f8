"""The ImagePolicy reconciler: every App a policy lists must exist.

A policy naming an App that does not exist is ``Stalled``/``MissingReference``
(probably a typo, and it grants nothing to anyone); the watch on App re-runs
the policy when that App appears or goes.
"""

from __future__ import annotations

from typing import Any

from controller.reconcile import Context, Controller, Result
from controller.reconcilers.refs import (
    MISSING_REFERENCE,
    being_deleted,
    converge_conditions,
    missing_references,
)
from controller.store import Store

Obj = dict[str, Any]

READY_REASON = "ReferencesResolved"


def reconcile_image_policy(obj: Obj, ctx: Context) -> Result | None:
    """Stalled while an App in ``spec.apps`` is missing, else Ready."""
    if being_deleted(obj):
        return None
    apps = (obj.get("spec") or {}).get("apps") or []
    problems = missing_references(ctx.store, "App", apps)
    converge_conditions(
        obj, ctx, problems, stalled_reason=MISSING_REFERENCE, ready_reason=READY_REASON
    )
    return None


def policies_naming_app(changed: Obj, store: Store) -> list[str]:
    """Mapper: the ImagePolicies whose ``spec.apps`` lists the changed App."""
    name = changed["metadata"]["name"]
    return [
        p["metadata"]["name"]
        for p in store.list("ImagePolicy")
        if name in ((p.get("spec") or {}).get("apps") or [])
    ]


def register(controller: Controller) -> None:
    """Register the ImagePolicy reconciler and its watch on App."""
    controller.reconciler("ImagePolicy", watches={"App": policies_naming_app})(
        reconcile_image_policy
    )
