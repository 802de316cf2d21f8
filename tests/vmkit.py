"""The vm runtime's real parts for tests: QEMU and the guest assets, and busybox roots.

``vm_assets()`` returns a folder with built assets: ``$GU_VMKIT_ASSETS`` if set,
else ``.venv/vmkit-assets`` in the checkout, built once (``gu vmkit assets``:
the cloud kernel downloaded with ``apt-get download``, busybox-static). Without
QEMU or mksquashfs the VM tests skip, except under ``CI``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from runtimes.vm.assets import AssetsError, build_assets, find_assets

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")


def need(tool: str) -> None:
    if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
        message = f"{tool} is missing (make system installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def vm_assets() -> Path:
    need("qemu-system-x86_64")
    need("mksquashfs")
    folder = Path(os.environ.get("GU_VMKIT_ASSETS") or ROOT / ".venv" / "vmkit-assets")
    try:
        find_assets(folder)
    except AssetsError:
        try:
            build_assets(folder)
        except AssetsError as exc:
            if os.environ.get("CI"):
                pytest.fail(str(exc))
            pytest.skip(str(exc))
    return folder


def busybox_root(folder: Path, script: str) -> Path:
    """A guest root: a static busybox as /bin/sh and ``script`` as /run.sh."""
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, folder / "bin" / "busybox")
    if not (folder / "bin" / "sh").exists():
        (folder / "bin" / "sh").symlink_to("busybox")
    (folder / "run.sh").write_text("#!/bin/sh\n" + script)
    (folder / "run.sh").chmod(0o755)
    return folder


def qemu_pids() -> set[int]:
    """The pids of every QEMU process on this machine now."""
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True)
    return {int(x) for x in out.stdout.split()}
