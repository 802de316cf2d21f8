"""A placement's data on the provider: its inputs, made read-only, and its outputs folder.

Layout under ``<agent state>/data/<placement>/``::

    inputs/<i>/...     input i: the blob unpacked (``extract: true``) or ``inputs/<i>.blob``
    outputs/           the folder the workload writes its results into
    outputs.tar        what ``collect`` packed from it (reproducible), until uploaded
    uploaded.json      the record of the upload (hash, size, files): uploaded once

Inputs come from the image cache (``agent.images``), which pulled them from the hub
and hashed them as they arrived; ``ImageCache.verify`` re-hashes a blob right before
it is exposed, so a tampered copy fails the placement (``InputHashMismatch``) before
anything runs. Files of an input are made read-only (0444, folders 0555): the runtimes
expose them read-only too where they can (Docker: a read-only bind mount).

The outputs folder is polled while the workload runs (``outputs_size``, bounded by its
``maxMiB``); when the workload ends, ``collect`` packs it as a reproducible tar and
``mark_uploaded`` records the upload, so an agent restarted after ``kill -9`` uploads
once. Everything here is removed with the placement (``remove``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes.base import FolderMount
from specs.images import pack_tar
from specs.kinds import Workload

MIB = 1 << 20


class InputUnusable(Exception):
    """An input blob that cannot be exposed (not a tar with ``extract: true``, say)."""


@dataclass(frozen=True)
class Collected:
    """A placement's packed outputs, ready to upload."""

    path: Path
    hash: str
    size: int
    files: int

    def record(self) -> dict[str, Any]:
        return {"hash": self.hash, "size": self.size, "files": self.files}


class PlacementData:
    """The data folders of this agent's placements (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        return self.root / name

    def outputs(self, name: str) -> Path:
        return self.folder(name) / "outputs"

    # ---------------------------------------------------------------- start

    def prepare(
        self, name: str, workload: Workload, blob: dict[str, Path]
    ) -> tuple[FolderMount, ...]:
        """The folders to expose to a new run: every input (``blob``: hash → its verified
        file in the cache) read-only at its path, and an empty outputs folder."""
        top = self.folder(name)
        inputs = top / "inputs"
        _rmtree(inputs)
        inputs.mkdir(parents=True)
        mounts: list[FolderMount] = []
        for i, item in enumerate(workload.inputs):
            source = blob[item.hash]
            if item.extract:
                dest = inputs / str(i)
                dest.mkdir()
                _extract(source, dest, item.hash)
            else:
                dest = inputs / f"{i}.blob"
                _link_or_copy(source, dest)
            _read_only(dest)
            mounts.append(FolderMount(dest, item.path, read_only=True))
        if workload.outputs is not None:
            out = self.outputs(name)
            _rmtree(out)
            (top / "outputs.tar").unlink(missing_ok=True)
            (top / "uploaded.json").unlink(missing_ok=True)
            (top / "over-limit").unlink(missing_ok=True)
            out.mkdir(parents=True)
            out.chmod(0o777)  # the workload may run as another user (a container's)
            mounts.append(FolderMount(out, workload.outputs.path, read_only=False))
        return tuple(mounts)

    # -------------------------------------------------------------- running

    def outputs_size(self, name: str, stop_after: int | None = None) -> int:
        """Bytes under the outputs folder (files' sizes; stops counting past ``stop_after``)."""
        total = 0
        stack = [self.outputs(name)]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            stack.append(Path(entry.path))
                        elif stat.S_ISREG(st.st_mode):
                            total += st.st_size
                            if stop_after is not None and total > stop_after:
                                return total
            except (FileNotFoundError, NotADirectoryError):
                continue
        return total

    def mark_over_limit(self, name: str, message: str) -> None:
        """Remember that the workload wrote past its limit (across agent restarts)."""
        (self.folder(name) / "over-limit").write_text(message)

    def over_limit(self, name: str) -> str | None:
        try:
            return (self.folder(name) / "over-limit").read_text()
        except OSError:
            return None

    def discard_outputs(self, name: str) -> None:
        """Remove what the workload wrote (an over-limit run leaves nothing behind)."""
        _rmtree(self.outputs(name))
        (self.folder(name) / "outputs.tar").unlink(missing_ok=True)

    # ------------------------------------------------------------- finished

    def uploaded(self, name: str) -> dict[str, Any] | None:
        """The record of this placement's outputs upload, if it happened."""
        try:
            raw = json.loads((self.folder(name) / "uploaded.json").read_text())
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    def collect(self, name: str) -> Collected:
        """Pack the outputs folder into ``outputs.tar`` (reproducible) and hash it."""
        out = self.outputs(name)
        out.mkdir(parents=True, exist_ok=True)
        tar = self.folder(name) / "outputs.tar"
        digest, size, files = pack_tar(out, tar)
        return Collected(tar, digest, size, files)

    def mark_uploaded(self, name: str, collected: Collected) -> None:
        """Record the upload (atomically), then drop the packed copy and the folder."""
        record = self.folder(name) / "uploaded.json"
        tmp = record.with_suffix(".part")
        tmp.write_text(json.dumps(collected.record()))
        os.replace(tmp, record)
        collected.path.unlink(missing_ok=True)
        _rmtree(self.outputs(name))

    def remove(self, name: str) -> None:
        """Every trace of the placement's data."""
        _rmtree(self.folder(name))


def _extract(source: Path, dest: Path, blob: str) -> None:
    try:
        with tarfile.open(source, mode="r:*") as tar:
            tar.extractall(dest, filter="data")  # no absolute paths, no escapes, no devices
    except (tarfile.TarError, OSError) as exc:
        raise InputUnusable(
            f"input {blob} has extract: true but is no tar archive this agent can unpack "
            f"({exc}); push a folder (`gu blob push DIR`) or set extract: false"
        ) from None


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)  # the cache re-hashes it before each use: a change is caught
    except OSError:
        shutil.copyfile(source, dest)


def _read_only(path: Path) -> None:
    if path.is_file():
        path.chmod(0o444)
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o444)
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o555)
    path.chmod(0o555)


def _rmtree(path: Path) -> None:
    """Remove ``path`` even where read-only folders would stop ``shutil.rmtree``."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() or path.is_symlink():
        path.unlink()
        return
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    path.chmod(0o755)
    shutil.rmtree(path)


__all__ = ["Collected", "InputUnusable", "PlacementData"]
