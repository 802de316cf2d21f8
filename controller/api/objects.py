"""Object routes: list, get, delete, status, events, apply and the watch stream.

Every route asks ``authz.check`` for its verb and kind before it looks
anything up (403), and an object the caller may not see answers 404 exactly
like a missing one. ``POST /v1/apply`` validates every object, checks
permissions and ImagePolicy admission (``controller.admission``) and only then
writes them in one transaction: one bad object and nothing is written.

``GET /v1/watch`` streams NDJSON changes after a resourceVersion, replayed from
the shared ring of recent changes (``controller.feed``), or the store's change
log for a stream further behind, and followed as the feed wakes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from controller import authz
from controller.admission import admit
from controller.api.common import ApiProblem, Caller, kind_of
from controller.api.deps import ApiDeps, Deps
from controller.auth import Forbidden, Principal
from controller.blobs import inputs_errors
from controller.feed import line
from controller.quota import quota_errors
from controller.store import Change, Store, StoreError
from specs.kinds import KINDS, SYSTEM_KINDS, USER_KINDS
from specs.selectors import match_labels, parse_selector

router = APIRouter(tags=["objects"])

MAX_RESOURCE_VERSION = 2**63 - 1
"""The largest resourceVersion the store can hold (a signed 64-bit SQLite INTEGER)."""


#: objects one apply may carry (one transaction: a bigger one holds the store's writer
#: for seconds)
MAX_APPLY_OBJECTS = 10_000


class ApplyRequest(BaseModel):
    objects: list[dict[str, Any]] = Field(max_length=100_000)
    applySet: str | None = Field(default=None, max_length=512)
    prune: bool = False
    dryRun: bool = False


class ApplyResultModel(BaseModel):
    kind: str
    name: str
    action: str
    generation: int
    resourceVersion: int


class ApplyResponse(BaseModel):
    results: list[ApplyResultModel]
    resourceVersion: int


class StatusRequest(BaseModel):
    status: dict[str, Any]
    resourceVersion: int | None = None


class SuspendRequest(BaseModel):
    suspend: bool


class ObjectList(BaseModel):
    items: list[dict[str, Any]]
    resourceVersion: int


class EventList(BaseModel):
    items: list[dict[str, Any]]


# ------------------------------------------------------------------ routes


@router.get("/v1/watch")
async def watch(
    who: Caller,
    d: Deps,
    # bounded like the store's SQLite INTEGER: a bigger number was a 500, not a 422
    resourceVersion: int = Query(default=0, ge=0, le=MAX_RESOURCE_VERSION),
    kind: str | None = Query(default=None, max_length=256),
    timeout: float | None = Query(default=None, gt=0, le=3600),
) -> StreamingResponse:
    """NDJSON stream of changes after ``resourceVersion``: ``{type, object, resourceVersion}``.

    A BOOKMARK line (``object`` null) is sent every 10 s of quiet, and at the end of a
    stream that read past its last event (``timeout``); 410 means the
    log no longer reaches back that far: list again and watch from its rv.
    """
    kinds = {kind_of(k) for k in kind.split(",")} if kind else None
    for k in kinds or ():
        authz.check(who, "watch", k)
    # 410 before the stream starts; read in a thread, off the loop that serves the API
    await asyncio.to_thread(d.store.changes, resourceVersion, 1)
    deadline = time.monotonic() + timeout if timeout else None
    return StreamingResponse(
        _stream(d, who, resourceVersion, kinds, deadline), media_type="application/x-ndjson"
    )


@router.get("/v1/{kind}", response_model=ObjectList)
def list_objects(
    kind: str,
    who: Caller,
    d: Deps,
    labelSelector: str | None = Query(default=None, max_length=1024),
) -> dict[str, Any]:
    """Every object of a kind, optionally filtered by labels (``k=v,k2``)."""
    k = kind_of(kind)
    authz.check(who, "list", k)
    rv = d.store.resource_version
    selector = parse_selector(labelSelector)
    scope = authz.list_scope(who, k)
    if scope is None:
        items = d.store.list(k, selector)
    else:  # only what the caller may see, by index: an agent's list is O(its placements)
        items = d.store.list_where(k, *scope)
        if selector:
            items = [o for o in items if match_labels(o["metadata"]["labels"], selector)]
    # Providers with their live usage and last-seen time (``controller.liveness``)
    items = [d.liveness.overlay(o) for o in items if authz.visible(who, k, o)]
    return {"items": items, "resourceVersion": rv}


def fetch(d: ApiDeps, who: Principal, verb: authz.Verb, kind: str, name: str) -> dict[str, Any]:
    """The object, if ``who`` may ``verb`` it: permission on the kind is checked before
    any lookup (403), and an object the caller may not see answers 404 exactly like a
    missing one, so its existence does not leak."""
    authz.check(who, verb, kind)
    obj = d.store.try_get(kind, name)
    if obj is None or not authz.visible(who, kind, obj):
        raise ApiProblem(404, f"{kind}/{name} not found")
    authz.check(who, verb, kind, obj)
    return obj


@router.get("/v1/{kind}/{name}")
def get_object(kind: str, name: str, who: Caller, d: Deps) -> dict[str, Any]:
    """One object (a Provider with its live usage and last-seen time)."""
    return d.liveness.overlay(fetch(d, who, "get", kind_of(kind), name))


@router.delete("/v1/{kind}/{name}")
def delete_object(kind: str, name: str, who: Caller, d: Deps) -> dict[str, Any]:
    """Delete an object (finalizers run first; the answer shows deletionTimestamp)."""
    k = kind_of(kind)
    if k in SYSTEM_KINDS and who.role != "admin":
        raise Forbidden(f"{who} lacks permission to delete {k}")
    doomed = fetch(d, who, "delete", k, name)
    result = d.store.delete(k, name)
    if k == "App":
        for key in doomed["spec"].get("publicKeys") or []:
            d.auth.revoke("app", name, key)
    elif k == "Provider":
        d.auth.revoke("agent", name, str(doomed["spec"].get("publicKey") or ""))
    return result


@router.put("/v1/{kind}/{name}/status")
def put_status(kind: str, name: str, req: StatusRequest, who: Caller, d: Deps) -> dict[str, Any]:
    """Replace an object's status (controllers and agents); never moves generation."""
    k = kind_of(kind)
    obj = fetch(d, who, "status", k, name)
    model = KINDS[k]
    try:
        model.model_validate({**obj, "status": req.status})
    except ValidationError as exc:
        raise ApiProblem(422, f"invalid status for {k}/{name}", _details(exc)) from None
    return d.store.update_status(k, name, req.status, expected_rv=req.resourceVersion)


@router.put("/v1/sessions/{name}/suspend")
def suspend_session(name: str, req: SuspendRequest, who: Caller, d: Deps) -> dict[str, Any]:
    """Suspend (``suspend: true``) or resume a Session: its ``spec.suspend``, as an apply
    of the same Session with that one field changed would (``gu suspend``/``gu resume``,
    the web UI's buttons). A GitOps folder that says otherwise sets it back on its next
    apply."""
    obj = fetch(d, who, "apply", "Session", name)
    if bool(obj["spec"].get("suspend")) == req.suspend:
        return obj
    changed = {**obj, "spec": {**obj["spec"], "suspend": req.suspend}}
    return d.store.replace(changed, expected_rv=obj["metadata"]["resourceVersion"])


@router.get("/v1/{kind}/{name}/events", response_model=EventList)
def object_events(kind: str, name: str, who: Caller, d: Deps) -> dict[str, Any]:
    """Recent events of one object, oldest first."""
    k = kind_of(kind)
    fetch(d, who, "get", k, name)
    return {"items": [vars(e) for e in d.store.events(k, name)]}


@router.post("/v1/apply", response_model=ApplyResponse)
def apply(req: ApplyRequest, who: Caller, d: Deps) -> dict[str, Any]:
    """Validate every object, then create/update them atomically (all or nothing)."""
    if len(req.objects) > MAX_APPLY_OBJECTS:
        raise ApiProblem(
            413,
            f"{len(req.objects)} objects in one apply; the hub takes at most "
            f"{MAX_APPLY_OBJECTS:,} per apply: split them (several folders, or several applies)",
        )
    objects, errors = _validate_for_apply(req.objects)
    if errors:
        bad = len({e["index"] for e in errors})  # errors are per field, several per object
        raise ApiProblem(422, f"{bad} invalid object(s); nothing was applied", errors)
    for obj in objects:
        authz.check(who, "apply", obj["kind"], obj)
    clash = default_priority_errors(d.store, objects)
    if clash:
        raise ApiProblem(422, "two default Priorities; nothing was applied", clash)
    missing = inputs_errors(d.store, d.images, objects)
    if missing:
        raise ApiProblem(
            403, f"{len(missing)} input(s) not the app's; nothing was applied", missing
        )
    refused = admit(d.store, d.images, objects)
    if refused:
        raise ApiProblem(
            403,
            f"{len(refused)} object(s) refused by image policy; nothing was applied",
            refused,
        )
    # the Apps whose keys the apply may take away: those it names, or with --prune any
    # (it may delete one); their tokens of such a key stop working at once
    named = None if req.prune else {o["metadata"]["name"] for o in objects if o["kind"] == "App"}
    before = app_keys(d.store, named) if (named is None or named) and not req.dryRun else {}
    # the quotas are checked on what the apply then writes on: no other apply commits in
    # between (two at once could each fit and together go over)
    with d.store.transaction():
        over = quota_errors(d.store, objects)
        if over:
            raise ApiProblem(403, f"{len(over)} App quota(s) exceeded; nothing was applied", over)
        results = d.store.apply(
            objects,
            apply_set=req.applySet,
            prune=req.prune,
            prune_kinds=USER_KINDS,
            dry_run=req.dryRun,
            finalizers=hub_finalizers,
        )
    if before:  # a key taken off an App (or the App pruned): its tokens stop now
        after = app_keys(d.store, named)
        for app, keys in before.items():
            for key in keys - after.get(app, set()):
                d.auth.revoke("app", app, key)
    return {
        "results": [vars(r) for r in results],
        "resourceVersion": d.store.resource_version,
    }


def app_keys(store: Store, names: set[str] | None = None) -> dict[str, set[str]]:
    """The public keys of the Apps ``names`` (that exist), or of every App: an apply
    reads only the Apps it names (it read every App, before and after, for any apply
    with an App in it: O(all Apps) per apply)."""
    apps = store.list("App") if names is None else store.get_many("App", names)
    return {a["metadata"]["name"]: set(a["spec"].get("publicKeys") or []) for a in apps}


def default_priority_errors(store: Store, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most one Priority may have ``default: true`` once the apply is done (the stored
    ones overlaid with the batch): an error on each one in the batch that would be a
    second, naming both."""
    if not any(o["kind"] == "Priority" and (o.get("spec") or {}).get("default") for o in batch):
        return []  # (a batch that sets no default cannot add a second: no list of them all)
    final = {o["metadata"]["name"]: bool(o["spec"].get("default")) for o in store.list("Priority")}
    for obj in batch:
        if obj["kind"] == "Priority":
            final[obj["metadata"]["name"]] = bool((obj.get("spec") or {}).get("default"))
    defaults = [name for name, default in final.items() if default]  # the stored one first
    if len(defaults) < 2:
        return []
    return [
        {
            "index": index,
            "path": "spec.default",
            "message": f"Priority {obj['metadata']['name']} and Priority {defaults[0]} both say "
            "default: true; only one Priority may be the default: set default: false on one",
        }
        for index, obj in enumerate(batch)
        if obj["kind"] == "Priority" and obj["metadata"]["name"] in defaults[1:]
    ]


def hub_finalizers(kind: str) -> list[str]:
    """Finalizers a newly created object starts with (Sessions wait for their placements)."""
    return ["gu/placements"] if kind == "Session" else []


def _details(exc: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item: dict[str, Any] = {
            "path": ".".join(str(p) for p in err["loc"]),
            "message": err["msg"].removeprefix("Value error, "),
        }
        if index is not None:
            item["index"] = index
        out.append(item)
    return out


def _validate_for_apply(
    raw: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate each object against its kind; keep only what a user may set."""
    objects: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for i, obj in enumerate(raw):
        kind = obj.get("kind")
        # any JSON may arrive here: a dict or list is no kind (and unhashable: was a 500)
        if not isinstance(kind, str) or kind not in USER_KINDS:
            msg = (
                f"{kind} is written by the hub and cannot be applied"
                if isinstance(kind, str) and kind in SYSTEM_KINDS
                else f"unknown kind {kind!r}; known kinds: {', '.join(sorted(USER_KINDS))}"
            )
            errors.append({"index": i, "path": "kind", "message": msg})
            continue
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            message = "metadata must be an object with a name, e.g. {name: my-object}"
            errors.append({"index": i, "path": "metadata", "message": message})
            continue
        clean = {
            "apiVersion": obj.get("apiVersion"),
            "kind": kind,
            "metadata": {
                "name": meta.get("name"),
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
            },
            "spec": obj.get("spec"),
        }
        try:
            USER_KINDS[kind].model_validate(clean)
        except ValidationError as exc:
            errors.extend(_details(exc, i))
            continue
        key = (kind, meta["name"])
        if key in seen:
            errors.append(
                {
                    "index": i,
                    "path": "metadata.name",
                    "message": f"{kind}/{meta['name']} is also object #{seen[key]} of this apply",
                }
            )
            continue
        seen[key] = i
        objects.append(clean)
    return objects, errors


def _node_catch_up(store: Store, node: str, since: int) -> tuple[list[Change], int]:
    """(``node``'s next changes after ``since``, the rv the stream has then read up to:
    the log's, once this node has nothing more before it)."""
    now_rv = store.resource_version  # read first: a commit after it is read next time
    changes = store.node_changes(node, since, 500)
    return changes, (max(since, now_rv) if len(changes) < 500 else since)


async def _stream(
    d: ApiDeps, who: Principal, since: int, kinds: set[str] | None, deadline: float | None
) -> AsyncIterator[bytes]:
    """The body of a watch: from the shared ring of recent changes (``controller.feed``),
    or from the store's log while the stream is further behind than the ring.

    A stream that ends at its deadline having read past its last event says how far it
    got (a BOOKMARK), so a client that skipped many changes of other kinds resumes from
    there instead of reading them again."""
    last_bookmark = time.monotonic()
    told = since  # the rv the client knows it has reached
    while (deadline is None or time.monotonic() < deadline) and not d.feed.closed:
        got = d.feed.read(since, who, kinds)
        if got is not None:
            lines, since = got
            for text in lines:
                yield text
            if lines:
                told = since
                continue
        else:
            reached = since
            try:
                if who.role == "agent":
                    # an agent behind the ring reads its own node's changes by index, then
                    # goes on from where the log was: O(its changes), not O(every change)
                    changes, reached = await asyncio.to_thread(
                        _node_catch_up, d.store, who.name, since
                    )
                else:
                    changes = await asyncio.to_thread(d.store.changes, since, 500)
            except StoreError as exc:
                yield line(
                    {"type": "ERROR", "object": None, "message": str(exc), "resourceVersion": since}
                )
                return
            for change in changes:
                since = change.rv
                if kinds and change.kind not in kinds:
                    continue
                if not authz.visible(who, change.kind, change.object):
                    continue
                told = since
                yield line(
                    {"type": change.type, "object": change.object, "resourceVersion": change.rv}
                )
            if reached > since:
                since = reached
                continue
            if changes:
                continue
        now = time.monotonic()
        if now - last_bookmark >= 10:
            last_bookmark = now
            told = since
            yield line({"type": "BOOKMARK", "object": None, "resourceVersion": since})
        wait = 10.0 if deadline is None else max(0.0, min(10.0, deadline - now))
        await d.feed.wait(who, since, wait)
    if since > told and not d.feed.closed:
        yield line({"type": "BOOKMARK", "object": None, "resourceVersion": since})
