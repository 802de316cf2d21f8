"""gVMkit's guest assets: a kernel and the project's initramfs, named by hash.

``build_assets`` makes them (``gu vmkit assets``):

- the kernel: Debian's ``linux-image-*-cloud-amd64`` (a small kernel for
  virtual machines), from a ``.deb`` given or downloaded with
  ``apt-get download``, or a ``vmlinuz`` given as is;
- the initramfs: a static busybox, the kernel's virtio, squashfs and overlay
  modules (that kernel builds them as modules; ``MODULES`` is their load
  order), and the project's init (``runtimes/vm/init.sh``), packed as a
  reproducible ``newc`` cpio (times and owners zero, sorted), gzipped with no
  timestamp.

They are written as ``kernel-<hash16>`` and ``initramfs-<hash16>.img`` beside
an ``assets.json`` that names the current pair, so a rebuild never overwrites
the files a running VM uses. ``find_assets`` is what the driver reads.

Per VM, the driver appends a second, tiny cpio to the initramfs (the kernel
unpacks concatenated archives in order) holding ``/gu/run.sh``: what to run,
its environment, working dir, user and host name. The kernel command line
(2 KiB at most) stays short and secrets in ``env`` never reach it or ``ps``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Modules the init loads, in dependency order (their ``depends=`` lines).
MODULES: Final = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "squashfs",
    "overlay",
    "failover",
    "net_failover",
    "virtio_net",
)
#: The modules every VM needs (the rest, ``failover`` to ``virtio_net``, only a VM on a
#: VirtualNetwork): a kernel without them cannot boot a gVMkit guest.
REQUIRED_MODULES: Final = MODULES[: MODULES.index("overlay") + 1]
#: The Debian package that has the kernel (its dependency names the current version).
KERNEL_PACKAGE: Final = "linux-image-cloud-amd64"
INIT_SCRIPT: Final = Path(__file__).with_name("init.sh")
MANIFEST: Final = "assets.json"


class AssetsError(Exception):
    """Guest assets that cannot be built or found; the message says what to run."""


@dataclass(frozen=True)
class Assets:
    """The kernel and initramfs a VM boots, with their hashes."""

    kernel: Path
    initramfs: Path
    kernel_hash: str
    initramfs_hash: str
    kernel_version: str


def _sha3(data: bytes) -> str:
    return hashlib.sha3_256(data).hexdigest()


# ----------------------------------------------------------------- cpio


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One ``newc`` cpio record (times, owners and devices zero: reproducible)."""
    encoded = name.encode() + b"\0"
    header = b"070701" + b"".join(
        f"{v:08x}".encode() for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    )
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` archive of ``(path, mode, data)`` (dirs first, in the order given)."""
    body = b"".join(_cpio_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    return body + _cpio_entry("TRAILER!!!", 0)


DIR: Final = 0o040755
FILE: Final = 0o100644
EXEC: Final = 0o100755
LINK: Final = 0o120777


def gz(data: bytes) -> bytes:
    """gzip with no name and no timestamp (reproducible)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(data)
    return buf.getvalue()


# ------------------------------------------------------------ the pieces


def is_static_elf(path: Path) -> bool:
    """Whether ``path`` is a 64-bit ELF with no program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def find_busybox(given: Path | None = None) -> Path:
    """A static busybox (``--busybox``, or Debian's busybox-static)."""
    for candidate in ([given] if given else []) + [Path("/bin/busybox"), Path("/usr/bin/busybox")]:
        if candidate.is_file() and is_static_elf(candidate):
            return candidate
    raise AssetsError(
        "no static busybox found (the guest's shell and tools): "
        "apt-get install busybox-static, or pass --busybox FILE"
    )


def download_kernel_deb(into: Path) -> Path:
    """``apt-get download`` the current cloud kernel package into ``into``."""
    if shutil.which("apt-get") is None:
        raise AssetsError(
            "no kernel given and no apt-get to download one: pass --kernel vmlinuz "
            "(with --modules-dir) or --kernel-deb linux-image-…-cloud-amd64.deb"
        )
    depends = subprocess.run(
        ["apt-cache", "depends", KERNEL_PACKAGE], capture_output=True, text=True, check=False
    )
    names = [
        line.split(":", 1)[1].strip()
        for line in depends.stdout.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if not names:
        raise AssetsError(
            f"apt-cache knows no {KERNEL_PACKAGE} (run apt-get update, or pass --kernel-deb FILE)"
        )
    proc = subprocess.run(
        ["apt-get", "download", names[0]], cwd=into, capture_output=True, text=True, check=False
    )
    debs = sorted(into.glob("linux-image-*.deb"))
    if proc.returncode != 0 or not debs:
        raise AssetsError(
            f"apt-get download {names[0]} failed: {proc.stderr.strip()[-300:]} "
            "(pass --kernel-deb FILE if this machine has no package mirror)"
        )
    return debs[0]


def unpack_deb(deb: Path, into: Path) -> tuple[Path, Path, str]:
    """(vmlinuz, the modules' ``kernel/`` folder, the version) from a kernel ``.deb``."""
    if shutil.which("dpkg-deb") is None:
        raise AssetsError("dpkg-deb not found: unpack the kernel yourself and pass --kernel")
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssetsError(f"{deb}: not a kernel package ({proc.stderr.strip()[-300:]})")
    kernels = sorted((into / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise AssetsError(f"{deb}: holds no boot/vmlinuz-*: is it a linux-image package?")
    version = kernels[0].name.removeprefix("vmlinuz-")
    return kernels[0], into / "lib" / "modules" / version, version


def module_files(modules_dir: Path) -> dict[str, bytes]:
    """Each of :data:`MODULES` found under ``modules_dir`` (name → ``.ko`` bytes)."""
    found: dict[str, bytes] = {}
    wanted = set(MODULES)
    for path in sorted(modules_dir.rglob("*.ko*")):
        name = path.name.split(".ko")[0].replace("-", "_")
        if name not in wanted or name in found:
            continue
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            import lzma

            data = lzma.decompress(data)
        elif path.name.endswith(".ko.zst"):
            raise AssetsError(f"{path}: zstd-compressed modules are not supported; unpack them")
        found[name] = data
    return found


def initramfs(busybox: Path, modules: dict[str, bytes]) -> bytes:
    """The project's initramfs (gzipped newc cpio): busybox, modules, init."""
    entries: list[tuple[str, int, bytes]] = [
        (d, DIR, b"")
        for d in (
            "bin",
            "dev",
            "proc",
            "sys",
            "gu",
            "lib",
            "lib/modules",
            "mnt",
            "mnt/lower",
            "mnt/rw",
            "mnt/root",
        )
    ]
    entries.append(("bin/busybox", EXEC, busybox.read_bytes()))
    entries.append(("bin/sh", LINK, b"busybox"))
    for name in MODULES:
        if name in modules:
            entries.append((f"lib/modules/{name}.ko", FILE, modules[name]))
    entries.append(("init", EXEC, INIT_SCRIPT.read_bytes()))
    return pad4(gz(cpio(entries)))


def pad4(data: bytes) -> bytes:
    """``data`` padded with zeros to a multiple of 4 bytes: the kernel finds an archive
    appended after it (the per-VM run spec) only at a 4-byte boundary."""
    return data + b"\0" * (-len(data) % 4)


def run_cpio(script: str) -> bytes:
    """The per-VM archive appended to the initramfs: ``/gu/run.sh`` (mode 0600), and this
    package's ``/init`` again (the kernel unpacks appended archives over the first one), so
    a VM always runs the init its driver was written for, also with assets built before."""
    return cpio(
        [
            ("init", EXEC, INIT_SCRIPT.read_bytes()),
            ("gu", DIR, b""),
            ("gu/run.sh", 0o100600, script.encode()),
        ]
    )


# --------------------------------------------------------------- building


def build_assets(
    out: Path,
    *,
    kernel: Path | None = None,
    modules_dir: Path | None = None,
    kernel_deb: Path | None = None,
    busybox: Path | None = None,
) -> Assets:
    """Build the kernel and initramfs into ``out`` (see the module doc); return them."""
    out.mkdir(parents=True, exist_ok=True)
    bb = find_busybox(busybox)
    with tempfile.TemporaryDirectory(prefix="gu-vmkit-") as tmp:
        work = Path(tmp)
        if kernel is not None:
            if not kernel.is_file():
                raise AssetsError(f"--kernel {kernel}: no such file")
            vmlinuz, version = kernel, kernel.name.removeprefix("vmlinuz-")
            mods = modules_dir
        else:
            deb = kernel_deb or download_kernel_deb(work)
            if not deb.is_file():
                raise AssetsError(f"--kernel-deb {deb}: no such file")
            vmlinuz, mods, version = unpack_deb(deb, work / "deb")
        modules = module_files(mods) if mods is not None and mods.is_dir() else {}
        missing = [m for m in REQUIRED_MODULES if m not in modules]
        if missing and kernel is None:
            raise AssetsError(
                f"the kernel package lacks modules {', '.join(missing)}: use a cloud-amd64 kernel"
            )
        kernel_bytes = vmlinuz.read_bytes()
        image = initramfs(bb, modules)
    k_hash, i_hash = _sha3(kernel_bytes), _sha3(image)
    k_path, i_path = out / f"kernel-{k_hash[:16]}", out / f"initramfs-{i_hash[:16]}.img"
    for path, data in ((k_path, kernel_bytes), (i_path, image)):
        if not path.exists():
            tmp_path = path.with_name(path.name + ".tmp")
            tmp_path.write_bytes(data)
            os.replace(tmp_path, path)
    manifest = {
        "kernel": k_path.name,
        "kernelSha3": k_hash,
        "kernelVersion": version,
        "initramfs": i_path.name,
        "initramfsSha3": i_hash,
        "modules": sorted(modules),
    }
    tmp_manifest = out / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_manifest, out / MANIFEST)
    return Assets(k_path, i_path, k_hash, i_hash, version)


def find_assets(folder: Path) -> Assets:
    """The assets ``folder/assets.json`` names; :class:`AssetsError` saying what to run."""
    how = f"build them: gu vmkit assets -o {folder}"
    try:
        doc = json.loads((folder / MANIFEST).read_text())
        kernel, initrd = folder / doc["kernel"], folder / doc["initramfs"]
    except FileNotFoundError:
        raise AssetsError(f"no guest assets in {folder} ({MANIFEST} missing); {how}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AssetsError(f"{folder / MANIFEST} is unreadable ({exc}); {how}") from None
    for path in (kernel, initrd):
        if not path.is_file():
            raise AssetsError(f"{path} is missing; {how}")
    return Assets(
        kernel,
        initrd,
        str(doc.get("kernelSha3", "")),
        str(doc.get("initramfsSha3", "")),
        str(doc.get("kernelVersion", "")),
    )


__all__ = [
    "MODULES",
    "Assets",
    "AssetsError",
    "build_assets",
    "cpio",
    "find_assets",
    "initramfs",
    "is_static_elf",
    "pad4",
    "run_cpio",
]
