"""App quotas: what all of one App's Sessions may ask for, checked at apply.

``App.spec.quota`` bounds an App's Sessions (their number), placements (the sum of
their ``count``, or of ``len(providers.nodes)``), cpu and memory (each Session's
placements × its workload's ``resources``). The check runs on what the hub will hold
once the apply is done — the stored Sessions of that App overlaid with the batch, the
App's quota as the batch sets it — so it bounds what the App can ever have in use. An
apply over quota is refused whole (403), naming the limit, what the App has now and
what this apply would make it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.reconcilers.placement import resources_of
from controller.store import Store

Obj = dict[str, Any]


@dataclass
class Use:
    sessions: int = 0
    placements: int = 0
    cpu: float = 0.0
    memoryMiB: float = 0.0

    def add(self, session: Obj) -> None:
        spec = session.get("spec") or {}
        providers = spec.get("providers") or {}
        nodes = providers.get("nodes")
        count = len(nodes) if nodes is not None else int(providers.get("count", 1))
        cpu, memory = resources_of(session)  # (a Session's workload, like its placements')
        self.sessions += 1
        self.placements += count
        self.cpu += count * cpu
        self.memoryMiB += count * memory


def _fmt(value: float) -> str:
    return f"{value:g}"


def quota_errors(store: Store, batch: list[Obj]) -> list[dict[str, Any]]:
    """``[{index, path, message}]`` for the Sessions of ``batch`` whose App would go over
    its quota (empty: within every quota)."""
    apps = {o["metadata"]["name"]: o for o in batch if o["kind"] == "App"}
    by_app: dict[str, list[tuple[int, Obj]]] = {}
    for index, obj in enumerate(batch):
        if obj["kind"] == "Session":
            by_app.setdefault(str((obj.get("spec") or {}).get("app")), []).append((index, obj))
    errors: list[dict[str, Any]] = []
    for app, sessions in sorted(by_app.items()):
        app_obj = apps.get(app) or store.try_get("App", app)
        quota = ((app_obj or {}).get("spec") or {}).get("quota")
        if not quota:
            continue
        names = {s["metadata"]["name"] for _, s in sessions}
        now, after = Use(), Use()
        for stored in store.list_where("Session", "$.app", app):
            now.add(stored)
            if stored["metadata"]["name"] not in names:
                after.add(stored)
        for _, session in sessions:
            after.add(session)
        for field, unit in (
            ("sessions", "Sessions"),
            ("placements", "placements"),
            ("cpu", "cpu"),
            ("memoryMiB", "MiB of memory"),
        ):
            limit = quota.get(field)
            if limit is None or getattr(after, field) <= limit + 1e-9:
                continue
            if getattr(after, field) <= getattr(now, field):
                continue  # not made worse by this apply (a quota lowered below use)
            errors.append(
                {
                    "index": sessions[-1][0],
                    "path": "spec",
                    "message": f"App {app}'s quota allows {_fmt(limit)} {unit} in all; its "
                    f"Sessions ask for {_fmt(getattr(now, field))} now and would ask for "
                    f"{_fmt(getattr(after, field))} with this apply (raise "
                    f"spec.quota.{field} of App {app}, or delete Sessions)",
                }
            )
    return errors
