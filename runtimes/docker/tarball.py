"""A Docker image in gu: the ``docker save`` tarball, and the image id inside it.

The image id of a Docker image is the sha256 digest of its config JSON. The
tarball names that config itself, so the id can be read before the engine
sees a byte — and must be recomputed, not trusted:

- legacy layout (engines before 25): ``manifest.json`` is
  ``[{"Config": "<hex>.json", "RepoTags": [...], "Layers": [...]}]``;
- OCI layout (engines from 25 on): ``index.json`` names a manifest blob
  (``blobs/sha256/<hex>``) whose ``config.digest`` names the config blob.
  Such tarballs also carry a ``manifest.json`` for older readers; it is
  preferred when present, as it names the config file directly.

Either way the config's bytes are read from the tarball and hashed here: the
id this returns is the digest of bytes that are really in the file. The agent
then checks that the engine reports exactly this id after ``docker load`` and
runs by it, never by a tag.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

from runtimes.base import ImageRejected

_MAX_JSON = 16 << 20  # a manifest or config larger than this is not a docker save tarball


Members = dict[str, tarfile.TarInfo]


def _read_member(tar: tarfile.TarFile, members: Members, name: str, image: Path) -> bytes:
    member = members.get(name.removeprefix("./"))
    if member is None:
        raise ImageRejected(
            f"image {image.name}: {name} is missing; build it with `docker save` "
            "(`gu image build --runtime docker IMAGE -o FILE.tar`)"
        )
    if not member.isfile() or member.size > _MAX_JSON:
        raise ImageRejected(f"image {image.name}: {name} is not a small regular file")
    f = tar.extractfile(member)
    assert f is not None
    with f:
        return f.read()


def _json(data: bytes, what: str, image: Path) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImageRejected(f"image {image.name}: {what} is not JSON: {exc}") from None


def _config_name(tar: tarfile.TarFile, members: Members, image: Path) -> str:
    """The member holding the image's config, from manifest.json or the OCI index."""
    if "manifest.json" in members:
        manifest = _json(_read_member(tar, members, "manifest.json", image), "manifest.json", image)
        if (
            not isinstance(manifest, list)
            or len(manifest) != 1
            or not isinstance(manifest[0], dict)
        ):
            raise ImageRejected(
                f"image {image.name}: manifest.json must describe exactly one image "
                "(save one image per file)"
            )
        config = manifest[0].get("Config")
        if not isinstance(config, str) or not config:
            raise ImageRejected(f"image {image.name}: manifest.json names no Config")
        return config
    if "index.json" in members:
        index = _json(_read_member(tar, members, "index.json", image), "index.json", image)
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or len(manifests) != 1:
            raise ImageRejected(f"image {image.name}: index.json must name exactly one manifest")
        digest = str(manifests[0].get("digest") or "")
        blob = _blob_name(digest, image)
        manifest = _json(_read_member(tar, members, blob, image), blob, image)
        config = (
            (manifest.get("config") or {}).get("digest") if isinstance(manifest, dict) else None
        )
        return _blob_name(str(config or ""), image)
    raise ImageRejected(
        f"image {image.name} is not a `docker save` tarball (no manifest.json or index.json)"
    )


def _blob_name(digest: str, image: Path) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise ImageRejected(f"image {image.name}: unsupported digest {digest!r}")
    return f"blobs/sha256/{hexpart}"


def image_id(image: Path) -> str:
    """``sha256:<hex>`` of the image config inside the ``docker save`` tarball ``image``.

    Raises :class:`ImageRejected` with what is wrong when the file is no such tarball.
    """
    try:
        tar = tarfile.open(image, "r:*")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageRejected(f"image {image.name} is not a readable tar archive: {exc}") from exc
    with tar:
        try:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
            config = _config_name(tar, members, image)
            data = _read_member(tar, members, config, image)
        except (tarfile.TarError, EOFError) as exc:
            raise ImageRejected(f"image {image.name} is a damaged tar archive: {exc}") from exc
    return "sha256:" + hashlib.sha256(data).hexdigest()


__all__ = ["image_id"]
