"""Image routes: push (streamed, hashed while received), list, pull.

An image is named by the sha3-256 of its bytes, so a push needs no name and a
pull needs no trust in the hub: the agent verifies the bytes itself. Agents
may pull (bytes or signatures) only images that one of their Placements runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from controller import authz
from controller.api.common import ApiProblem, Caller, raw_body
from controller.api.deps import ApiDeps, Deps
from controller.auth import Forbidden, Principal
from controller.blobs import OWNER_PREFIX, owned_by, owner_key
from controller.images import ImageInfo, ImageNotFound, ImageTooLarge, StoreFull
from specs.identity import canonical_json
from specs.images import ImageHashMismatch, InvalidImageHash, parse_hash
from specs.signing import SignatureFormatError, parse_signature, verify_image

router = APIRouter(tags=["images"])


class ImageFile(FileResponse):
    """A FileResponse read in 1 MiB pieces (Starlette's 64 KiB means 16× the thread hops)."""

    chunk_size = 1 << 20

    def __init__(self, path: Any, counted: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._counted = counted

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting(message: Any) -> None:
            if message["type"] == "http.response.body":
                self._counted(len(message.get("body", b"")))  # bytes really sent
            await send(message)

        await super().__call__(scope, receive, counting)


def _info(info: Any) -> dict[str, Any]:
    return {
        "hash": info.hash,
        "size": info.size,
        "created": info.created.isoformat().replace("+00:00", "Z"),
    }


def valid(hash: str) -> str:
    """``hash`` if it is a well-formed image hash; 422 saying what is wrong otherwise."""
    try:
        parse_hash(hash)
    except InvalidImageHash as exc:
        raise ApiProblem(422, str(exc)) from None
    return hash


def agent_runs(d: ApiDeps, who: Principal, h: str) -> None:
    """An agent reaches an image (bytes or signatures) only if one of its Placements runs it."""
    if who.role != "agent":
        return
    for p in d.store.list_where("Placement", "$.workload.image.hash", h):
        if p["spec"].get("node") == who.name:
            return
    raise Forbidden(
        f"{who} lacks permission to pull Image {h}: none of its placements runs that image"
    )


@router.post("/v1/images", openapi_extra=raw_body("application/octet-stream"))
async def push_image(
    request: Request,
    who: Caller,
    d: Deps,
    expected: str | None = Query(default=None, max_length=80),
) -> dict[str, Any]:
    """Upload an image as the raw request body; answers its ``sha3-256:`` hash."""
    authz.check(who, "push", "Image")
    return _info(await receive(request, d, who.name if who.role == "app" else None, expected))


async def receive(
    request: Request, d: ApiDeps, owner: str | None, expected: str | None = None
) -> ImageInfo:
    """Store the request body in the image store (images, blobs and outputs alike): hashed
    while received, under ``owner``'s quota (an app's ``quota.imageBytes``) and recorded as
    ``owner``'s; 413 past the size bounds, 403 past the quota."""
    if expected is not None:
        valid(expected)
    limit, owned = await asyncio.to_thread(_image_quota, d, owner)
    used = sum(owned.values())
    length = request.headers.get("content-length", "")
    new = expected is not None and expected not in owned  # (else: found out after it)
    if limit is not None and new and length.isdigit() and used + int(length) > limit:
        raise ApiProblem(403, _over_quota(owner or "", limit, used, int(length)))
    started = datetime.now(UTC)
    try:
        info = await d.images.put_async(request.stream(), expected)
    except ImageHashMismatch as exc:
        raise ApiProblem(422, str(exc)) from None
    except (ImageTooLarge, StoreFull) as exc:
        raise ApiProblem(413, str(exc)) from None
    if limit is not None and info.hash not in owned and used + info.size > limit:
        # stored by this upload (not before it: a file system's clock may be coarse)
        if fresh(info, started) and not await asyncio.to_thread(_owned_by_anyone, d, info.hash):
            with contextlib.suppress(ImageNotFound):  # it came only for this upload
                await asyncio.to_thread(d.images.delete, info.hash)
        raise ApiProblem(403, _over_quota(owner or "", limit, used, info.size))
    if owner is not None:
        await asyncio.to_thread(d.store.put_meta, owner_key(owner, info.hash), str(info.size))
    return info


def fresh(info: ImageInfo, started: datetime) -> bool:
    """Were these bytes stored by the upload that started at ``started`` (not before it)?"""
    return info.created >= started - timedelta(milliseconds=10)


def _image_quota(d: ApiDeps, owner: str | None) -> tuple[int | None, dict[str, int]]:
    """(the app's ``quota.imageBytes`` or None, its images and blobs and their sizes)."""
    if owner is None:
        return None, {}
    app = d.store.try_get("App", owner)
    limit = (((app or {}).get("spec") or {}).get("quota") or {}).get("imageBytes")
    return (int(limit) if limit is not None else None), owned_by(d.store, owner)


def _owned_by_anyone(d: ApiDeps, image: str) -> bool:
    return any(k.endswith(":" + image) for k, _ in d.store.meta_items(OWNER_PREFIX))


def _over_quota(app: str, limit: int, used: int, adding: int) -> str:
    return (
        f"App {app}'s quota allows {limit} bytes of images on the hub; its images take "
        f"{used} and this one {adding} more (raise spec.quota.imageBytes of App {app}, "
        "or have the admin remove images it no longer needs)"
    )


@router.put("/v1/images/{hash}/signatures", openapi_extra=raw_body("application/json"))
async def put_signature(hash: str, request: Request, who: Caller, d: Deps) -> dict[str, Any]:
    """Store a signature (``FILE.sig`` JSON) beside a stored image."""
    authz.check(who, "push", "Image")
    h = valid(hash)
    body = await request.body()
    try:
        doc = parse_signature(body)
    except SignatureFormatError as exc:
        raise ApiProblem(422, f"not a gu image signature: {exc}") from None
    if doc["hash"] != h:
        raise ApiProblem(422, f"the signature is for {doc['hash']}, not {h}")
    try:
        # file system work in a thread: the event loop serves other requests meanwhile
        size = (await asyncio.to_thread(d.images.info, h)).size
    except ImageNotFound:
        raise ApiProblem(404, f"image {h} is not on the hub; push it first") from None
    if doc["size"] != size:
        raise ApiProblem(422, f"the signature is for {doc['size']} bytes, but image {h} has {size}")
    # Only a consistency check (whether the key is trusted is each ImagePolicy's call): a
    # signature that does not verify even under the key it names can never admit anything.
    if verify_image(doc, h, size, [doc["publicKey"]]) is None:
        raise ApiProblem(
            422,
            f"the signature does not verify under the key it names ({doc['publicKey']}): "
            "it was changed after signing; sign the image again (`gu image sign FILE --key "
            "KEY`)",
        )
    try:
        await asyncio.to_thread(d.images.put_signature, h, canonical_json(doc))  # fsyncs
    except ImageNotFound:  # deleted meanwhile
        raise ApiProblem(404, f"image {h} is not on the hub; push it first") from None
    return {"hash": h, "signer": doc["publicKey"]}


@router.get("/v1/images/{hash}/signatures")
def get_signatures(hash: str, who: Caller, d: Deps) -> dict[str, Any]:
    """The signatures stored for an image."""
    authz.check(who, "pull", "Image")
    h = valid(hash)
    agent_runs(d, who, h)
    return {"items": [json.loads(s) for s in d.images.signatures(h)]}


@router.get("/v1/images")
def list_images(who: Caller, d: Deps) -> dict[str, Any]:
    """Every stored image (hash, size, time)."""
    authz.check(who, "push", "Image")
    return {"items": [_info(i) for i in d.images.list()]}


@router.get("/v1/images/{hash}")
def pull_image(hash: str, who: Caller, d: Deps) -> FileResponse:
    """The image's bytes (the puller verifies them against the hash)."""
    authz.check(who, "pull", "Image")
    h = valid(hash)
    agent_runs(d, who, h)
    try:
        path = d.images.path(h)
    except ImageNotFound as exc:
        raise ApiProblem(404, f"{exc}; push it with `gu image push FILE`") from None
    return ImageFile(path, d.metrics.image_bytes.inc, media_type="application/octet-stream")
