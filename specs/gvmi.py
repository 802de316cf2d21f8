"""The ``.gvmi`` VM image format: one file, a squashfs root, its metadata, a footer.

Layout (``specs/gvmi.md`` has the byte-level table)::

    [0, S)          squashfs root filesystem (zstd), S = its size, a multiple of 4096
    [S, S+M)        metadata: UTF-8 JSON, sorted keys, no spaces
    [S+M, S+M+64)   footer (little-endian):
                      0  8  magic  b"\\x89GVMI\\r\\n\\x1a"
                      8  2  format version (1)
                     10  6  zero
                     16  8  metadata offset (= S)
                     24  8  metadata length (= M)
                     32 32  sha3-256 of the metadata bytes

Why this shape:

- The footer is at a fixed place from the end, so the runtime reads the
  metadata with two small reads and unpacks nothing.
- The squashfs starts at offset 0, so the runtime hands QEMU *the image file
  itself* as a read-only raw drive limited to ``size=S``: no extraction, no
  copy, nothing cached beside the image. The agent already verified the whole
  file's sha3-256 (the image hash) before it runs it, which covers the
  squashfs; the squashfs's own sha3-256 in the metadata lets ``gu image
  inspect`` (and anyone) check the root alone.
- The image hash stays the sha3-256 of the whole file, like every gu image:
  ImagePolicy, signatures and verify-before-run apply unchanged.

Building is reproducible: the root is packed with ``mksquashfs -reproducible``,
every time and owner fixed (``-all-root -all-time 0 -mkfs-time 0``), and the
metadata is canonical JSON, so the same input gives byte-identical output. A
``docker save`` tarball is turned into a root here, without an engine: its
layers applied in order, with whiteouts, refusing members that escape the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from specs.images import CHUNK_SIZE, Hasher, hash_file

MAGIC: Final = b"\x89GVMI\r\n\x1a"
VERSION: Final = 1
FOOTER: Final = struct.Struct("<8sH6xQQ32s")
FOOTER_SIZE: Final = FOOTER.size  # 64
SQUASHFS_MAGIC: Final = b"hsqs"
#: metadata larger than this is refused unread (a corrupt length must not allocate GiBs)
MAX_METADATA: Final = 1 << 20
#: mksquashfs options that make the root byte-for-byte reproducible
MKSQUASHFS_OPTIONS: Final = (
    "-comp",
    "zstd",
    "-noappend",
    "-reproducible",
    "-all-root",
    "-all-time",
    "0",
    "-mkfs-time",
    "0",
    "-no-xattrs",
    "-no-progress",
    "-quiet",
)


class GvmiError(Exception):
    """A ``.gvmi`` file that cannot be read or built; the message says what and what to do."""


@dataclass(frozen=True)
class Metadata:
    """What a VM image says about how to run it (the OCI config's run fields)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workingDir: str = "/"
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def argv(self, command: list[str], args: list[str]) -> list[str]:
        """The program to run: a Session's ``command`` replaces the entrypoint (and drops
        the image's cmd), its ``args`` replace the cmd, as with ``docker run``."""
        if command:
            return [*command, *args]
        return [*self.entrypoint, *(args or self.cmd)]


@dataclass(frozen=True)
class Image:
    """A ``.gvmi`` file as read from its footer and metadata."""

    path: Path
    metadata: Metadata
    squashfs_size: int
    squashfs_hash: str
    metadata_size: int
    file_size: int

    def describe(self) -> dict[str, Any]:
        """What ``gu image inspect`` prints."""
        return {
            "kind": "gvmi",
            "formatVersion": VERSION,
            "size": self.file_size,
            "squashfs": {"offset": 0, "size": self.squashfs_size, "sha3-256": self.squashfs_hash},
            "metadataSize": self.metadata_size,
            **_metadata_json(self.metadata),
        }


def _metadata_json(meta: Metadata) -> dict[str, Any]:
    return {
        "entrypoint": meta.entrypoint,
        "cmd": meta.cmd,
        "env": meta.env,
        "workingDir": meta.workingDir,
        "user": meta.user,
        "labels": meta.labels,
    }


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GvmiError(f"metadata {what} must be a list of strings, not {value!r}")
    return list(value)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise GvmiError(f"metadata {what} must map strings to strings")
    return dict(value)


def read(path: Path) -> Image:
    """Read ``path``'s footer and metadata (nothing is unpacked); :class:`GvmiError` if bad."""
    what = f"{path}: not a usable .gvmi image"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < FOOTER_SIZE + 4096:
                raise GvmiError(
                    f"{what}: {size} bytes is too short for a squashfs and a footer "
                    "(truncated? build it again with `gu image build --runtime vm`)"
                )
            f.seek(size - FOOTER_SIZE)
            magic, version, offset, length, digest = FOOTER.unpack(f.read(FOOTER_SIZE))
            if magic != MAGIC:
                raise GvmiError(
                    f"{what}: wrong magic {magic!r} at offset {size - FOOTER_SIZE} (truncated, "
                    "or not a .gvmi: build one with `gu image build --runtime vm`)"
                )
            if version != VERSION:
                raise GvmiError(
                    f"{what}: format version {version}; this gu reads version {VERSION} "
                    "(upgrade gu, or rebuild the image)"
                )
            if length > MAX_METADATA or offset + length != size - FOOTER_SIZE:
                raise GvmiError(
                    f"{what}: the footer's metadata offset {offset} and length {length} do not "
                    f"end at the footer (offset {size - FOOTER_SIZE}): the file is damaged"
                )
            if offset % 4096 or offset == 0:
                raise GvmiError(f"{what}: squashfs size {offset} is not a multiple of 4096")
            f.seek(offset)
            raw = f.read(length)
            f.seek(0)
            head = f.read(4)
    except OSError as exc:
        raise GvmiError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if hashlib.sha3_256(raw).digest() != digest:
        raise GvmiError(f"{what}: the metadata checksum does not match (the file is damaged)")
    if head != SQUASHFS_MAGIC:
        raise GvmiError(f"{what}: no squashfs at offset 0 (found {head!r})")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise GvmiError(f"{what}: metadata is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise GvmiError(f"{what}: metadata is not a JSON object")
    sq = doc.get("squashfs") or {}
    if sq.get("size") != offset:
        raise GvmiError(f"{what}: metadata says squashfs size {sq.get('size')}, footer {offset}")
    meta = Metadata(
        entrypoint=_str_list(doc.get("entrypoint"), "entrypoint"),
        cmd=_str_list(doc.get("cmd"), "cmd"),
        env=_str_map(doc.get("env"), "env"),
        workingDir=str(doc.get("workingDir") or "/"),
        user=str(doc.get("user") or ""),
        labels=_str_map(doc.get("labels"), "labels"),
    )
    return Image(path, meta, offset, str(sq.get("sha3-256") or ""), length, size)


def verify_squashfs(image: Image) -> bool:
    """Whether the squashfs bytes hash to what the metadata says."""
    with open(image.path, "rb") as f:
        return _hash_stream(f, image.squashfs_size) == image.squashfs_hash


# ------------------------------------------------------------------- building


def mksquashfs() -> str:
    """The ``mksquashfs`` program, or :class:`GvmiError` saying what to install."""
    found = shutil.which("mksquashfs") or (
        "/usr/sbin/mksquashfs" if os.access("/usr/sbin/mksquashfs", os.X_OK) else None
    )
    if found is None:
        raise GvmiError(
            "mksquashfs not found: install squashfs-tools (apt-get install squashfs-tools)"
        )
    return found


def build_from_dir(root: Path, out: Path, meta: Metadata) -> str:
    """Pack folder ``root`` and ``meta`` into ``out``; return its image hash.

    Written to a temporary file beside ``out`` and renamed, so a failed build
    leaves nothing at ``out``.
    """
    if not root.is_dir():
        raise GvmiError(f"{root}: not a folder (a VM image is built from a folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        proc = subprocess.run(
            [mksquashfs(), str(root), str(tmp), *MKSQUASHFS_OPTIONS],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise GvmiError(
                f"mksquashfs failed on {root}: {(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        squashfs_size = tmp.stat().st_size
        with open(tmp, "r+b") as f:
            if squashfs_size % 4096:  # mksquashfs pads to 4 KiB already; be sure
                f.seek(squashfs_size)
                f.write(b"\0" * (4096 - squashfs_size % 4096))
                squashfs_size += 4096 - squashfs_size % 4096
            f.seek(0)
            sq_hash = _hash_stream(f, squashfs_size)
            doc = {
                **_metadata_json(meta),
                "format": "gvmi",
                "formatVersion": VERSION,
                "squashfs": {
                    "offset": 0,
                    "size": squashfs_size,
                    "sha3-256": sq_hash,
                    "compression": "zstd",
                },
            }
            raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            f.seek(squashfs_size)
            f.write(raw)
            f.write(
                FOOTER.pack(MAGIC, VERSION, squashfs_size, len(raw), hashlib.sha3_256(raw).digest())
            )
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return hash_file(out)


def _hash_stream(f: IO[bytes], size: int) -> str:
    """The image-style hash (``sha3-256:<hex>``) of the next ``size`` bytes of ``f``
    (fewer if it ends first, so a short file never matches)."""
    h = Hasher()
    while h.size < size:
        chunk = f.read(min(size - h.size, CHUNK_SIZE))
        if not chunk:
            break
        h.update(chunk)
    return h.hash


# ----------------------------------------------------------- docker archives


def _safe_rel(name: str, where: str) -> PurePosixPath:
    """A layer member's path relative to the root; :class:`GvmiError` if it escapes."""
    rel = PurePosixPath(name.lstrip("/"))
    if any(part == ".." for part in rel.parts):
        raise GvmiError(f"{where}: member {name!r} escapes the root ('..'): refused")
    return rel


def _inside(root: Path, rel: PurePosixPath, where: str, name: str) -> Path:
    """``root/rel`` with no symlink on the way out of ``root`` (parents resolved)."""
    target = root.joinpath(*rel.parts) if rel.parts else root
    parent = os.path.realpath(target.parent)
    if parent != str(root) and not parent.startswith(str(root) + os.sep):
        raise GvmiError(f"{where}: member {name!r} goes through a link out of the root: refused")
    return target


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or os.path.lexists(path):
        path.unlink()


def apply_layer(root: Path, layer: IO[bytes], where: str) -> None:
    """Apply one image layer (a tar, maybe gzipped) onto ``root``, with OCI whiteouts."""
    with tarfile.open(fileobj=layer, mode="r:*") as tar:
        for member in tar:
            rel = _safe_rel(member.name, where)
            if not rel.parts:
                continue
            base = rel.name
            target = _inside(root, rel, where, member.name)
            if base == ".wh..wh..opq":  # opaque dir: hide what lower layers put in it
                if target.parent.is_dir() and not target.parent.is_symlink():
                    for child in target.parent.iterdir():
                        _remove(child)
                continue
            if base.startswith(".wh."):  # whiteout: delete the named entry
                victim = target.with_name(base[len(".wh.") :])
                if os.path.lexists(victim):
                    _remove(victim)
                continue
            if member.isdev() or member.isfifo():
                continue  # devices come from the guest's devtmpfs, not the image
            if os.path.lexists(target) and not (member.isdir() and target.is_dir()):
                _remove(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.isdir():
                target.mkdir(exist_ok=True)
                target.chmod(member.mode & 0o7777)
            elif member.issym():
                os.symlink(member.linkname, target)
            elif member.islnk():
                src = _inside(root, _safe_rel(member.linkname, where), where, member.linkname)
                if not src.is_file():
                    raise GvmiError(f"{where}: hard link {member.name!r} to a missing file")
                os.link(src, target)
            elif member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                with open(target, "wb") as f:
                    shutil.copyfileobj(data, f, 1 << 20)
                target.chmod(member.mode & 0o7777)


def _member(tar: tarfile.TarFile, name: str, where: str) -> IO[bytes]:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise GvmiError(f"{where}: {name!r} is missing (is it a `docker save` tarball?)")
    return f


def docker_image(tar: tarfile.TarFile, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one image of an open ``docker save`` tarball: (its ``manifest.json`` entry,
    its image config); :class:`GvmiError` if it is not one image's tarball."""
    try:
        manifest = json.load(_member(tar, "manifest.json", where))
        entry = manifest[0]
        config = json.load(_member(tar, entry["Config"], where))
        entry["Layers"] = list(entry["Layers"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise GvmiError(f"{where}: manifest.json is not a docker save manifest ({exc})") from None
    if len(manifest) != 1:
        raise GvmiError(f"{where}: holds {len(manifest)} images; save exactly one")
    return entry, config


def read_docker_archive(archive: Path, root: Path) -> Metadata:
    """Unpack a ``docker save`` tarball's filesystem into ``root``; return its run config.

    Reads the legacy ``manifest.json`` (which Docker writes also in its OCI
    layout) and the image config it names; layers are applied in order.
    """
    where = str(archive)
    try:
        outer = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise GvmiError(f"{archive}: not a readable tar archive ({exc})") from None
    with outer:
        entry, config = docker_image(outer, where)
        for i, name in enumerate(entry["Layers"], 1):
            # a layer blob is a tar or a gzipped one, read in place (seekable) from the outer tar
            apply_layer(root, _member(outer, name, where), f"{where}: layer {i} ({name})")
    run = config.get("config") or {}
    env: dict[str, str] = {}
    for item in run.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return Metadata(
        entrypoint=list(run.get("Entrypoint") or []),
        cmd=list(run.get("Cmd") or []),
        env=env,
        workingDir=str(run.get("WorkingDir") or "/"),
        user=str(run.get("User") or ""),
        labels={str(k): str(v) for k, v in (run.get("Labels") or {}).items()},
    )


def build_from_docker_archive(
    archive: Path, out: Path, override: dict[str, Any] | None = None
) -> str:
    """Build ``out`` from a ``docker save`` tarball; return its image hash.

    ``override`` replaces metadata fields (the CLI's ``--entrypoint`` and the like).
    """
    with tempfile.TemporaryDirectory(prefix="gvmi-root-") as tmp:
        root = Path(tmp).resolve()
        meta = read_docker_archive(archive, root)
        if override:
            meta = Metadata(**{**_metadata_json(meta), **override})
        return build_from_dir(root, out, meta)


__all__ = [
    "FOOTER_SIZE",
    "MAGIC",
    "VERSION",
    "GvmiError",
    "Image",
    "Metadata",
    "apply_layer",
    "build_from_dir",
    "build_from_docker_archive",
    "docker_image",
    "read",
    "read_docker_archive",
    "verify_squashfs",
]
