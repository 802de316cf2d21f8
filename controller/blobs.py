"""Blobs: a Session's data in (inputs) and results out (outputs), in the image store.

One content-addressed store holds images, blobs and outputs
(``controller.images.ImageStore``): the same hashing, streaming, size bounds
and quota (``App.spec.quota.imageBytes`` counts all three). What tells them
apart is bookkeeping in the store's meta table:

- ``imageowner:<app>:<hash>`` → size: the app pushed these bytes (``gu image
  push`` or ``gu blob push``), or a placement of its Sessions produced them. An
  app reads a blob only with such a record; the admin reads every blob; an
  agent only the inputs of its own placements.
- ``output:<session>/<placement>`` → JSON ``{hash, size, files, app, node}``: the
  outputs a finished placement uploaded, kept until its Session is deleted.
- ``outputblob:<hash>``: the bytes came first as an output (so the sweep may
  delete them once no output, owner or pin needs them; a pushed image never is).
- ``blobpin:<hash>``: kept even after its Session goes (``gu blob pin``).

``sweep_outputs`` runs every ``SWEEP_SECONDS``: the outputs of Sessions that
no longer exist lose their records, and bytes nobody needs any more are
deleted (within a minute of the Session's deletion).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from controller.images import ImageNotFound, ImageStore
from controller.store import Store

log = logging.getLogger("gu.hub.blobs")

OWNER_PREFIX = "imageowner:"
OUTPUT_PREFIX = "output:"
OUTPUT_BLOB_PREFIX = "outputblob:"
PIN_PREFIX = "blobpin:"
SWEEP_SECONDS = 30.0


def owner_key(app: str, blob: str) -> str:
    return f"{OWNER_PREFIX}{app}:{blob}"


def owns(store: Store, app: str, blob: str) -> bool:
    """Did ``app`` push ``blob``, or did one of its Sessions produce it?"""
    return store.get_meta(owner_key(app, blob)) is not None


def owned_by(store: Store, app: str) -> dict[str, int]:
    """The blobs (and images) ``app`` owns, with their sizes."""
    prefix = f"{OWNER_PREFIX}{app}:"
    return {k.removeprefix(prefix): int(v) for k, v in store.meta_items(prefix)}


@dataclass(frozen=True)
class OutputRecord:
    session: str
    placement: str
    hash: str
    size: int
    files: int
    app: str
    node: str

    def as_json(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "node": self.node,
            "hash": self.hash,
            "size": self.size,
            "files": self.files,
        }


def record_output(store: Store, rec: OutputRecord, new_bytes: bool) -> None:
    """Keep ``rec`` (one placement's outputs) and give its app the bytes, atomically."""
    value = json.dumps({"hash": rec.hash, "size": rec.size, "files": rec.files,
                        "app": rec.app, "node": rec.node})  # fmt: skip
    with store.transaction():
        store.put_meta(f"{OUTPUT_PREFIX}{rec.session}/{rec.placement}", value)
        store.put_meta(owner_key(rec.app, rec.hash), str(rec.size))
        if new_bytes:
            store.put_meta(OUTPUT_BLOB_PREFIX + rec.hash, "")


def outputs_of(store: Store, session: str) -> list[OutputRecord]:
    """The outputs recorded for ``session``'s placements, by placement name."""
    out = []
    for key, value in store.meta_items(f"{OUTPUT_PREFIX}{session}/"):
        rec = _parse(key, value)
        if rec is not None:
            out.append(rec)
    return sorted(out, key=lambda r: r.placement)


def _parse(key: str, value: str) -> OutputRecord | None:
    session, _, placement = key.removeprefix(OUTPUT_PREFIX).partition("/")
    try:
        raw = json.loads(value)
        return OutputRecord(
            session, placement, str(raw["hash"]), int(raw["size"]), int(raw["files"]),
            str(raw["app"]), str(raw.get("node") or ""),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        log.warning("event=output_record_unreadable key=%s", key)
        return None


def pin(store: Store, blob: str, pinned: bool) -> None:
    if pinned:
        store.put_meta(PIN_PREFIX + blob, "")
    else:
        store.delete_meta(PIN_PREFIX + blob)


def sweep_outputs(store: Store, images: ImageStore) -> int:
    """Forget the outputs of Sessions that are gone and delete the bytes nobody needs any
    more (no output record, owner, pin or placement names them); how many records went."""
    records = [
        (key, rec)
        for key, value in store.meta_items(OUTPUT_PREFIX)
        if (rec := _parse(key, value)) is not None
    ]
    live = {r.session for _, r in records if store.try_get("Session", r.session) is not None}
    gone = [(key, r) for key, r in records if r.session not in live]
    if not gone:
        return 0
    still = {(r.app, r.hash) for _, r in records if r.session in live}
    for key, rec in gone:
        with store.transaction():
            store.delete_meta(key)
            if (rec.app, rec.hash) not in still:
                store.delete_meta(owner_key(rec.app, rec.hash))
    for blob in {r.hash for _, r in gone} - {h for _, h in still}:
        if _needed(store, blob):
            continue
        store.delete_meta(OUTPUT_BLOB_PREFIX + blob)
        with contextlib.suppress(ImageNotFound):
            images.delete(blob)
        log.info("event=output_deleted hash=%s", blob)
    return len(gone)


def _needed(store: Store, blob: str) -> bool:
    if store.get_meta(OUTPUT_BLOB_PREFIX + blob) is None:
        return True  # pushed (an image or a blob): not ours to delete
    if store.get_meta(PIN_PREFIX + blob) is not None:
        return True
    if any(k.endswith(":" + blob) for k, _ in store.meta_items(OWNER_PREFIX)):
        return True  # another app owns these bytes too (it pushed them, or produced them)
    return bool(store.list_where("Placement", "$.workload.image.hash", blob))


async def sweep_every(
    store: Store, images: ImageStore, stop: asyncio.Event, every: float = SWEEP_SECONDS
) -> None:
    """The hub's task: ``sweep_outputs`` every ``every`` seconds until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        try:
            await asyncio.to_thread(sweep_outputs, store, images)
        except Exception:
            log.exception("event=output_sweep_failed")


def inputs_errors(
    store: Store, images: ImageStore, batch: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Apply errors for Sessions whose inputs are missing or not their app's."""
    errors: list[dict[str, Any]] = []
    for index, obj in enumerate(batch):
        if obj.get("kind") != "Session":
            continue
        spec = obj.get("spec") or {}
        app = str(spec.get("app") or "")
        for j, item in enumerate((spec.get("workload") or {}).get("inputs") or []):
            blob = str(item.get("hash") or "")
            path = f"spec.workload.inputs[{j}].hash"
            if not images.exists(blob):
                message = f"blob {blob} is not on the hub; push it with `gu blob push FILE`"
            elif not owns(store, app, blob):
                message = (
                    f"blob {blob} does not belong to app {app}: push it as the app "
                    f"(`gu blob push` in its context), or as admin with `--app {app}`"
                )
            else:
                continue
            errors.append({"index": index, "path": path, "message": message})
    return errors


__all__ = [
    "OUTPUT_PREFIX",
    "OWNER_PREFIX",
    "OutputRecord",
    "inputs_errors",
    "outputs_of",
    "owned_by",
    "owner_key",
    "owns",
    "pin",
    "record_output",
    "sweep_every",
    "sweep_outputs",
]
