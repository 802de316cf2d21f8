"""The Docker driver: ``DockerRuntime``, one container per placement on a real engine.

Flow of one workload named ``N``:

1. ``prepare(image)`` reads the image id (the digest of its config) from the
   verified ``docker save`` tarball (``runtimes.docker.tarball``), loads the
   tarball into the engine unless the engine already holds that id, and checks
   that the engine reports exactly that id afterwards. The id is remembered
   (``images.json`` in the driver's folder) with whether we loaded it.
2. ``start`` creates container ``gu-N`` **from the image id**, never a tag: a
   tag re-pointed on this engine between check and use changes nothing. The
   container is labelled with placement, session, node and this driver's
   state dir (so ``adopt()`` finds exactly ours), gets the CPU, memory (no
   swap) and pids limits, ``network_mode: none`` (no NIC but ``lo``), every
   capability dropped, ``no-new-privileges``, never privileged, and no restart
   policy: restarts are the agent's (``restartPolicy``), not Docker's. PID 1 is
  docker-init, so ``stop``'s SIGTERM reaches the workload as on the native
  runtime.
3. ``inspect`` reads the container's state from the engine every time:
   running → Running, paused → Suspended, exited → Succeeded (0) / Failed
   (``OOMKilled`` when the kernel killed it for memory, else ``Error``), or
   Stopped when ``stop`` asked for it (a ``stopped`` marker in the driver's
   folder, so a restarted agent tells the two apart).
4. ``suspend``/``resume`` are pause/unpause (the cgroup freezer: memory stays
   resident). ``stop(grace)`` is ``docker stop`` with that timeout.
   ``remove`` deletes the container; images this driver loaded and no
   container of ours uses any more are removed ``image_gc_delay`` seconds
   later.

Output is the container's log (json-file driver): stdout then stderr, as the
native runtime gives them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimes.base import (
    NO_ATTACHMENTS,
    Attachments,
    Capabilities,
    ImageRejected,
    RuntimeFailure,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
    check_name,
    tail_budget,
)
from runtimes.docker.tarball import image_id
from specs.fileio import write_atomic
from specs.logfmt import kv

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from specs.kinds import Workload

log = logging.getLogger("gu.runtime.docker")

LABEL_PLACEMENT = "gu.placement"
LABEL_SESSION = "gu.session"
LABEL_NODE = "gu.node"
LABEL_STATE = "gu.agent-state"
LABEL_IMAGE = "gu.image-hash"
CONTAINER_PREFIX = "gu-"
STOP_FILE = "stopped"
IMAGES_FILE = "images.json"

#: Capabilities a container gets back after ``cap_drop: ALL``: none. A workload
#: runs as its image's user with no privilege beyond what file ownership gives.
CAP_ADD: tuple[str, ...] = ()
DEFAULT_PIDS_LIMIT = 1024
DEFAULT_IMAGE_GC_DELAY = 300.0
_MIB = 1 << 20
_FINGERPRINT_TIMEOUT = 5
_API_TIMEOUT = 120


def _time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) as a datetime; None for the zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    frac = "".join(c for c in frac if c.isdigit())[:6]
    try:
        parsed = datetime.fromisoformat(head + (f".{frac}" if frac else ""))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC)


class DockerRuntime:
    """Runs ``docker save`` images as containers on one engine (see the module docstring).

    ``docker_host`` is the engine's address (``unix:///var/run/docker.sock``,
    ``tcp://…``); None uses ``DOCKER_HOST`` or the usual socket.
    """

    name: str = "docker"

    def __init__(
        self,
        state_dir: Path,
        *,
        docker_host: str | None = None,
        image_gc_delay: float = DEFAULT_IMAGE_GC_DELAY,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.docker_host = docker_host
        self.image_gc_delay = image_gc_delay
        self.pids_limit = pids_limit
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()  # images.json and the GC timer
        self._gc_timer: threading.Timer | None = None

    # ---------------------------------------------------------------- engine

    def _connect(self, timeout: int = _API_TIMEOUT) -> docker.DockerClient:
        import docker

        if self.docker_host:
            return docker.DockerClient(base_url=self.docker_host, timeout=timeout)
        return docker.from_env(timeout=timeout)

    @property
    def client(self) -> docker.DockerClient:
        """The engine connection (made on first use)."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def fingerprint(self) -> Capabilities:
        """Available when an engine answers; its version goes into the inventory."""
        try:
            probe = self._connect(timeout=_FINGERPRINT_TIMEOUT)
            try:
                probe.ping()
                version = probe.version()
            finally:
                probe.close()
        except Exception as exc:  # no SDK, no socket, refused, timed out: not available
            where = self.docker_host or "DOCKER_HOST or unix:///var/run/docker.sock"
            return Capabilities(
                available=False,
                reason=f"no Docker engine answers at {where} ({type(exc).__name__}); start "
                "dockerd or pass --docker-host",
            )
        return Capabilities(
            available=True,
            version=f"docker {version.get('Version', '?')}",
            suspend_keeps_memory=True,
            details={
                "engine": str(version.get("Version", "")),
                "api": str(version.get("ApiVersion", "")),
            },
        )

    # ---------------------------------------------------------------- images

    def _images(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.state_dir / IMAGES_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_images(self, images: dict[str, dict[str, Any]]) -> None:
        write_atomic(self.state_dir / IMAGES_FILE, json.dumps(images, sort_keys=True).encode())

    def prepare(self, image_path: Path, image_hash: str) -> None:
        """Load the verified tarball unless the engine has its image id; check the id after."""
        from docker.errors import APIError, ImageNotFound

        wanted = image_id(Path(image_path))
        loaded = False
        try:
            self.client.images.get(wanted)
        except ImageNotFound:
            try:
                with open(image_path, "rb") as f:
                    self.client.images.load(f)
            except (APIError, OSError) as exc:
                raise ImageRejected(f"the engine could not load image {image_hash}: {exc}") from exc
            loaded = True
            try:
                self.client.images.get(wanted)
            except ImageNotFound:
                raise ImageRejected(
                    f"image id mismatch: the tarball of {image_hash} names {wanted}, but the "
                    "engine holds no such image after loading it; rebuild the image with "
                    "`gu image build --runtime docker`"
                ) from None
        with self._lock:
            images = self._images()
            entry = images.get(image_hash) or {}
            images[image_hash] = {
                "id": wanted,
                "loaded": bool(entry.get("loaded")) or loaded,
                "unusedSince": None,
            }
            self._save_images(images)
        if loaded:
            log.info(kv("image_loaded", hash=image_hash, id=wanted))

    # ------------------------------------------------------------ workloads

    def _container(self, name: str) -> Container:
        """The container of ``name``, its ``attrs`` fresh (``get`` is one inspect call)."""
        from docker.errors import NotFound

        try:
            return self.client.containers.get(CONTAINER_PREFIX + check_name(name))
        except NotFound:
            raise WorkloadNotFound(self.name, name) from None

    def _folder(self, name: str) -> Path:
        return self.state_dir / "workloads" / check_name(name)

    def start(
        self,
        name: str,
        workload: Workload,
        image_path: Path,
        attachments: Attachments = NO_ATTACHMENTS,
    ) -> WorkloadStatus:
        """Create and start container ``gu-<name>`` from the image id (see the module doc)."""
        from docker.errors import APIError

        check_name(name)
        if attachments.network is not None:
            raise StartFailed(
                f"the docker runtime cannot join virtual network {attachments.network.network!r} "
                "yet: only runtime: vm workloads may name a network"
            )
        wanted = image_id(Path(image_path))  # the verified tarball names the image it runs
        mounts = self._mounts(wanted, attachments)
        folder = self._folder(name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        env = workload.env
        labels = {
            LABEL_PLACEMENT: name,
            LABEL_SESSION: env.get("GU_SESSION", ""),
            LABEL_NODE: env.get("GU_NODE", ""),
            LABEL_STATE: str(self.state_dir.resolve()),
            LABEL_IMAGE: workload.image.hash,
        }
        memory = workload.resources.memoryMiB * _MIB
        try:
            container = self.client.containers.create(
                wanted,
                name=CONTAINER_PREFIX + name,
                entrypoint=list(workload.command) or None,
                command=list(workload.args) or None,
                environment=[f"{k}={v}" for k, v in env.items()],
                labels=labels,
                network_mode="none",
                nano_cpus=int(workload.resources.cpu * 1e9),
                mem_limit=memory,
                memswap_limit=memory,  # equal to the limit: no swap
                pids_limit=self.pids_limit,
                cap_drop=["ALL"],
                cap_add=list(CAP_ADD) or None,
                security_opt=["no-new-privileges"],
                privileged=False,
                # docker-init as PID 1: signals reach the workload (a shell as PID 1 ignores
                # SIGTERM, so every stop would wait out its grace) and zombies are reaped
                init=True,
                mounts=mounts or None,
                detach=True,
            )
        except APIError as exc:
            if exc.status_code == 409:  # the name is taken: a container of ours already
                raise WorkloadExists(self.name, name) from None
            raise StartFailed(f"the engine refused to create the container: {exc}") from exc
        try:
            container.start()
        except APIError as exc:
            with contextlib.suppress(APIError):
                container.remove(force=True)
            raise StartFailed(f"the container did not start: {exc}") from exc
        log.info(kv("container_started", name=name, id=container.short_id, image=wanted))
        container.reload()
        return self._status(name, container)

    def _mounts(self, image: str, attachments: Attachments) -> list[Any]:
        """Bind mounts of the exposed folders (a Session's inputs read-only, its outputs
        writable), at their paths under the image's working directory."""
        if not attachments.folders:
            return []
        from docker.errors import APIError
        from docker.types import Mount

        try:
            config = self.client.images.get(image).attrs.get("Config") or {}
        except APIError as exc:
            raise StartFailed(f"cannot read image {image}'s config: {exc}") from exc
        workdir = str(config.get("WorkingDir") or "/")
        return [
            Mount(
                posixpath.join(workdir, f.path),
                str(Path(f.source).resolve()),
                type="bind",
                read_only=f.read_only,
            )
            for f in attachments.folders
        ]

    def inspect(self, name: str) -> WorkloadStatus:
        """The container's state as the engine reports it now."""
        return self._status(name, self._container(name))

    def _status(self, name: str, container: Container) -> WorkloadStatus:
        state = container.attrs.get("State") or {}
        status = str(state.get("Status") or "")
        started = _time(state.get("StartedAt"))
        finished = _time(state.get("FinishedAt"))
        pid = int(state.get("Pid") or 0) or None
        if status in ("running", "restarting"):
            return WorkloadStatus("Running", reason="Started", pid=pid, started_at=started)
        if status == "paused":
            return WorkloadStatus(
                "Suspended", reason="Suspended", message="paused", pid=pid, started_at=started
            )
        if status == "created":
            return WorkloadStatus("Starting", reason="Created", message="container created")
        code = int(state.get("ExitCode") or 0)

        def ended(state_: str, reason: str, message: str) -> WorkloadStatus:
            return WorkloadStatus(
                state_,
                exit_code=code,
                reason=reason,
                message=message,
                started_at=started,
                finished_at=finished,
            )

        if (self._folder(name) / STOP_FILE).exists():
            return ended("Stopped", "Stopped", f"stopped on request (exit code {code})")
        if state.get("OOMKilled"):
            return ended(
                "Failed",
                "OOMKilled",
                "killed by the kernel: the container reached its memory limit",
            )
        if code == 0:
            return ended("Succeeded", "Completed", "exited with 0")
        return ended("Failed", "Error", f"exited with {code}")

    def suspend(self, name: str) -> WorkloadStatus:
        """Pause the container (its processes stay in memory, frozen)."""
        container = self._container(name)
        if (container.attrs.get("State") or {}).get("Status") == "running":
            container.pause()
            container.reload()
        return self._status(name, container)

    def resume(self, name: str) -> WorkloadStatus:
        """Unpause a paused container."""
        container = self._container(name)
        if (container.attrs.get("State") or {}).get("Status") == "paused":
            container.unpause()
            container.reload()
        return self._status(name, container)

    def stop(self, name: str, grace: float = 10.0) -> WorkloadStatus:
        """``docker stop`` with ``grace`` seconds (a paused container is thawed first)."""
        from docker.errors import APIError

        container = self._container(name)
        status = (container.attrs.get("State") or {}).get("Status")
        if status in ("running", "paused", "restarting", "created"):
            self._folder(name).mkdir(parents=True, exist_ok=True)
            write_atomic(
                self._folder(name) / STOP_FILE,
                json.dumps({"grace": grace, "at": time.time()}).encode(),
            )
            try:
                if status == "paused":
                    container.unpause()
                container.stop(timeout=max(0, round(grace)))
            except APIError as exc:
                raise RuntimeFailure(f"docker runtime: cannot stop {name}: {exc}") from exc
            container.reload()
        return self._status(name, container)

    def logs(self, name: str, tail_bytes: int | None = None) -> bytes:
        """stdout then stderr of the container; with ``tail_bytes`` the end of each
        (``runtimes.base.tail_budget``, as on the native runtime)."""
        container = self._container(name)
        out = bytes(container.logs(stdout=True, stderr=False))
        err = bytes(container.logs(stdout=False, stderr=True))
        if tail_bytes is None:
            return out + err
        out_take, err_take = tail_budget(tail_bytes, len(out), len(err))
        return out[len(out) - out_take :] + err[len(err) - err_take :]

    def remove(self, name: str) -> None:
        """Delete the container and its folder; unused loaded images go after the delay."""
        from docker.errors import APIError, NotFound

        check_name(name)
        try:  # one call: removing by name needs no inspect first
            self.client.api.remove_container(CONTAINER_PREFIX + name, force=True)
        except NotFound:
            pass
        except APIError as exc:
            raise RuntimeFailure(f"docker runtime: cannot remove {name}: {exc}") from exc
        shutil.rmtree(self._folder(name), ignore_errors=True)
        self._schedule_image_gc()

    def _ours(self) -> list[dict[str, Any]]:
        """The engine's list entries of our containers (labels, ImageID). The low-level
        list: the high-level one inspects each container and races a removal."""
        found: list[dict[str, Any]] = self.client.api.containers(
            all=True, filters={"label": f"{LABEL_STATE}={self.state_dir.resolve()}"}
        )
        return found

    def adopt(self) -> list[str]:
        """Names of the containers a previous agent process started (by our state-dir label)."""
        names = sorted(
            str(labels[LABEL_PLACEMENT])
            for c in self._ours()
            if (labels := c.get("Labels") or {}).get(LABEL_PLACEMENT)
        )
        self._schedule_image_gc()
        return names

    # ------------------------------------------------------------ image GC

    def _schedule_image_gc(self) -> None:
        with self._lock:
            if self._gc_timer is not None and self._gc_timer.is_alive():
                return
            # checked twice: once to mark images unused, once after the delay to remove them
            self._start_gc_timer(0.0)

    def _start_gc_timer(self, delay: float) -> None:
        """Run ``collect_images`` again after ``delay`` (the caller holds ``_lock``)."""
        timer = threading.Timer(delay, self.collect_images)
        timer.daemon = True
        self._gc_timer = timer
        timer.start()

    def collect_images(self) -> list[str]:
        """Remove loaded images no container of ours has used for ``image_gc_delay`` seconds.

        Marks newly unused images with the time; returns the ids removed. Runs
        itself again while some unused image still waits for its delay.
        """
        from docker.errors import APIError, ImageNotFound

        try:
            in_use = {str(c.get("ImageID") or "") for c in self._ours()}
        except APIError as exc:  # the engine is busy or gone for a moment: try again later
            log.warning(kv("image_gc_failed", error=exc))
            with self._lock:
                self._start_gc_timer(max(self.image_gc_delay / 2, 1.0))
            return []
        now = time.time()
        removed: list[str] = []
        pending = False
        with self._lock:
            images = self._images()
            for image_hash, entry in list(images.items()):
                if entry.get("id") in in_use:
                    entry["unusedSince"] = None
                    continue
                if not entry.get("loaded"):
                    del images[image_hash]  # the engine had it before us: not ours to remove
                    continue
                since = entry.get("unusedSince")
                if since is None:
                    entry["unusedSince"] = now
                    pending = True
                elif now - float(since) >= self.image_gc_delay:
                    try:
                        self.client.images.remove(entry["id"], noprune=False)
                    except ImageNotFound:
                        pass
                    except APIError as exc:  # used by a container not ours, say
                        log.info(kv("image_kept", id=entry["id"], reason=exc))
                        continue
                    removed.append(str(entry["id"]))
                    del images[image_hash]
                else:
                    pending = True
            self._save_images(images)
            if pending:
                self._start_gc_timer(self.image_gc_delay / 2 or 0.1)
        for image in removed:
            log.info(kv("image_removed", id=image))
        return removed


__all__ = ["CAP_ADD", "DockerRuntime"]
