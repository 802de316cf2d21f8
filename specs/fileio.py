"""Durable small-file writes, shared by the hub, the agent and the runtimes.

The files the parts of gu keep between runs — keys, the agent's record, the
client config, a workload's record and exit code — are rewritten whole. A
crash or a power cut must leave either the old file or the whole new one,
never a torn or empty one: write a temp file in the same folder, fsync it,
rename it over the old one (atomic), and fsync the folder (so the rename
itself survives a power cut). It lives in ``specs``, the one package every
other may import, beside the key and image formats that need it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``, whatever the umask) atomically and
    durably: a reader, or the next start after a crash, sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # created ``mode`` & ~umask: set exactly what was asked
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
