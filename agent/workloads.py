"""Local reconcile: the hub's Placements for this node ⇄ the workloads the runtimes run.

Level-triggered, like kubelet. The informer (``agent.hubsession``) keeps an
in-memory map name → latest Placement and puts names on a work queue; a
ticker re-queues every known name each second, so exits, crashes and
missed events are noticed without any event. A pass (``reconcile(name)``)
reads what the hub wants (``spec.desiredState``, ``restartPolicy``) and what
the runtime observes *now* (``inspect``), acts once, and reports:

- no workload, desired Running: status Pulling → ``ImageCache.ensure`` (the
  hub's ``GET /v1/images/{hash}``, hashed while written) → Starting →
  ``ImageCache.verify`` (the exact bytes re-hashed right before they run) →
  the hub-signed admission checked against those bytes → ``runtime.start`` →
  Running. Default deny: a placement without an admission signed by the hub
  this agent enrolled with, or one that does not name this placement, node,
  app and image, is Failed ``AdmissionRejected`` before anything is pulled;
  an image admitted by signature whose signature does not verify over the
  exact bytes is Failed ``SignatureInvalid``. The workload's env gets
  ``GU_PLACEMENT``, ``GU_SESSION`` and ``GU_NODE`` (they win over the spec's). A hash mismatch is Failed
  ``ImageHashMismatch`` and nothing runs; an unknown runtime is Failed
  ``RuntimeUnavailable``; a pull the hub cannot serve is retried with backoff
  (reason ``ImagePullBackOff``).
- finished: exit 0 → Succeeded, else Failed with its exit code. With
  restartPolicy OnFailure (non-zero exit) or Always the workload is restarted
  in place after 1 s, doubling to 60 s for workloads that keep dying quickly;
  meanwhile the state is Starting/``BackOff`` (still active for the hub), and
  ``restarts`` counts the restarts.
- desired Suspended → ``suspend``; Running again → ``resume``; Stopped →
  ``stop(grace=10)``.
- gone from the hub (DELETED, or missing from a relist) → ``remove``.

Status writes replace the whole status, so the agent merges its fields into
the hub's (conditions and the vnet address stay the hub's), writes only when
something differs, and sends the placement's resourceVersion: a concurrent
hub write gives 409, the agent re-reads and goes again. Log tails are
uploaded before the status that a reader may act on (a Succeeded placement's
output is already on the hub), on every state change and at most every 2 s
while running, only when they changed.

Adoption: ``adopt()`` asks every runtime for the workloads a previous agent
process left, before the first list from the hub. Nothing is removed until
that list has arrived, so adopted workloads the hub still wants keep running
(same PID, never started twice); the ones it no longer has are removed. An
adopted workload's admission is checked again on its first pass, as at a
start: refused, it is stopped and removed and its placement Failed
``AdmissionRejected``.

Concurrency: a few workers share the queue (``controller.client.workqueue``,
the same queue the hub's reconcile engine uses), which never hands one name to two
workers at once (the runtimes are not thread-safe per workload), so a slow
pull or a 10 s stop of one placement does not hold up the others.

Why one module of some 650 lines: it is one state machine (the local
reconcile of one placement: pull, admit, start, restart, suspend, stop,
remove, report), whose steps share the per-workload record; what stands alone
is elsewhere — the queue (``controller.client.workqueue``), the admission
check (``agent.admission``), the status fields (``agent.status``), the image
cache (``agent.images``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import ValidationError

from agent.admission import Refused, check_admission, check_signature
from agent.data import MIB, InputUnusable, PlacementData
from agent.images import ImageCache, ImageNotCached
from agent.status import from_runtime, status_fields
from agent.vnet import Buses
from controller.client import ApiError
from controller.client.workqueue import Backoff, WorkQueue, exponential
from runtimes.base import (
    NO_ATTACHMENTS,
    Attachments,
    ImageRejected,
    NetworkAttachment,
    Runtime,
    RuntimeFailure,
    StartFailed,
    WorkloadExists,
    WorkloadNotFound,
    WorkloadStatus,
)
from specs.images import BytesLike, ImageHashMismatch, PackError
from specs.kinds import NetworkInterface, Workload
from specs.logfmt import kv

log = logging.getLogger("gu.agent.workloads")

Obj = dict[str, Any]

LOG_TAIL_BYTES: Final = 256 * 1024
LOG_UPLOAD_PERIOD: Final = 2.0
RESYNC_PERIOD: Final = 1.0
#: A workload that is Starting (a VM booting, an image loading) is looked at again this
#: soon, so Running is reported when it happens rather than at the next resync.
STARTING_POLL: Final = 0.1
STOP_GRACE: Final = 10.0
RESTART_BACKOFF_INITIAL: Final = 1.0
RESTART_BACKOFF_CAP: Final = 60.0
# A run that lasted this long was healthy: the next crash starts the backoff anew.
HEALTHY_RUN_SECONDS: Final = 2 * RESTART_BACKOFF_CAP
TERMINAL_STATES: Final = frozenset({"Succeeded", "Failed", "Stopped"})


class HubPort(Protocol):
    """What the local reconcile needs from the hub (``agent.hubsession.HubSession``)."""

    def put_status(
        self, name: str, status: dict[str, Any], resource_version: int | None
    ) -> dict[str, Any]:
        """Replace a placement's status; returns the updated placement."""
        ...

    def put_logs(self, name: str, data: bytes, run: int) -> None:
        """Upload a placement's log tail; ``run`` counts its restarts in place."""
        ...

    def get_placement(self, name: str) -> dict[str, Any] | None:
        """The placement as the hub has it now (None when gone)."""
        ...

    def fetch_image(self, image_hash: str) -> Iterable[BytesLike]:
        """The image's bytes, in chunks (streamed from the hub)."""
        ...

    def fetch_blob(self, blob_hash: str) -> Iterable[BytesLike]:
        """An input blob's bytes, in chunks (streamed from the hub)."""
        ...

    def put_outputs(
        self, name: str, files: int, body: Callable[[], Iterable[bytes]]
    ) -> dict[str, Any]:
        """Upload a finished placement's outputs (``body()`` makes the tar stream); the
        hub's ``{hash, size, files}``."""
        ...


@dataclass
class _Workload:
    """What the agent knows about one workload a runtime holds for it."""

    runtime: Runtime
    image: str | None = None  # the pinned image hash
    restarts: int = 0
    restarts_known: bool = True  # False for adopted ones until the hub's count is read
    admitted: bool = True  # False for adopted ones until their admission is checked again
    crashes: int = 0  # quick deaths in a row: the restart backoff's exponent
    restart_at: float | None = None
    restart_delay: float = 0.0
    status: WorkloadStatus | None = None
    network: str | None = None  # the VirtualNetwork it is a member of
    logs_digest: bytes = b""
    logs_at: float = 0.0
    logs_state: str = ""


def _rv(obj: Obj) -> int:
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


class WorkloadReconciler:
    """The local reconcile loop of one agent (see the module doc)."""

    def __init__(
        self,
        node_id: str,
        runtimes: dict[str, Runtime],
        cache: ImageCache,
        hub: HubPort,
        *,
        hub_public_key: str = "",
        stop_grace: float = STOP_GRACE,
        resync_period: float = RESYNC_PERIOD,
        data: PlacementData | None = None,
        buses: Buses | None = None,
    ) -> None:
        self.node_id = node_id
        self.data = data
        self.buses = buses or Buses(node_id, use_netns=False)
        self.runtimes = runtimes
        self.cache = cache
        self.hub = hub
        self.hub_public_key = hub_public_key
        self.stop_grace = stop_grace
        self.resync_period = resync_period
        self.queue = WorkQueue()
        self._lock = threading.Lock()
        self._placements: dict[str, Obj] = {}
        self._synced = False
        self._workloads: dict[str, _Workload] = {}
        self._pull_backoff: dict[str, Backoff] = {}
        self._retry_at: dict[str, float] = {}

    # ------------------------------------------------------- informer sink

    def replace_all(self, placements: list[Obj]) -> None:
        """The hub's complete set of our placements: anything else is gone."""
        mine = {
            _name(p): p for p in placements if (p.get("spec") or {}).get("node") == self.node_id
        }
        with self._lock:
            gone = set(self._placements) - set(mine)
            self._placements = mine
            self._synced = True
            keys = set(mine) | gone | set(self._workloads)
        for key in sorted(keys):
            self.queue.add(key)

    def apply_event(self, event_type: str, placement: Obj) -> None:
        """One change from the watch: keep the newest copy (DELETED removes it)."""
        name = _name(placement)
        if not name:
            return
        with self._lock:
            cur = self._placements.get(name)
            if cur is not None and _rv(placement) <= _rv(cur):
                return  # older than what we hold (e.g. our own status write's answer)
            ours = (placement.get("spec") or {}).get("node") == self.node_id
            if event_type == "DELETED" or not ours:
                self._placements.pop(name, None)
            else:
                self._placements[name] = placement
        self.queue.add(name)

    def _remember(self, placement: Obj) -> None:
        """Keep a placement the hub answered with, if newer (never resurrect a deleted one)."""
        name = _name(placement)
        with self._lock:
            cur = self._placements.get(name)
            if cur is not None and _rv(placement) > _rv(cur):
                self._placements[name] = placement

    # ------------------------------------------------------------ threads

    def adopt(self) -> list[str]:
        """Take over the workloads a previous agent process left (call before the first list)."""
        adopted: list[str] = []
        for rt_name, rt in self.runtimes.items():
            try:
                names = rt.adopt()
            except Exception as exc:
                log.error(kv("adopt_failed", runtime=rt_name, error=exc))
                continue
            with self._lock:
                for name in names:
                    self._workloads[name] = _Workload(
                        runtime=rt, restarts_known=False, admitted=False
                    )
            adopted.extend(names)
        log.info(kv("adopted", count=len(adopted), names=",".join(adopted) or "-"))
        return adopted

    def run_worker(self, stop: threading.Event) -> None:
        """Take names off the queue and reconcile them until ``stop``."""
        while not stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                self.reconcile(key)
            except Exception as exc:
                if stop.is_set():  # the hub connection is closed on the way out
                    log.debug(kv("reconcile_interrupted", name=key, error=exc))
                else:
                    log.exception(kv("reconcile_failed", name=key))
            finally:
                self.queue.done(key)

    def run_resync(self, stop: threading.Event) -> None:
        """Queue every known name each ``resync_period`` (notices exits without events)."""
        while not stop.wait(self.resync_period):
            with self._lock:
                if not self._synced:
                    continue
                keys = set(self._placements) | set(self._workloads)
            for key in sorted(keys):
                self.queue.add(key)

    def networks(self) -> set[str]:
        """The VirtualNetworks this provider's unfinished workloads are members of now (a
        finished VM is no member: the hub answers its agent no membership for it)."""
        with self._lock:
            return {
                w.network
                for w in self._workloads.values()
                if w.network and (w.status is None or not w.status.finished)
            }

    def running_count(self) -> int:
        """Workloads that have not finished (the heartbeat's ``usage.workloads``)."""
        with self._lock:
            return sum(
                1 for w in self._workloads.values() if w.status is None or not w.status.finished
            )

    def placement(self, name: str) -> Obj | None:
        """The latest copy of a placement this agent holds (for tests and debugging)."""
        with self._lock:
            return self._placements.get(name)

    def workload_names(self) -> list[str]:
        """Names of the workloads the runtimes hold for this agent."""
        with self._lock:
            return sorted(self._workloads)

    # ------------------------------------------------------------- a pass

    def reconcile(self, name: str) -> None:
        """One level-triggered pass for placement ``name`` (see the module doc)."""
        with self._lock:
            placement = self._placements.get(name)
            synced = self._synced
            work = self._workloads.get(name)
        if placement is None:
            if work is not None and synced:
                self._remove(name, work)
            if synced:
                self._forget(name)
            return
        generation = (placement.get("metadata") or {}).get("generation")
        if work is None:
            mine = self._without_workload(name, placement)
        else:
            mine = self._with_workload(name, placement, work)
        preemption = (placement.get("spec") or {}).get("preemption")
        if mine is not None and preemption and mine.get("state") in ("Suspended", "Stopped"):
            mine = {
                **mine,
                "reason": "Preempted",
                "message": f"preempted by Session {preemption.get('session')} "
                f"(priority {preemption.get('priority')})",
            }
        if mine is not None:
            self._report(name, mine, generation)
            if mine.get("state") == "Starting" and mine.get("reason") != "BackOff":
                self.queue.add_after(name, STARTING_POLL)

    def _without_workload(self, name: str, placement: Obj) -> Obj | None:
        spec = placement.get("spec") or {}
        hub_status = placement.get("status") or {}
        hub_state = hub_status.get("state") or "Pending"
        restarts = int(hub_status.get("restarts") or 0)
        desired = self._desired(placement)
        if hub_state in TERMINAL_STATES:
            return None  # finished here before; the hub never re-runs a placement
        if desired == "Stopped":
            return status_fields(
                "Stopped", "Stopped", "stopped before it started", restarts=restarts
            )
        if desired == "Suspended":
            return status_fields(
                "Suspended", "NotStarted", "suspended before it started", restarts=restarts
            )
        if hub_state in ("Running", "Suspended"):
            # It ran here, but the runtime has no record of it any more.
            if spec.get("restartPolicy", "Never") == "Never":
                return status_fields(
                    "Failed",
                    "WorkloadLost",
                    "the workload's records on the provider are gone (state dir wiped?)",
                    restarts=restarts,
                )
            restarts += 1
        retry_at = self._retry_at.get(name)
        if retry_at is not None and time.monotonic() < retry_at:
            return None
        return self._start(name, placement, restarts, crashes=0)

    def _with_workload(self, name: str, placement: Obj, work: _Workload) -> Obj | None:
        spec = placement.get("spec") or {}
        hub_status = placement.get("status") or {}
        if not work.restarts_known:
            work.restarts = int(hub_status.get("restarts") or 0)
            work.restarts_known = True
        if work.image is None:
            image = ((spec.get("workload") or {}).get("image") or {}).get("hash")
            if image:
                self.cache.pin(image)
                work.image = image
        if not work.admitted:
            refused = self._readmit(name, placement, work)
            if refused is not None:
                return refused
        rt = work.runtime
        try:
            st = rt.inspect(name)
        except WorkloadNotFound:
            log.warning(kv("workload_vanished", name=name))
            self._drop(name, work)
            self.queue.add(name)
            return None
        over = self._outputs_over_limit(name, spec, work, st)
        if over is not None:
            work.restart_at = None
            return over
        desired = self._desired(placement)
        if desired == "Stopped":
            if not st.finished:
                log.info(kv("workload_stopping", name=name, grace=self.stop_grace))
                st = rt.stop(name, grace=self.stop_grace)
            work.restart_at = None
        elif desired == "Suspended":
            if st.state in ("Running", "Starting"):
                st = rt.suspend(name)
                log.info(kv("workload_suspended", name=name, state=st.state))
        else:
            if st.state == "Suspended":
                st = rt.resume(name)
                log.info(kv("workload_resumed", name=name, state=st.state))
            if st.finished and self._should_restart(spec, st):
                return self._restart_later_or_now(name, placement, work, st)
        work.restart_at = None
        self._set_status(work, st)
        self._sync_logs(name, work, st)
        mine = from_runtime(st, work.restarts)
        if st.finished and (spec.get("workload") or {}).get("outputs"):
            return self._with_outputs(name, mine)
        return mine

    # ------------------------------------------------------------ outputs

    def _outputs_over_limit(
        self, name: str, spec: Obj, work: _Workload, st: WorkloadStatus
    ) -> Obj | None:
        """A workload that wrote past ``outputs.maxMiB`` is stopped and Failed
        ``OutputLimitExceeded``, and what it wrote removed (None: within its limit)."""
        outputs = (spec.get("workload") or {}).get("outputs")
        if not outputs or self.data is None:
            return None
        message = self.data.over_limit(name)
        if message is None and st.reason == "OutputLimitExceeded":  # a VM's guest saw it
            message = st.message
            self.data.mark_over_limit(name, message)
        if message is None and not st.finished:
            limit = int(outputs.get("maxMiB") or 100)
            if self.data.outputs_size(name, stop_after=limit * MIB) > limit * MIB:
                message = (
                    f"the workload wrote more than {limit} MiB under {outputs.get('path')} "
                    "(spec.workload.outputs.maxMiB): stopped, and nothing of it was kept"
                )
                self.data.mark_over_limit(name, message)
                log.warning(kv("outputs_over_limit", name=name, limit_mib=limit))
                st = work.runtime.stop(name, grace=self.stop_grace)
        if message is None:
            return None
        self.data.discard_outputs(name)
        self._set_status(work, st)
        self._sync_logs(name, work, st)
        return status_fields(
            "Failed" if st.finished else "Running",
            "OutputLimitExceeded",
            message,
            st.exit_code,
            work.restarts,
            st.started_at,
            st.finished_at,
        )

    def _with_outputs(self, name: str, mine: Obj) -> Obj | None:
        """A finished placement's status once its outputs are on the hub: packed,
        uploaded once (recorded on disk: an agent restarted after ``kill -9`` does not
        upload again) and named in ``status.outputs``. None while an upload keeps failing
        for a passing reason (the next pass tries again): nothing incomplete is reported
        as done."""
        assert self.data is not None
        record = self.data.uploaded(name)
        if record is None:
            try:
                files, body = self.data.outputs_stream(name)
                record = self.hub.put_outputs(name, files, body)
            except (PackError, OSError) as exc:
                self.data.discard_outputs(name)
                return {**mine, "state": "Failed", "reason": "OutputsUnreadable",
                        "message": f"cannot pack the outputs: {exc}"}  # fmt: skip
            except ApiError as exc:
                if exc.status in (413, 403, 422):  # the store is full, a quota: final
                    self.data.discard_outputs(name)
                    return {**mine, "state": "Failed", "reason": "OutputsRefused",
                            "message": f"the hub refused the outputs: {exc}"}  # fmt: skip
                log.warning(kv("outputs_upload_failed", name=name, error=exc))
                return None
            record = {k: record[k] for k in ("hash", "size", "files")}
            self.data.mark_uploaded(name, record)
            log.info(kv("outputs_uploaded", name=name, hash=record["hash"], size=record["size"]))
        return {**mine, "outputs": record}

    def _readmit(self, name: str, placement: Obj, work: _Workload) -> Obj | None:
        """An adopted workload's admission, checked as at its start (a previous agent process
        started it; the placement or this agent's hub key may have changed since).

        Refused: the workload is stopped and removed, and the placement Failed with the
        reason (None when admitted).
        """
        try:
            # the image was pinned just before, from the spec
            check_admission(placement, name, self.node_id, self.hub_public_key, work.image or "")
        except Refused as exc:
            log.error(kv("adopted_refused", name=name, reason=exc.reason, error=exc.message))
            try:
                work.runtime.stop(name, grace=self.stop_grace)
                work.runtime.remove(name)
            except RuntimeFailure as err:  # WorkloadNotFound included: gone is fine
                log.error(kv("workload_remove_failed", name=name, error=err))
            self._drop(name, work)
            return status_fields("Failed", exc.reason, exc.message, restarts=work.restarts)
        work.admitted = True
        return None

    def _should_restart(self, spec: Obj, st: WorkloadStatus) -> bool:
        if st.state == "Stopped":
            return True  # stopped on request, and wanted Running again
        policy = spec.get("restartPolicy", "Never")
        return policy == "Always" or (policy == "OnFailure" and st.state == "Failed")

    def _restart_later_or_now(
        self, name: str, placement: Obj, work: _Workload, st: WorkloadStatus
    ) -> Obj | None:
        now = time.monotonic()
        if work.restart_at is None:
            lasted = (
                (st.finished_at - st.started_at).total_seconds()
                if st.finished_at and st.started_at
                else 0.0
            )
            if lasted >= HEALTHY_RUN_SECONDS or st.state == "Stopped":
                work.crashes = 0
            work.restart_delay = exponential(
                RESTART_BACKOFF_INITIAL, RESTART_BACKOFF_CAP, work.crashes
            )
            work.crashes += 1
            work.restart_at = now + work.restart_delay
            self._set_status(work, st)
            self._sync_logs(name, work, st)  # the output of the run that ended
            log.info(
                kv(
                    "workload_restart_scheduled",
                    name=name,
                    state=st.state,
                    exit_code=st.exit_code,
                    delay=f"{work.restart_delay:g}s",
                )
            )
        if now < work.restart_at:
            left = work.restart_at - now
            return status_fields(
                "Starting",
                "BackOff",
                f"{st.message or st.state}; restart {work.restarts + 1} in {left:.0f}s",
                st.exit_code,
                work.restarts,
                st.started_at,
                st.finished_at,
            )
        # Restart in place: same name, fresh workload, the image checked again.
        self._sync_logs(name, work, st)
        work.runtime.remove(name)
        self._drop(name, work)
        return self._start(name, placement, work.restarts + 1, crashes=work.crashes)

    # ------------------------------------------------------------ starting

    def _start(self, name: str, placement: Obj, restarts: int, crashes: int) -> Obj | None:
        """Pull, verify and start; returns the status to report (see the module doc)."""
        generation = (placement.get("metadata") or {}).get("generation")
        spec = placement.get("spec") or {}
        try:
            workload = Workload.model_validate(spec.get("workload") or {})
        except ValidationError as exc:
            return status_fields(
                "Failed", "InvalidSpec", f"spec.workload: {exc}", restarts=restarts
            )
        rt = self.runtimes.get(workload.runtime)
        if rt is None:
            have = ", ".join(sorted(self.runtimes)) or "none"
            return status_fields(
                "Failed",
                "RuntimeUnavailable",
                f"runtime {workload.runtime!r} is not available on this provider "
                f"(available: {have})",
                restarts=restarts,
            )
        image = workload.image.hash
        try:
            adm = check_admission(placement, name, self.node_id, self.hub_public_key, image)
        except Refused as exc:
            log.error(kv("start_refused", name=name, reason=exc.reason, error=exc.message))
            return status_fields("Failed", exc.reason, exc.message, restarts=restarts)
        self.cache.pin(image)
        registered = False
        try:
            if image not in self.cache:
                self._report(
                    name,
                    status_fields(
                        "Pulling", "Pulling", f"pulling image {image}", restarts=restarts
                    ),
                    generation,
                )
            try:
                self.cache.ensure(image, self.hub.fetch_image)
            except ImageHashMismatch as exc:
                log.error(kv("image_rejected", name=name, hash=image, actual=exc.actual))
                return status_fields("Failed", "ImageHashMismatch", str(exc), restarts=restarts)
            except (ApiError, OSError) as exc:
                return self._pull_failed(name, image, exc, restarts)
            self._pull_backoff.pop(name, None)
            self._retry_at.pop(name, None)
            self._report(
                name,
                status_fields(
                    "Starting", "Starting", f"verifying image {image}", restarts=restarts
                ),
                generation,
            )
            try:
                path = self.cache.verify(image)
                check_signature(adm, image, path)
                rt.prepare(path, image)
                attachments = self._data_for(name, spec, workload, restarts, generation)
                if not isinstance(attachments, Attachments):
                    return attachments  # the inputs failed: the status says why
                st = rt.start(name, self._with_agent_env(name, spec, workload), path, attachments)
            except ImageHashMismatch as exc:
                log.error(kv("image_rejected", name=name, hash=image, actual=exc.actual))
                return status_fields("Failed", "ImageHashMismatch", str(exc), restarts=restarts)
            except ImageNotCached as exc:  # evicted or damaged between ensure and verify
                return self._pull_failed(name, image, exc, restarts)
            except Refused as exc:
                log.error(kv("start_refused", name=name, reason=exc.reason, error=exc.message))
                return status_fields("Failed", exc.reason, exc.message, restarts=restarts)
            except WorkloadExists:
                st = rt.inspect(name)  # a record we did not know of: manage it, never start twice
            except ImageRejected as exc:
                return status_fields("Failed", "ImageRejected", str(exc), restarts=restarts)
            except (StartFailed, RuntimeFailure) as exc:
                return status_fields("Failed", "StartFailed", str(exc), restarts=restarts)
            work = _Workload(
                runtime=rt,
                image=image,
                restarts=restarts,
                crashes=crashes,
                network=spec.get("network") or None,
            )
            with self._lock:
                self._workloads[name] = work
            registered = True
        finally:
            if not registered:
                self.cache.unpin(image)
        log.info(
            kv(
                "workload_started",
                name=name,
                runtime=rt.name,
                pid=st.pid,
                state=st.state,
                restarts=restarts,
            )
        )
        self._set_status(work, st)
        self._sync_logs(name, work, st)
        return from_runtime(st, restarts)

    def _data_for(
        self, name: str, spec: Obj, workload: Workload, restarts: int, generation: int | None
    ) -> Attachments | Obj:
        """The inputs pulled, verified and exposed, and an empty outputs folder, as the
        runtime's attachments, with the VirtualNetwork interface the hub assigned; or the
        Failed status when an input or the network is not usable."""
        network: NetworkAttachment | None = None
        if spec.get("network") and spec.get("networkInterface"):
            try:
                iface = NetworkInterface.model_validate(spec["networkInterface"])
                network = self.buses.attachment(str(spec["network"]), iface)
            except (ValueError, RuntimeError) as exc:
                return status_fields("Failed", "NetworkUnavailable", str(exc), restarts=restarts)
        if not workload.inputs and workload.outputs is None:
            return Attachments(network=network) if network is not None else NO_ATTACHMENTS
        if self.data is None:
            return status_fields(
                "Failed", "StartFailed", "this agent keeps no data folders", restarts=restarts
            )
        blobs: dict[str, Path] = {}
        for item in workload.inputs:
            if item.hash in blobs:
                continue
            try:
                if item.hash not in self.cache:
                    self._report(
                        name,
                        status_fields("Pulling", "PullingInputs", f"pulling input {item.hash}",
                                      restarts=restarts),
                        generation,
                    )  # fmt: skip
                fresh = item.hash not in self.cache
                path = self.cache.ensure(item.hash, self.hub.fetch_blob)
                # pulled just now: hashed as it arrived; cached before: hashed again now
                blobs[item.hash] = path if fresh else self.cache.verify(item.hash)
            except ImageHashMismatch as exc:
                log.error(kv("input_rejected", name=name, hash=item.hash, actual=exc.actual))
                message = f"input {item.hash} (at {item.path}): {exc}"
                return status_fields("Failed", "InputHashMismatch", message, restarts=restarts)
            except (ApiError, OSError, ImageNotCached) as exc:
                return status_fields(
                    "Failed", "InputPullFailed", f"cannot pull input {item.hash}: {exc}",
                    restarts=restarts,
                )  # fmt: skip
        try:
            return Attachments(network=network, folders=self.data.prepare(name, workload, blobs))
        except InputUnusable as exc:
            return status_fields("Failed", "InputUnusable", str(exc), restarts=restarts)

    def _with_agent_env(self, name: str, spec: Obj, workload: Workload) -> Workload:
        """The workload with ``GU_PLACEMENT``, ``GU_SESSION`` and ``GU_NODE`` in its env."""
        env = {
            **workload.env,
            "GU_PLACEMENT": name,
            "GU_SESSION": str(spec.get("session") or ""),
            "GU_NODE": self.node_id,
        }
        return workload.model_copy(update={"env": env})

    def _pull_failed(self, name: str, image: str, exc: Exception, restarts: int) -> Obj:
        backoff = self._pull_backoff.setdefault(name, Backoff(RESTART_BACKOFF_INITIAL, 60.0))
        delay = backoff.next()
        self._retry_at[name] = time.monotonic() + delay
        log.warning(
            kv("image_pull_failed", name=name, hash=image, retry_in=f"{delay:g}s", error=exc)
        )
        return status_fields(
            "Pulling",
            "ImagePullBackOff",
            f"cannot pull {image}: {exc}; retrying in {delay:g}s",
            restarts=restarts,
        )

    # ----------------------------------------------------------- removing

    def _remove(self, name: str, work: _Workload) -> None:
        try:
            work.runtime.remove(name)
        except RuntimeFailure as exc:
            log.error(kv("workload_remove_failed", name=name, error=exc))
            return
        if self.data is not None:
            self.data.remove(name)
        self._drop(name, work)
        network = work.network
        if network:
            with self._lock:
                left = [w.network for w in self._workloads.values() if w.network]
            self.buses.release(network, left)
        log.info(kv("workload_removed", name=name, reason="placement gone from the hub"))

    def _drop(self, name: str, work: _Workload) -> None:
        with self._lock:
            if self._workloads.get(name) is work:
                del self._workloads[name]
        if work.image is not None:
            self.cache.unpin(work.image)
            work.image = None

    def _forget(self, name: str) -> None:
        self._pull_backoff.pop(name, None)
        self._retry_at.pop(name, None)

    # ----------------------------------------------------------- reporting

    def _desired(self, placement: Obj) -> str:
        if (placement.get("metadata") or {}).get("deletionTimestamp"):
            return "Stopped"
        return str((placement.get("spec") or {}).get("desiredState") or "Running")

    def _set_status(self, work: _Workload, st: WorkloadStatus) -> None:
        with self._lock:
            work.status = st

    def _sync_logs(self, name: str, work: _Workload, st: WorkloadStatus) -> None:
        """Upload the log tail on a state change, else at most every 2 s while running."""
        now = time.monotonic()
        state_changed = st.state != work.logs_state
        if not state_changed and (st.finished or now - work.logs_at < LOG_UPLOAD_PERIOD):
            return
        try:
            data = work.runtime.logs(name, tail_bytes=LOG_TAIL_BYTES)
        except RuntimeFailure as exc:
            log.warning(kv("logs_unreadable", name=name, error=exc))
            return
        work.logs_at = now
        digest = hashlib.sha256(data).digest()
        if digest != work.logs_digest:
            try:
                self.hub.put_logs(name, data, work.restarts)
            except ApiError as exc:
                log.warning(kv("logs_upload_failed", name=name, status=exc.status, error=exc))
                return  # state not recorded: the next pass tries again
            work.logs_digest = digest
        work.logs_state = st.state

    def _report(self, name: str, mine: Obj, generation: int | None) -> None:
        """Merge ``mine`` into the hub's status and write it if anything differs."""
        with self._lock:
            cur = self._placements.get(name)
        if cur is None:
            return
        hub_status = dict(cur.get("status") or {})
        new = {**hub_status, **mine}
        if generation is not None:
            new["observedGeneration"] = generation
        if new == hub_status:
            return
        try:
            updated = self.hub.put_status(name, new, _rv(cur) or None)
        except ApiError as exc:
            if exc.status == 409:
                fresh = self.hub.get_placement(name)
                if fresh is not None:
                    self._remember(fresh)
                self.queue.add(name)
            elif exc.status != 404:
                log.warning(kv("status_write_failed", name=name, status=exc.status, error=exc))
            return
        self._remember(updated)
        if hub_status.get("state") != new["state"] or hub_status.get("reason") != new["reason"]:
            log.info(
                kv(
                    "placement_status",
                    name=name,
                    state=new["state"],
                    reason=new.get("reason") or "-",
                    exit_code=new.get("exitCode"),
                    restarts=new.get("restarts"),
                )
            )


__all__ = [
    "LOG_TAIL_BYTES",
    "HubPort",
    "WorkloadReconciler",
]
