"""Who may do what: the role rules of the hub, in one place.

- **admin**: everything.
- **app**: Sessions whose ``spec.app`` is itself (get, list, watch, apply,
  delete); read Providers (to pick unused ones); push and read images; open the web UI.
- **metrics**: the scrape token (``gu hub metrics-token``) reads ``/metrics``, nothing else.
- **agent**: its own Provider (read only: the hub writes its status from
  heartbeats) and the Placements on its node
  (read, watch, status); pull images — only those its Placements run, which the
  image routes check (``controller/api/images.py``), since that needs the store.

Anything else is refused with a message naming the permission that is missing.
"""

from __future__ import annotations

from typing import Any, Literal

from controller.auth import Forbidden, Principal

Verb = Literal[
    "get", "list", "watch", "apply", "delete", "status", "push", "pull", "admin", "ui", "metrics"
]
_READ = {"get", "list", "watch"}


def visible(p: Principal, kind: str, obj: dict[str, Any]) -> bool:
    """May ``p`` see ``obj`` (used to filter lists and watch streams)?"""
    if p.role == "admin":
        return True
    if p.role == "app":
        if kind == "Session":
            return bool(obj.get("spec", {}).get("app") == p.name)
        return kind == "Provider"
    if p.role == "agent":
        if kind == "Provider":
            return bool(obj.get("metadata", {}).get("name") == p.name)
        if kind == "Placement":
            return bool(obj.get("spec", {}).get("node") == p.name)
    return False


def list_scope(p: Principal, kind: str) -> tuple[str, str] | None:
    """An indexed spec path and value that hold every ``kind`` object ``p`` may see, so a
    list reads only those (an agent's placements by ``$.node``, an app's Sessions by
    ``$.app``) instead of the whole kind; None: read the kind. ``visible`` still decides."""
    if p.role == "agent" and kind == "Placement":
        return ("$.node", p.name)
    if p.role == "app" and kind == "Session":
        return ("$.app", p.name)
    return None


def check(
    p: Principal, verb: Verb, kind: str | None = None, obj: dict[str, Any] | None = None
) -> None:
    """Raise Forbidden unless ``p`` may ``verb`` (an object of) ``kind``."""
    if p.role == "admin":
        return
    allowed = False
    if p.role == "metrics":  # the scrape token: /metrics and nothing else
        allowed = verb == "metrics"
    elif p.role == "app":
        if verb in ("push", "pull", "ui"):
            allowed = True
        elif kind == "Session" and verb in (*_READ, "apply", "delete"):
            allowed = obj is None or obj.get("spec", {}).get("app") == p.name
        elif kind == "Provider" and verb in _READ:
            allowed = True
    elif p.role == "agent":
        if verb == "pull":
            allowed = True
        elif (kind == "Provider" and verb in _READ) or (
            kind == "Placement" and verb in (*_READ, "status")
        ):
            # never a Provider's status: the hub writes it from heartbeats, so an agent
            # cannot declare itself Ready, re-date its last beat or relabel itself
            allowed = obj is None or visible(p, kind, obj)
    if not allowed:
        what = f"{verb} {kind}" if kind else verb
        scope = ""
        if p.role == "app" and kind == "Session" and obj is not None:
            scope = f" of app {obj.get('spec', {}).get('app')!r}"
        raise Forbidden(f"{p} lacks permission to {what}{scope}")
