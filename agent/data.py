"""A placement's data on the provider: its inputs, made read-only, and its outputs folder.

Layout under ``<agent state>/data/<placement>/``::

    inputs/<i>/...     input i: the blob unpacked (``extract: true``) or ``inputs/<i>.blob``
    outputs/           the folder the workload writes its results into
    uploaded.json      the record of the upload (hash, size, files): uploaded once

Inputs come from the image cache (``agent.images``), which pulled them from the hub
and hashed them as they arrived; ``ImageCache.verify`` re-hashes a blob right before
it is exposed, so a tampered copy fails the placement (``InputHashMismatch``) before
anything runs. Files of an input are made read-only (0444, folders 0555): the runtimes
expose them read-only too where they can (Docker: a read-only bind mount).

The outputs folder is polled while the workload runs (``outputs_size``, bounded by its
``maxMiB``); when the workload ends, ``outputs_stream`` packs it as a reproducible tar
while it is sent to the hub (no copy on disk), and ``mark_uploaded`` records the upload,
so an agent restarted after ``kill -9`` uploads once. Everything here is removed with the placement (``remove``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runtimes.base import FolderMount
from specs.images import tar_stream
from specs.kinds import Workload

MIB = 1 << 20


class InputUnusable(Exception):
    """An input blob that cannot be exposed (not a tar with ``extract: true``, say)."""


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

    # ------------------------------------------------------------- finished

    def uploaded(self, name: str) -> dict[str, Any] | None:
        """The record of this placement's outputs upload, if it happened."""
        try:
            raw = json.loads((self.folder(name) / "uploaded.json").read_text())
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    def outputs_stream(self, name: str) -> tuple[int, Callable[[], Iterator[bytes]]]:
        """(the number of files, a maker of the reproducible tar stream of the outputs
        folder): packed while it is sent, never written here (PackError for a member a tar
        cannot hold, before any byte)."""
        out = self.outputs(name)
        out.mkdir(parents=True, exist_ok=True)
        files, _ = tar_stream(out)
        return files, lambda: tar_stream(out)[1]

    def mark_uploaded(self, name: str, record: dict[str, Any]) -> None:
        """Record the upload (atomically), then drop the outputs folder."""
        path = self.folder(name) / "uploaded.json"
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
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


__all__ = ["InputUnusable", "PlacementData"]
