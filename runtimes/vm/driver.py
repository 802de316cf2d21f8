"""gVMkit's driver: one QEMU process per placement, its guest talking over virtio-serial.

Per workload, ``state_dir/<name>/`` holds everything (so a restarted agent
finds it and ``remove`` deletes it):

    record.json     what was started: image, accel, boot deadline, stop requested
    initrd.img      the assets' initramfs + the per-VM ``/gu/run.sh`` archive (0600)
    qemu.pid        QEMU's pid (``-pidfile``; QEMU runs in its own session, so it
                    outlives the agent and a new agent adopts it by pid; the agent
                    that started it reaps it)
    qemu.err        QEMU's own stderr (why it did not start)
    qmp.sock        QMP (``qemu.qmp``): stop/cont/query-status/quit
    ctl.sock        the guest's control port: the host writes ``stop`` to it
    status          the guest's status port (a file chardev): ``started``, ``hb``
                    every 2 s, then ``exit N`` (or ``error …`` from the init)
    stdout, stderr  the guest's output ports, as files, written by QEMU itself:
                    they survive an agent restart and are what ``logs`` reads
    console.log     the guest kernel's serial console (for troubleshooting)
    data-<i>.sqfs   a Session input as a read-only squashfs disk (serial gu-data-<i>)
    outputs.disk    the raw disk the guest's init writes a tar of its outputs onto

The QEMU command line is built explicitly (``qemu_argv``): ``-nodefaults
-no-user-config``, no display, ``-nic none``; on a VirtualNetwork, one virtio-net
NIC with the assigned MAC on the network's per-host multicast bus
(``-netdev socket,mcast=GROUP:PORT,localaddr=127.0.0.1``), QEMU started inside the
network's namespace when the agent made one (``ip netns exec``; ``agent.vnet``), and
the guest's init sets the address and MTU (its route: the CIDR only); the
image file itself as a read-only raw virtio disk limited to the squashfs
(``offset=0,size=S``), ``-no-reboot`` and ``panic=-1`` so a guest that dies
ends QEMU, ``-sandbox on`` with spawning and resource control denied, and
when the agent is root ``-runas nobody`` (privilege elevation is then left to
the drop itself: the seccomp rule that denies it would kill QEMU's own
``setuid``); otherwise elevation denied too.

Everything ``inspect`` says is read from the world: QEMU alive (by pid and
its ``-name``), the status file, QMP's ``query-status``. A guest that never
says ``started`` before the boot deadline, or whose heartbeat stops while it
runs (not paused), is killed and reported Failed with a reason that says
which; a QEMU gone without an ``exit`` line is ``GuestCrashed``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from runtimes.base import (
    NO_ATTACHMENTS,
    Attachments,
    Capabilities,
    FolderMount,
    ImageRejected,
    NetworkAttachment,
    RuntimeFailure,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
    check_name,
    read_logs,
    read_tail,
)
from runtimes.vm.assets import Assets, AssetsError, find_assets, pad4, run_cpio
from specs import gvmi
from specs.logfmt import logfmt

if TYPE_CHECKING:
    from specs.kinds import Workload

log = logging.getLogger("gu.runtime.vm")

QEMU: Final = "qemu-system-x86_64"
ACCELS: Final = ("auto", "kvm", "tcg")
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: seconds a guest has to say "started" (TCG boots in ~2 s here; a loaded CI is slower)
BOOT_DEADLINE: Final = 90.0
#: seconds without a heartbeat line (the guest writes one every 2 s) before it is hung
HEARTBEAT_DEADLINE: Final = 30.0
#: seconds a KVM boot probe may take before KVM counts as not booting
KVM_PROBE_DEADLINE: Final = 6.0
MIN_MEMORY_MIB: Final = 128
_MIB: Final = 1 << 20
APPEND: Final = "console=ttyS0 quiet loglevel=3 panic=-1"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _parse(t: str | None) -> datetime | None:
    return datetime.fromisoformat(t.replace("Z", "+00:00")) if t else None


def sh_quote(value: str) -> str:
    """``value`` as one single-quoted sh word."""
    return "'" + value.replace("'", "'\\''") + "'"


#: Sets ``$u`` and ``$g`` from an image's ``user`` (``NAME|UID[:GROUP|GID]``, as Docker
#: reads it), inside the guest's root: names from its ``/etc/passwd`` and ``/etc/group``, a
#: numeric uid that has no passwd line gets gid 0. Busybox has no ``chpst``; its ``nsenter``
#: with no namespace named drops supplementary groups, then sets the gid and the uid.
AS_USER: Final = (
    "gu_user() { bb=/.gu/busybox; u=${1%%:*}; g=; case $1 in *:*) g=${1#*:};; esac; "
    "case $u in *[!0-9]*) f=1;; *) f=3;; esac; "
    'p=$($bb awk -F: -v f=$f -v n="$u" \'$f==n{print $3":"$4; exit}\' /etc/passwd 2>&-); '
    'if [ -z "$p" ]; then [ $f = 3 ] || { echo "gu: the image\'s user $u is not in its '
    '/etc/passwd: add it, or give a numeric uid" >&2; exit 126; }; p=$u:0; fi; '
    'u=${p%%:*}; [ -n "$g" ] || g=${p#*:}; '
    "case $g in *[!0-9]*) n=$g; g=$($bb awk -F: -v n=\"$n\" '$1==n{print $3; exit}' "
    '/etc/group 2>&-); [ -n "$g" ] || { echo "gu: the image\'s group $n is not in its '
    '/etc/group: add it, or give a numeric gid" >&2; exit 126; };; esac; }; gu_user'
)


def data_script(folders: tuple[FolderMount, ...], outputs_mib: int, workdir: str = "/") -> str:
    """The ``gu_mounts`` function of ``/gu/run.sh``: each input's squashfs disk (found by
    its serial ``gu-data-<i>``) mounted read-only under ``/.gu/data/<i>`` with a symlink at
    its path; the outputs path a tmpfs of ``outputs_mib`` (+1 MiB, so that writing past the
    limit is seen), which the init packs onto the ``gu-outputs`` disk when the entrypoint
    ends. Paths are under the image's working directory ``workdir``, as in a container.
    Empty without folders."""
    if not folders:
        return ""
    lines = ["gu_mounts() {"]
    for i, f in enumerate(folders):
        inside_root = posixpath.join("/mnt/root", (workdir or "/").lstrip("/"), f.path)
        target = sh_quote(inside_root)
        parent = sh_quote(posixpath.dirname(inside_root))
        if f.read_only:
            where = f"/mnt/root/.gu/data/{i}"
            inside = f"/.gu/data/{i}" + ("" if Path(f.source).is_dir() else f"/{i}.blob")
            lines += [
                f"  dev=$(disk gu-data-{i}) || die 'no disk for input {i}'",
                f"  $bb mkdir -p {where} {parent}",
                f"  $bb mount -t squashfs -o ro $dev {where} || die 'cannot mount input {i}'",
                f"  $bb ln -s {inside} {target} || die 'the image has {f.path} already'",
            ]
        else:
            lines += [
                f"  $bb mkdir -p {target}",
                f"  $bb mount -t tmpfs -o size={outputs_mib + 1}m,mode=0777 tmpfs {target} "
                "|| die 'cannot mount the outputs tmpfs'",
                f"  GU_OUT_PATH={target}; GU_OUT_MAX_KB={outputs_mib * 1024}",
            ]
    lines += ["}"]
    return "\n".join(lines) + "\n"


def run_script(
    argv: list[str],
    env: dict[str, str],
    workdir: str,
    user: str,
    hostname: str,
    mounts: str = "",
    network: NetworkAttachment | None = None,
) -> str:
    """The per-VM ``/gu/run.sh`` the init sources: ``gu_run`` chroots and execs ``argv``;
    ``mounts`` the ``gu_mounts`` function of ``data_script``."""
    env_words = " ".join(sh_quote(f"{k}={v}") for k, v in sorted(env.items()))
    as_user = ""
    if user and user not in ("root", "0", "0:0"):
        as_user = f"{AS_USER} {sh_quote(user)}; exec /.gu/busybox nsenter -F -S $u -G $g "
    inner = f'cd -- "$1" || exit 126; shift; {as_user or "exec "}"$@"'
    words = " ".join(sh_quote(a) for a in argv)
    return (
        f"GU_HOSTNAME={sh_quote(hostname)}\n"
        f"GU_NET_ADDRESS={sh_quote(network.address if network else '')}\n"
        f"GU_NET_MTU={network.mtu if network else 1500}\n"
        f"{mounts}"
        "gu_run() {\n"
        f"  exec /bin/busybox env -i {env_words} /bin/busybox chroot /mnt/root "
        f"/.gu/busybox sh -c {sh_quote(inner)} gu {sh_quote(workdir or '/')} {words}\n"
        "}\n"
    )


def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or "").splitlines()[0] if out.stdout else ""
    return first.removeprefix("QEMU emulator version ").split(" ")[0]


def boot_argv(qemu: str, accel: str, memory_mib: int, kernel: Path, initrd: Path) -> list[str]:
    """What every boot of the assets has, the workload's and the KVM probe's alike: no
    defaults, no display, no NIC, the kernel and initrd, ``-no-reboot``, a virtio-serial
    bus for the guest's ports (and ``-cpu max`` under KVM)."""
    argv = [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-accel",
        accel,
        "-m",
        str(max(MIN_MEMORY_MIB, memory_mib)),
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        APPEND,
        "-no-reboot",
        "-nic",
        "none",
        "-device",
        "virtio-serial-pci",
    ]
    if accel == "kvm":
        argv += ["-cpu", "max"]
    return argv


def file_port(d: Path, port: str) -> list[str]:
    """A guest port ``gu.<port>`` whose output QEMU appends to the file ``d/<port>``."""
    return [
        "-chardev",
        f"file,id={port},path={d / port},append=on",
        "-device",
        f"virtserialport,chardev={port},name=gu.{port}",
    ]


def qemu_argv(
    qemu: str,
    d: Path,
    name: str,
    assets: Assets,
    image: gvmi.Image,
    accel: str,
    cpu: float,
    memory_mib: int,
    disks: list[tuple[Path, str, bool]] = [],  # noqa: B006 (never changed)
    network: NetworkAttachment | None = None,
) -> list[str]:
    """The whole QEMU command line for one workload (see the module doc); ``disks`` are
    (file, serial, read_only) of the data disks (inputs, outputs)."""
    argv = boot_argv(qemu, accel, memory_mib, assets.kernel, d / "initrd.img")
    argv += [
        "-name",
        f"gu-{name},process=gu-{name}",
        "-pidfile",
        str(d / "qemu.pid"),
        "-smp",
        str(max(1, -(-int(cpu * 1000) // 1000))),
        "-serial",
        f"file:{d / 'console.log'}",
        "-drive",
        f"file={image.path},if=none,id=root,format=raw,readonly=on,offset=0,"
        f"size={image.squashfs_size}",
        "-device",
        "virtio-blk-pci,drive=root",
        "-qmp",
        f"unix:{d / 'qmp.sock'},server=on,wait=off",
    ]
    if network is not None:
        # the VM's one NIC, on its network's bus: a multicast socket bound to the loopback
        # (of the network's own namespace where the agent made one); no other NIC, no route
        argv += [
            "-netdev",
            f"socket,id=vnet,mcast={network.bus},localaddr=127.0.0.1",
            "-device",
            f"virtio-net-pci,netdev=vnet,mac={network.mac}",
        ]
    for i, (path, serial, read_only) in enumerate(disks):
        argv += [
            "-drive",
            f"file={path},if=none,id=data{i},format=raw" + (",readonly=on" if read_only else ""),
            "-device",
            f"virtio-blk-pci,drive=data{i},serial={serial}",
        ]
    for port in ("status", "stdout", "stderr"):
        argv += file_port(d, port)
    argv += [
        "-chardev",
        f"socket,id=control,path={d / 'ctl.sock'},server=on,wait=off",
        "-device",
        "virtserialport,chardev=control,name=gu.control",
    ]
    if os.geteuid() == 0:
        # QEMU drops to nobody after setting up, which the seccomp filter's
        # elevateprivileges=deny would kill it for (SIGSYS); once it is nobody, with
        # no capability left, it cannot become root again anyway
        argv += ["-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
        argv += ["-runas", "nobody"]
    else:
        argv += [
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
    return argv


class Qmp:
    """A few QMP commands over ``qemu.qmp``'s synchronous client, one connection each."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def cmd(self, command: str, **args: Any) -> Any:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        qmp = QEMUMonitorProtocol(str(self.path))
        try:
            qmp.connect(negotiate=True)
            qmp.settimeout(self.timeout)
            return qmp.cmd(command, **args)
        finally:
            with contextlib.suppress(Exception):
                qmp.close()


class VmRuntime:
    """QEMU VMs behind the Runtime interface (see the module doc)."""

    name = "vm"

    def __init__(
        self,
        state_dir: Path,
        *,
        assets_dir: Path | None = None,
        accel: str = "auto",
        qemu: str | None = None,
        boot_deadline: float = BOOT_DEADLINE,
        heartbeat_deadline: float = HEARTBEAT_DEADLINE,
    ) -> None:
        if accel not in ACCELS:
            raise RuntimeFailure(f"--vm-accel {accel!r}: use one of {', '.join(ACCELS)}")
        self.state_dir = state_dir
        self.assets_dir = assets_dir or state_dir / "assets"
        self.accel_wanted = accel
        self.qemu = qemu or shutil.which(QEMU) or f"/usr/bin/{QEMU}"
        self.boot_deadline = boot_deadline
        self.heartbeat_deadline = heartbeat_deadline
        self._accel: str | None = None  # chosen by fingerprint()
        self._caps: Capabilities | None = None

    # ------------------------------------------------------------ fingerprint

    def fingerprint(self) -> Capabilities:
        """QEMU present, assets built, and an accelerator that boots (probed once)."""
        if self._caps is None:
            self._caps = self._fingerprint()
        return self._caps

    def _fingerprint(self) -> Capabilities:
        if not os.access(self.qemu, os.X_OK):
            return Capabilities(
                False,
                reason=f"{QEMU} not found: apt-get install qemu-system-x86 (or qemu on macOS)",
            )
        version = qemu_version(self.qemu)
        try:
            assets = find_assets(self.assets_dir)
        except AssetsError as exc:
            return Capabilities(False, version=version, reason=str(exc))
        details = {
            "kernel": assets.kernel_version,
            "kernelSha3": assets.kernel_hash[:16],
            "initramfsSha3": assets.initramfs_hash[:16],
        }
        kvm_here = os.access("/dev/kvm", os.R_OK | os.W_OK)
        if self.accel_wanted == "tcg":
            self._accel = "tcg"
        elif not kvm_here:
            if self.accel_wanted == "kvm":
                return Capabilities(
                    False,
                    version=version,
                    reason="--vm-accel kvm but /dev/kvm is missing or not accessible",
                    details=details,
                )
            self._accel = "tcg"
            details["accelNote"] = "no /dev/kvm: tcg"
        else:
            booted, why = self._probe("kvm", assets)
            if booted:
                self._accel = "kvm"
            elif self.accel_wanted == "kvm":
                log.error(logfmt(event="vm_kvm_unusable", reason=why))
                return Capabilities(
                    False,
                    version=version,
                    reason=f"--vm-accel kvm but a KVM guest does not boot here ({why}); "
                    "use --vm-accel tcg or auto",
                    details=details,
                )
            else:
                self._accel = "tcg"
                details["accelNote"] = f"kvm probe failed ({why}): tcg"
        log.info(logfmt(event="vm_accel", accel=self._accel, note=details.get("accelNote")))
        return Capabilities(
            True, version=version, accel=self._accel, suspend_keeps_memory=True, details=details
        )

    def _probe(self, accel: str, assets: Assets) -> tuple[bool, str]:
        """Boot the assets under ``accel`` with no disk: the init reaching its first check
        ("no image disk") proves a guest boots. (ok, why not)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gu-vm-probe-") as tmp:
            d = Path(tmp)
            (d / "initrd.img").write_bytes(pad4(assets.initramfs.read_bytes()) + run_cpio(""))
            argv = boot_argv(
                self.qemu, accel, MIN_MEMORY_MIB, assets.kernel, d / "initrd.img"
            ) + file_port(d, "status")
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + KVM_PROBE_DEADLINE
            try:
                while time.monotonic() < deadline:
                    if (d / "status").exists() and (d / "status").read_bytes():
                        return True, ""
                    if proc.poll() is not None:
                        err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                        return False, f"QEMU exited {proc.returncode}: {err.strip()[-200:]}"
                    time.sleep(0.05)
                return False, f"no guest output within {KVM_PROBE_DEADLINE:.0f} s"
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()

    # ---------------------------------------------------------------- images

    def prepare(self, image_path: Path, image_hash: str) -> None:
        try:
            gvmi.read(image_path)
        except gvmi.GvmiError as exc:
            raise ImageRejected(str(exc)) from None

    # ----------------------------------------------------------------- start

    def _dir(self, name: str) -> Path:
        return self.state_dir / check_name(name)

    def start(
        self,
        name: str,
        workload: Workload,
        image_path: Path,
        attachments: Attachments = NO_ATTACHMENTS,
    ) -> WorkloadStatus:
        d = self._dir(name)
        if d.exists():
            raise WorkloadExists(self.name, name)
        caps = self.fingerprint()
        if not caps.available or self._accel is None:
            raise StartFailed(f"vm runtime unavailable: {caps.reason}")
        try:
            image = gvmi.read(image_path)
        except gvmi.GvmiError as exc:
            raise ImageRejected(str(exc)) from None
        argv = image.metadata.argv(list(workload.command), list(workload.args))
        if not argv:
            raise StartFailed(
                "the image has no entrypoint or cmd and the workload no command: "
                "give `command` in the Session, or build with --entrypoint"
            )
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", **image.metadata.env, **workload.env}
        assets = find_assets(self.assets_dir)
        d.mkdir(parents=True, mode=0o700)
        try:
            outputs_mib = workload.outputs.maxMiB if workload.outputs is not None else 0
            disks = self._data_disks(d, attachments.folders, outputs_mib)
            script = run_script(
                argv,
                env,
                image.metadata.workingDir,
                image.metadata.user,
                name,
                data_script(attachments.folders, outputs_mib, image.metadata.workingDir),
                attachments.network,
            )
            initrd = d / "initrd.img"
            with open(os.open(initrd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(pad4(assets.initramfs.read_bytes()))  # (assets of any build)
                f.write(run_cpio(script))
            for port in ("status", "stdout", "stderr", "console.log"):
                (d / port).touch(mode=0o644)
            record = {
                "name": name,
                "image": str(image_path),
                "accel": self._accel,
                "createdAt": _iso(_now()),
                "bootDeadline": self.boot_deadline,
                "heartbeatDeadline": self.heartbeat_deadline,
                "memoryMiB": workload.resources.memoryMiB,
                "cpu": workload.resources.cpu,
                "netns": attachments.network.netns if attachments.network else None,
                "outputsDir": next(
                    (str(f.source) for f in attachments.folders if not f.read_only), None
                ),
            }
            (d / "record.json").write_text(json.dumps(record))
            cmd = qemu_argv(
                self.qemu,
                d,
                name,
                assets,
                image,
                self._accel,
                workload.resources.cpu,
                workload.resources.memoryMiB,
                disks,
                attachments.network,
            )
            if attachments.network is not None and attachments.network.netns:
                cmd = ["ip", "netns", "exec", attachments.network.netns, *cmd]
            # (as root QEMU becomes nobody only after it opened every file above, so the
            # folder stays 0700 and the files the agent's)
            with open(d / "qemu.err", "wb") as err:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,  # not in the agent's process group
                )
            for _ in range(200):  # bounded: 10 s for QEMU to come up (pidfile) or fail
                if proc.poll() is not None or (d / "qemu.pid").exists():
                    break
                time.sleep(0.05)
            if proc.poll() is not None or not (d / "qemu.pid").exists():
                proc.kill()
                proc.wait()
                why = (d / "qemu.err").read_text(errors="replace").strip()[-400:]
                raise StartFailed(f"QEMU did not start (exit {proc.returncode}): {why}")
            log.info(logfmt(event="vm_started", name=name, accel=self._accel, cmd=shlex.join(cmd)))
        except BaseException:
            self._kill(d)
            shutil.rmtree(d, ignore_errors=True)
            raise
        return self.inspect(name)

    def _data_disks(
        self, d: Path, folders: tuple[FolderMount, ...], outputs_mib: int
    ) -> list[tuple[Path, str, bool]]:
        """The disks of the exposed folders: a squashfs per input (built from the agent's
        verified copy, uncompressed: it is read once) and, for the outputs, an empty raw
        disk the guest's init writes a tar of them onto (read back by ``_take_outputs``)."""
        disks: list[tuple[Path, str, bool]] = []
        for i, f in enumerate(folders):
            if f.read_only:
                disk = d / f"data-{i}.sqfs"
                source = Path(f.source)
                if not source.is_dir():  # one file: a squashfs holding it as <i>.blob
                    staged = d / f"data-{i}"
                    staged.mkdir()
                    os.link(source, staged / f"{i}.blob")
                    source = staged
                done = subprocess.run(
                    [gvmi.mksquashfs(), str(source), str(disk), "-noappend", "-all-root",
                     "-no-xattrs", "-no-progress", "-quiet", "-noI", "-noD", "-noF", "-noX"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    raise StartFailed(f"cannot pack input {i} for the VM: {done.stderr[-300:]}")
                disks.append((disk, f"gu-data-{i}", True))
            else:
                disk = d / "outputs.disk"
                with open(disk, "wb") as fh:  # sparse: room for a tar of the limit
                    fh.truncate((outputs_mib + outputs_mib // 8 + 2) * _MIB)
                disks.append((disk, "gu-outputs", False))
        return disks

    def _take_outputs(self, d: Path, rec: dict[str, Any]) -> None:
        """Once: unpack the tar the guest wrote onto its outputs disk into the agent's
        outputs folder (the agent packs and uploads it from there)."""
        target = rec.get("outputsDir")
        if not target or rec.get("outputsTaken"):
            return
        try:
            with tarfile.open(d / "outputs.disk", mode="r:") as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            log.warning(logfmt(event="vm_outputs_unreadable", name=d.name, error=str(exc)))
        self._update(d, rec, outputsTaken=True)

    # --------------------------------------------------------------- observe

    def _record(self, name: str) -> tuple[Path, dict[str, Any]]:
        d = self._dir(name)
        try:
            return d, json.loads((d / "record.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise WorkloadNotFound(self.name, name) from None

    def _pid(self, d: Path) -> int | None:
        """QEMU's pid if it still runs (checked by its name, not only the number)."""
        try:
            pid = int((d / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        # this agent started it: reap it once it ended (after an agent restart, QEMU's
        # parent is init, which reaps it)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if f"gu-{d.name},".encode() not in cmdline:
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    @staticmethod
    def _status_lines(d: Path) -> list[str]:
        try:
            return (d / "status").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def _update(self, d: Path, rec: dict[str, Any], **fields: Any) -> None:
        rec.update(fields)
        tmp = d / "record.json.tmp"
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, d / "record.json")

    def inspect(self, name: str) -> WorkloadStatus:
        d, rec = self._record(name)
        pid = self._pid(d)
        lines = self._status_lines(d)
        started = next((ln for ln in lines if ln.startswith("started")), None)
        created = _parse(rec.get("createdAt"))
        started_at = _parse(rec.get("startedAt"))
        if started and started_at is None:
            started_at = _now()
            self._update(d, rec, startedAt=_iso(started_at))
        finished_at = _parse(rec.get("finishedAt"))
        exit_line = next((ln for ln in reversed(lines) if ln.startswith("exit ")), None)
        error_line = next((ln for ln in lines if ln.startswith("error ")), None)
        verdict = rec.get("verdict")

        def done(state: str, code: int | None, reason: str, message: str) -> WorkloadStatus:
            nonlocal finished_at
            if finished_at is None:
                finished_at = _now()
                self._update(d, rec, finishedAt=_iso(finished_at))
            return WorkloadStatus(
                state, code, reason, message, None, started_at or created, finished_at
            )

        if verdict:  # a failure the driver decided (boot deadline, hung guest)
            return done("Failed", None, verdict["reason"], verdict["message"])
        if exit_line is not None:
            code = int(exit_line.split()[1]) if exit_line.split()[1:] else -1
            if "outputs-over" in lines:
                return done("Failed", code, "OutputLimitExceeded",
                            "the workload wrote more than its outputs.maxMiB: stopped")  # fmt: skip
            if "outputs-ok" in lines:
                self._take_outputs(d, rec)
            if rec.get("stopRequested"):
                return done("Stopped", code, "Stopped", f"stopped; the entrypoint exited {code}")
            if code == 0:
                return done("Succeeded", 0, "Completed", "the entrypoint exited 0")
            return done("Failed", code, "Error", f"the entrypoint exited {code}")
        if error_line is not None:
            self._kill(d)
            return done("Failed", None, "GuestInitFailed", error_line.removeprefix("error "))
        if pid is None:
            if rec.get("stopRequested"):
                return done("Stopped", None, "Stopped", "stopped (the VM was powered off)")
            tail = self._console_tail(d)
            with contextlib.suppress(OSError):
                qerr = (d / "qemu.err").read_text(errors="replace").strip()[-300:]
                tail = f"{qerr}; {tail}" if qerr else tail
            return done(
                "Failed",
                None,
                "GuestCrashed",
                "QEMU exited without the guest's exit code"
                + (f"; console: {tail}" if tail else ""),
            )
        paused = self._paused(d)
        now = _now()
        if started is None:
            deadline = float(rec.get("bootDeadline") or self.boot_deadline)
            if created and not paused and (now - created).total_seconds() > deadline:
                return self._fail(
                    d, rec, "BootTimeout", f"no sign of the guest in {deadline:.0f} s"
                )
            return WorkloadStatus("Starting", None, "Booting", "the VM is booting", pid, created)
        if paused:
            return WorkloadStatus(
                "Suspended", None, "Suspended", "the VM is paused (QMP stop)", pid, started_at
            )
        last_beat = (d / "status").stat().st_mtime
        resumed = float(rec.get("resumedAt") or 0)
        beat_deadline = float(rec.get("heartbeatDeadline") or self.heartbeat_deadline)
        if time.time() - max(last_beat, resumed) > beat_deadline:
            return self._fail(
                d, rec, "GuestHung", f"no heartbeat from the guest for {beat_deadline:.0f} s"
            )
        return WorkloadStatus("Running", None, "Started", "the VM runs", pid, started_at)

    def _fail(self, d: Path, rec: dict[str, Any], reason: str, message: str) -> WorkloadStatus:
        self._kill(d)
        self._update(d, rec, verdict={"reason": reason, "message": message})
        return self.inspect(d.name)

    def _console_tail(self, d: Path) -> str:
        """The console's last lines, led by the kernel's panic line when it printed one
        (its register dump that follows says less to a user than the panic's cause)."""
        try:
            lines = [
                x.strip()
                for x in read_tail(d / "console.log", 16384).decode(errors="replace").splitlines()
                if x.strip()
            ]
        except OSError:
            return ""
        panic = next((x for x in lines if "Kernel panic" in x), "")
        tail = " | ".join(lines)[-300:]
        return (panic[:200] + " … " + tail[-100:]) if panic else tail

    def _paused(self, d: Path) -> bool:
        try:
            answer = Qmp(d / "qmp.sock").cmd("query-status")
        except Exception:
            return False
        return bool(answer.get("status") == "paused")

    # --------------------------------------------------------------- control

    def suspend(self, name: str) -> WorkloadStatus:
        d, _ = self._record(name)
        status = self.inspect(name)
        if status.finished or status.state == "Suspended":
            return status
        Qmp(d / "qmp.sock").cmd("stop")
        return self.inspect(name)

    def resume(self, name: str) -> WorkloadStatus:
        d, rec = self._record(name)
        status = self.inspect(name)
        if status.state != "Suspended":
            return status
        Qmp(d / "qmp.sock").cmd("cont")
        self._update(d, rec, resumedAt=time.time())
        return self.inspect(name)

    def stop(self, name: str, grace: float = 10.0) -> WorkloadStatus:
        d, rec = self._record(name)
        status = self.inspect(name)
        if status.finished:
            return status
        self._update(d, rec, stopRequested=True)
        if status.state == "Suspended":
            with contextlib.suppress(Exception):
                Qmp(d / "qmp.sock").cmd("cont")
        sent = False
        if status.state != "Starting":
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(d / "ctl.sock"))
                s.sendall(b"stop\n")
                sent = True
                deadline = time.monotonic() + max(0.0, grace)
                while time.monotonic() < deadline and self._pid(d) is not None:
                    time.sleep(0.05)
        if not sent or self._pid(d) is not None:
            with contextlib.suppress(Exception):
                Qmp(d / "qmp.sock").cmd("quit")
            for _ in range(40):  # bounded: 2 s for QEMU to go
                if self._pid(d) is None:
                    break
                time.sleep(0.05)
            self._kill(d)
        return self.inspect(name)

    def _kill(self, d: Path) -> None:
        pid = self._pid(d)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):  # bounded: 5 s
            if self._pid(d) is None:
                return
            time.sleep(0.05)

    def logs(self, name: str, tail_bytes: int | None = None) -> bytes:
        d, _ = self._record(name)
        return read_logs(d / "stdout", d / "stderr", tail_bytes)

    def remove(self, name: str) -> None:
        d = self._dir(name)
        if not d.exists():
            return
        self._kill(d)
        shutil.rmtree(d, ignore_errors=True)

    def adopt(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.state_dir.iterdir()
            if p.is_dir() and p.name != "assets" and (p / "record.json").exists()
        )


__all__ = ["ACCELS", "VmRuntime", "boot_argv", "qemu_argv", "run_script"]
