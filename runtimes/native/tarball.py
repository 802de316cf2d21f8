"""The native image: a ``.tar.gz`` of a program folder, checked, unpacked, its command found.

Nothing in an image may write outside its folder or create a device: tarfile's
``data`` filter does most of it, and :func:`check_members` refuses the whole
image for what the filter would silently fix (absolute names), since such a
tarball was not built for us. :func:`resolve_command` finds the program the
way a user expects (``./run.sh`` and ``bin/prog`` inside the image, PATH
entries relative to it) and says how to fix a command that is not there.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from runtimes.base import ImageRejected, StartFailed

EMPTY_COMMAND = "workload.command is empty: name the program to run, e.g. command: ['./run.sh']"


def check_members(image: Path, members: Sequence[tarfile.TarInfo]) -> None:
    """Refuse members that could write outside the folder or create devices.

    tarfile's ``data`` filter catches most of this too, but it silently strips
    a leading '/' where we want to refuse the whole image: a tarball with
    absolute names was not built for us.
    """
    for m in members:
        parts = PurePosixPath(m.name).parts
        why = None
        if m.name.startswith("/"):
            why = "has an absolute path"
        elif ".." in parts:
            why = "has a '..' component that leaves the image folder"
        elif m.ischr() or m.isblk() or m.isfifo():
            why = "is a device file or FIFO"
        elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            why = "is of an unsupported type"
        if why:
            raise ImageRejected(
                f"image {image.name}: member {m.name!r} {why}; rebuild the tarball from "
                "inside the program folder (tar -C DIR -czf image.tar.gz .)"
            )


def open_checked(image: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    try:
        # Handed to the caller, which closes it.
        tar = tarfile.open(image, "r:*")  # noqa: SIM115
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ImageRejected(f"image {image.name} is not a readable tar archive: {exc}") from exc
    try:
        members = tar.getmembers()
        check_members(image, members)
    except ImageRejected:
        tar.close()
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        tar.close()
        raise ImageRejected(f"image {image.name} is a damaged tar archive: {exc}") from exc
    return tar, members


def unpack(image: Path, dest: Path) -> None:
    tar, members = open_checked(image)
    with tar:
        try:
            tar.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise ImageRejected(f"image {image.name} was refused: {exc}") from exc
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ImageRejected(f"image {image.name} is a damaged tar archive: {exc}") from exc
        except OSError as exc:
            raise StartFailed(f"cannot unpack image {image.name} into {dest}: {exc}") from exc


def resolve_command(command: list[str], root: Path, env: dict[str, str]) -> str:
    """The executable to run for ``command[0]``; raises :class:`StartFailed` with the fix."""
    if not command:
        raise StartFailed(EMPTY_COMMAND)
    prog = command[0]
    if "/" in prog and not prog.startswith("/"):
        target = (root / prog).resolve()
        if not target.is_relative_to(root.resolve()):
            raise StartFailed(f"command {prog!r} points outside the image folder")
        where = "in the image"
    elif prog.startswith("/"):
        target = Path(prog)
        where = "on this provider"
    else:
        # PATH entries may be relative to the image folder (e.g. PATH=bin:/usr/bin).
        dirs = [str(root / d) if not d.startswith("/") else d for d in env["PATH"].split(":") if d]
        found = shutil.which(prog, path=os.pathsep.join(dirs))
        if found is None:
            raise StartFailed(
                f"command {prog!r} was not found on PATH={env['PATH']}; use './{prog}' for a "
                "program inside the image, or an absolute path"
            )
        return found
    if not target.is_file():
        raise StartFailed(f"command {prog!r} was not found {where}")
    if not os.access(target, os.X_OK):
        raise StartFailed(
            f"command {prog!r} is not executable: set its x bit (chmod +x) before packing"
        )
    return str(target)
