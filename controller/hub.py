"""The hub process: state dir, keys, store, reconcile loop and HTTP API.

``gu hub`` first start creates the state dir (0700) with the hub's own Ed25519
key, an admin key (0600), ``admins.pub`` (public keys only) and a client config
``admin-config.yaml`` naming the hub URL and the admin key path; it also writes
``~/.config/gu/config.yaml`` (or ``$GU_CONFIG``) when that does not exist yet.
Later starts reuse them. Then one asyncio loop serves the API (uvicorn) and
runs the reconcile controller, or (``--engine-process``, the default on two CPUs or
more with SQLite) starts it in a child process (``controller.enginehost``) that shares
the SQLite file; the API's process and the engine's each keep to a CPU of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.admission import AdmissionSigner, session_policy
from controller.api.app import create_app
from controller.api.deps import ApiDeps
from controller.api.metrics import METRICS_TOKEN_KEY
from controller.auth import Authenticator, LoginLinks, MetricsToken, Principal
from controller.blobs import sweep_every as sweep_outputs_every
from controller.config import Context, config_path, load_config
from controller.enginehost import STATS_FILE, read_stats
from controller.feed import ChangeFeed
from controller.heartbeats import HeartbeatBatcher
from controller.images import ImageStore
from controller.leader import Leadership
from controller.liveness import CHECKPOINT_SECONDS, MAX_HEARTBEATS_PER_SECOND, Liveness
from controller.liveness import keep as keep_leases
from controller.logs import OutputLogs, PlacementLogs
from controller.metrics import HubMetrics, carry_counters
from controller.poolview import PoolView
from controller.process import GC_THRESHOLDS, setup_logging
from controller.reconcile.engine import Controller
from controller.reconcilers import register_all
from controller.relay import Relay, SharedRelay
from controller.shared import SharedBlobs, SharedLogs
from controller.store import SQLiteStore, Store, is_store_url, open_store
from controller.vnetkeys import NetworkKeys
from specs.identity import generate_key, load_private_key, node_id, public_key_str, save_private_key
from specs.logfmt import kv

log = logging.getLogger("gu.hub")

DEFAULT_STATE_DIR = Path("~/.local/share/gu/hub")
DEFAULT_LISTEN = "127.0.0.1:61622"
REVOCATIONS_KEY = "auth:revoked"
KEEP_ALIVE_SECONDS = 30.0
"""How long the API keeps an idle HTTP connection (at least three heartbeat periods)."""

RECONCILE_WORKERS = 1
"""Reconcile worker threads of a hub on SQLite. Its passes are all CPU and store work,
and a worker holds the store's one write lock through its whole group commit, so a
second worker only queues for that lock (and the API's writes queue behind both), and
takes keys out of turn: Sessions woken in serving order then yield to one another.
Measured (``tests/bench/bench_pool.py``, 1,000 agents, December 2026, same session):
1 worker against 2, Sessions of 10 2,853 / 2,786 against 2,710 / 2,675 placements/s,
Sessions of 1 1,041 / 1,043 against 1,006 / 971, the apply of those done after 2.0 s
against 3.0 s; 4 workers, as before, 1,059 / 1,071 and 4.5 s."""
RECONCILE_WORKERS_SHARED = 4
"""On PostgreSQL a pass waits on the network, so more workers overlap some of the round
trips. Measured in process (``bench_scheduler``'s controller on a throwaway PostgreSQL,
2,000 Sessions of 1 over 200 providers, December 2026): 4 workers 278 / 266
placements/s against 1 worker 251 / 247."""
ENGINE_RESTARTS = 5
"""Exits of the engine's process in a minute that end the hub (``--engine-process``)."""

SHARED_CHECKPOINT_SECONDS = 1.0
"""On a shared store: how often a hub writes the leases it heard and reads the others'."""


@dataclass
class HubSettings:
    state_dir: Path
    listen: str = DEFAULT_LISTEN
    node_grace: float = 30.0
    token_ttl: int = 900
    #: a safety net for missed changes (Flux re-applies every few minutes, controller-
    #: runtime resyncs every 10 h): at 30 s, 11,000 converged Sessions cost the hub half a
    #: core in passes that changed nothing, and the API's tail with it (bench_pool)
    resync_period: float = 300.0
    heartbeat: float = 5.0
    #: a larger pool is asked to beat less often (``liveness.asked_period``)
    max_heartbeats_per_second: float = MAX_HEARTBEATS_PER_SECOND
    # an authenticated app must not be able to fill the hub's disk with one push
    max_image_bytes: int = 64 << 30
    #: the image store's bound: images, blobs and outputs together (None: the disk's)
    store_max_bytes: int | None = None
    #: a ``postgresql://`` URL: the store several hubs share (None: SQLite in the state dir)
    store: str | None = None
    #: the reconcile engine in a process of its own (SQLite only; ``controller.enginehost``)
    engine_process: bool = False
    #: the CPU that process is kept on (None: any)
    engine_cpu: int | None = None

    @property
    def url(self) -> str:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port), with a clear error."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:61622")
    return host.strip("[]") or "127.0.0.1", int(port)


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return load_private_key(path)
    key = generate_key()
    save_private_key(key, path)
    return key


class Hub:
    """Everything one hub holds, wired together: the composition root.

    Nothing imports this module but the ``gu hub`` command (and tests): the API
    gets the parts it serves from as an ``ApiDeps``, the reconcilers get the
    store and the policy hook, so no module reaches back into the ``Hub``.
    """

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        state = settings.state_dir
        first_start = not (state / "hub.key").exists()
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        self.key = _load_or_create_key(state / "hub.key")
        admin_key = _load_or_create_key(state / "admin.key")
        admins = state / "admins.pub"
        if not admins.exists():
            admins.write_text(public_key_str(admin_key) + "\n")
        self.admin_keys = {line.strip() for line in admins.read_text().splitlines() if line.strip()}
        self.instance = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        """This hub process among the hubs of a shared store (the lease holder's name)."""
        url = settings.store if settings.store and is_store_url(settings.store) else None
        self.shared = url is not None
        """Several hubs may share this store (PostgreSQL): they elect a leader and share
        blobs, output, leases and the relay through it."""
        self.engine_process = settings.engine_process and url is None
        """The reconcile engine runs in a child process (``controller.enginehost``)."""
        self.store: Store = self._open_store(url)
        self.images = ImageStore(
            state / "images",
            max_image_bytes=settings.max_image_bytes,
            max_total_bytes=settings.store_max_bytes,
            replica=(blobs := SharedBlobs(url)) if url else None,
        )
        self.auth = Authenticator(self.key, self.resolve_principal, token_ttl=settings.token_ttl)
        self.auth.load_revocations(self._load_revocations(), self._save_revocations)
        self.feed = ChangeFeed(self.store)
        #: counters of the engine processes this hub ran before the current one (None: none yet)
        self._engine_carried: dict[str, Any] | None = None
        self._engine_report_lock = threading.Lock()  # (a scrape sees the carry and the
        # report file change together: never the last report twice, or neither)
        self.metrics = HubMetrics(
            (lambda: self._engine_stats().get("passes") or {}) if self.engine_process else None
        )
        self.store.time_commits(self.metrics.observe_commit)
        self.heartbeats = HeartbeatBatcher(self.store)
        self.liveness = Liveness(default_period=settings.heartbeat)
        self.liveness.load(self.store, providers=self.store.names("Provider"))
        # loaded at the feed's start: the feed replays every change after it
        self.pool = PoolView(self.store, self.liveness)
        self.pool.load()
        self.feed.listen(self.pool.on_changes, self.pool.KINDS)
        self.links = LoginLinks()
        self.metrics_token = MetricsToken(self.store.get_meta(METRICS_TOKEN_KEY))
        self.vnet_keys = NetworkKeys(self.key, self.store)
        self.relay = Relay()
        self.shared_relay = SharedRelay(url, self.instance, self.relay) if url else None
        self.logs: OutputLogs = (
            (shared_logs := SharedLogs(url)) if url else PlacementLogs(state / "logs")
        )
        self._closing: list[SharedBlobs | SharedLogs] = [blobs, shared_logs] if url else []
        self.first_start = first_start
        self.admin_config = self._write_client_configs(state / "admin.key")
        self.admissions = AdmissionSigner(self.key)
        self.leadership = Leadership(self.store, self.instance)
        self.controller = self._new_controller(None)
        self._controller_used = False
        self.metrics.watch_pool(self.pool, self._engine_stats)

    def _open_store(self, url: str | None) -> Store:
        """The store; for an engine process, SQLite opened for two processes (if this
        file system cannot hold the Unix sockets that takes, e.g. a state dir whose path
        is too long for one, the engine runs in this process instead)."""
        path = self.settings.state_dir / "hub.db"
        if self.engine_process:
            try:
                return SQLiteStore(path, shared=True)
            except OSError as exc:
                log.warning(kv("engine_process_unavailable", error=exc,
                               action="the engine runs in the hub's process"))  # fmt: skip
                self.engine_process = False
        return open_store(url or path, writer=self.instance)

    def _engine_stats(self) -> dict[str, Any]:
        """The reconcile engine's figures: this process's, or its child's last report (its
        counters going on from those of the engines before it: ``carry_counters``)."""
        if not self.engine_process:
            return self.controller.stats()
        with self._engine_report_lock:
            report = read_stats(self.settings.state_dir) or {}
            return carry_counters(self._engine_carried or {}, report)

    def _new_controller(self, fence: int | None) -> Controller:
        """A reconcile engine with every reconciler (one per leadership term: an engine
        runs once); its writes carry ``fence``, the term's epoch."""
        controller = Controller(
            self.store,
            workers=RECONCILE_WORKERS_SHARED if self.shared else RECONCILE_WORKERS,
            resync_period=self.settings.resync_period,
            observe=self.metrics.observe_reconcile,
            fence=fence,
        )
        register_all(
            controller,
            node_grace=self.settings.node_grace,
            heartbeat=self.settings.heartbeat,
            policy=session_policy(self.images, self.admissions),
            liveness=self.liveness,
        )
        return controller

    @property
    def hub_id(self) -> str:
        return self.auth.hub_id

    def resolve_principal(self, public_key: str, purpose: str) -> Principal | None:
        """Map a verified public key to admin, App or enrolled agent."""
        if public_key in self.admin_keys:
            return Principal("admin", "admin", public_key)
        if purpose == "api":
            prov = self.store.try_get("Provider", node_id(public_key))
            if prov is not None and prov["spec"].get("publicKey") == public_key:
                return Principal("agent", prov["metadata"]["name"], public_key)
        for app in self.store.list("App"):
            if public_key in (app["spec"].get("publicKeys") or []):
                return Principal("app", app["metadata"]["name"], public_key)
        return None

    def _load_revocations(self) -> dict[tuple[str, str, str], float]:
        """Revoked principals, kept in the store: tokens outlive a hub restart."""
        raw = self.store.get_meta(REVOCATIONS_KEY)
        try:
            rows = json.loads(raw) if raw else []
            return {(r, n, k): float(t) for r, n, k, t in rows}
        except (ValueError, TypeError):
            log.warning(kv("revocations_unreadable", action="starting with none"))
            return {}

    def _save_revocations(self, table: dict[tuple[str, str, str], float]) -> None:
        # merged with what is stored, in one transaction: other hubs of a shared store
        # write this table too, and none may drop another's revocation
        with self.store.transaction():
            merged = {**self._load_revocations(), **table}
            cutoff = time.time() - self.settings.token_ttl - 60  # (older: no live token)
            rows = [[r, n, k, t] for (r, n, k), t in sorted(merged.items()) if t > cutoff]
            self.store.put_meta(REVOCATIONS_KEY, json.dumps(rows))

    def _placement_exists(self, name: str) -> bool:
        return self.store.try_get("Placement", name) is not None

    def _write_client_configs(self, admin_key: Path) -> Path:
        """admin-config.yaml in the state dir, and the user's config if it has none."""
        ctx = Context(
            name=f"admin@{self.settings.listen}",
            hub=self.settings.url,
            key=str(admin_key.resolve()),
            principal="admin",
        )
        path = self.settings.state_dir / "admin-config.yaml"
        cfg = load_config(path, missing_ok=True)
        cfg.upsert(ctx)
        cfg.save()
        user_cfg = config_path()
        if not user_cfg.exists():
            ucfg = load_config(user_cfg, missing_ok=True)
            ucfg.upsert(ctx)
            ucfg.save()
        return path

    def api_deps(self) -> ApiDeps:
        """The parts the API serves from."""
        return ApiDeps(
            store=self.store,
            images=self.images,
            auth=self.auth,
            heartbeats=self.heartbeats,
            logs=self.logs,
            liveness=self.liveness,
            feed=self.feed,
            pool=self.pool,
            metrics=self.metrics,
            links=self.links,
            metrics_token=self.metrics_token,
            vnet_keys=self.vnet_keys,
            relay=self.relay,
            heartbeat_seconds=self.settings.heartbeat,
            max_heartbeats_per_second=self.settings.max_heartbeats_per_second,
            sole_writer=not self.shared,
        )

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve the API and run the reconcile loop until SIGINT/SIGTERM."""
        import uvicorn

        host, port = parse_listen(self.settings.listen)
        loop = asyncio.get_running_loop()
        self.feed.attach(loop)
        if self.shared_relay is not None:
            self.shared_relay.attach(loop)
        stop = asyncio.Event()
        app = create_app(self.api_deps())
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # an agent's connection outlives the gap between its heartbeats (uvicorn's 5 s
            # default closed it just before each beat: a new connection every time)
            timeout_keep_alive=int(max(KEEP_ALIVE_SECONDS, 3 * self.settings.heartbeat)),
        )
        server = _quiet_server_class()(config)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        lead = asyncio.create_task(self.leadership.run(self._term, stop), name="leadership")
        beats = asyncio.create_task(self.heartbeats.run(stop), name="heartbeats")
        leases = asyncio.create_task(
            keep_leases(
                self.liveness,
                self.store,
                self._lease_expired,
                stop,
                checkpoint_every=(
                    SHARED_CHECKPOINT_SECONDS
                    if self.shared or self.engine_process
                    else CHECKPOINT_SECONDS
                ),
                load_every=SHARED_CHECKPOINT_SECONDS if self.shared else None,
            ),
            name="liveness",
        )
        background = [lead, beats, leases]
        if self.shared:
            background.append(asyncio.create_task(self._follow_cluster(stop)))
        serving = asyncio.create_task(server.serve(), name="api")
        log.info(
            "event=hub_started hub_id=%s url=%s state_dir=%s",
            self.hub_id,
            self.settings.url,
            self.settings.state_dir,
        )
        if ready is not None:
            ready.set()
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopper, lead}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        # End the watch streams (agents hold them open) so uvicorn's graceful
        # shutdown does not wait its full timeout for them; clients re-watch.
        self.feed.close()
        self.relay.close()
        server.should_exit = True
        await asyncio.wait({serving, *background}, timeout=10)
        if self.shared_relay is not None:
            self.shared_relay.close()
        for part in self._closing:
            part.close()
        self.store.close()
        log.info("event=hub_stopped")

    async def _term(self, epoch: int | None, ended: asyncio.Event) -> None:
        """One leadership term (``controller.leader``): the reconcile engine and the sweeps
        of what the hubs share, until ``ended``."""
        if self._controller_used or epoch is not None:
            self.controller = self._new_controller(epoch)
        self._controller_used = True
        engine = self._run_engine_process(ended) if self.engine_process else None
        tasks = [
            asyncio.create_task(engine or self.controller.run(ended), name="reconcile"),
            asyncio.create_task(
                self.logs.sweep_every(self._placement_exists, ended), name="log-sweep"
            ),
            asyncio.create_task(
                sweep_outputs_every(self.store, self.images, ended), name="output-sweep"
            ),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not ended.is_set():  # the engine stopped by itself: the term ends with it
                for task in done:
                    if task.exception() is not None:
                        log.error(kv("term_task_failed", task=task.get_name(),
                                     error=task.exception()))  # fmt: skip
        finally:
            ended.set()
            await asyncio.wait(tasks, timeout=10)

    async def _run_engine_process(self, ended: asyncio.Event) -> None:
        """The reconcile engine as a child process until ``ended``, started again if it
        exits by itself (after a second; its ``ENGINE_RESTARTS``-th exit within a minute
        ends the term instead, and with it the hub)."""
        starts: deque[float] = deque(maxlen=ENGINE_RESTARTS)
        while not ended.is_set():
            starts.append(time.monotonic())
            code = await self._engine_child(ended)
            if ended.is_set():
                return
            if len(starts) == ENGINE_RESTARTS and starts[-1] - starts[0] < 60:
                raise RuntimeError(
                    f"the engine process exited {ENGINE_RESTARTS} times in a minute "
                    f"(last exit code {code}): see its lines above"
                )
            log.error(kv("engine_process_exited", code=code, action="starting it again in 1s"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), 1.0)

    async def _engine_child(self, ended: asyncio.Event) -> int | None:
        """One engine process, until it exits or ``ended`` (then SIGTERM, and SIGKILL after
        20 s); its exit code."""
        s = self.settings
        args = [
            sys.executable, "-m", "controller.enginehost",
            "--state-dir", str(s.state_dir),
            "--node-grace", str(s.node_grace),
            "--heartbeat", str(s.heartbeat),
            "--resync", str(s.resync_period),
            "--workers", str(RECONCILE_WORKERS),
            "--parent", str(os.getpid()),
        ]  # fmt: skip
        if s.engine_cpu is not None:
            args += ["--cpu", str(s.engine_cpu)]
        # the last engine's last report: its counters go on in the next one's (one of an
        # earlier run of the hub, whose counters started again anyway, is only removed)
        with self._engine_report_lock:
            last = read_stats(s.state_dir) if self._engine_carried is not None else None
            self._engine_carried = carry_counters(self._engine_carried or {}, last or {})
            with contextlib.suppress(FileNotFoundError):
                (s.state_dir / STATS_FILE).unlink()
        child = await asyncio.create_subprocess_exec(*args)
        log.info(kv("engine_process_started", pid=child.pid, cpu=s.engine_cpu))
        waiting = asyncio.create_task(child.wait())
        stopping = asyncio.create_task(ended.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                child.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(waiting), 20)
                except TimeoutError:
                    child.kill()
        finally:
            stopping.cancel()
            if child.returncode is None:
                child.kill()
            await child.wait()
        return child.returncode

    def _lease_expired(self, node: str) -> None:
        """A provider's lease ran out: its reconcile says NotReady (on the leader; another
        hub's reconciles run elsewhere, and the leader sees the same lease run out)."""
        if self.leadership.leading and not self.engine_process:  # (that one judges itself)
            self.controller.enqueue("Provider", node)

    async def _follow_cluster(self, stop: asyncio.Event) -> None:
        """What another hub of the cluster changed in memory-held settings, read every few
        seconds: revocations, and the metrics token."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SHARED_CHECKPOINT_SECONDS * 2)
            with contextlib.suppress(Exception):
                table = await asyncio.to_thread(self._load_revocations)
                self.auth.merge_revocations(table)
                digest = await asyncio.to_thread(self.store.get_meta, METRICS_TOKEN_KEY)
                if digest:
                    self.metrics_token.digest = digest


def _quiet_server_class() -> type:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn without its own signal capture: the hub's loop handles SIGINT/SIGTERM
        and shuts the reconcile loop and the store down in order."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer


def announce_first_join_token(hub: Hub) -> None:
    """A first join token, so the first agent can enrol without another command.

    Shown only on an interactive terminal: a supervisor (systemd, docker) keeps
    stdout in its logs, and a reusable 24 h token there would let anyone who reads
    them enrol a provider. Otherwise it goes to ``<state-dir>/join-token`` (0600).
    """
    from controller.enrollment import create_join_token

    token, _ = create_join_token(hub.store)
    if sys.stdout.isatty():
        print(f"join token for agents (valid 24h): {token}", flush=True)
        print(f"  start an agent: gu agent --hub {hub.settings.url} --join-token {token}")
        return
    path = hub.settings.state_dir / "join-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    print(f"join token for agents (valid 24h) written to {path} (0600)", flush=True)
    print("  or make one any time: gu hub token create", flush=True)


def current_cpu() -> int | None:
    """The CPU this thread runs on now (Linux: ``/proc/thread-self/stat``), or None."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        return int(stat.rpartition(")")[2].split()[36])  # (field 39, "processor")
    except (OSError, ValueError, IndexError):
        return None


def pin_to_one_cpu() -> int | None:
    """Keep this process's threads on one CPU (the one it runs on now): the CPU it
    chose, or None if it can choose none (one CPU allowed, or not Linux).

    Why: the hub's threads (the API's event loop, the reconcile workers, the feeds)
    take turns on the GIL anyway, and the worker holding the store's write lock gives
    it up at each of its SQLite calls; spread over CPUs, the API's thread takes it at
    each of them (the likely cost; what is sure is the measured effect). Measured with
    ``tests/bench/bench_pool.py`` (1,000 agents, 2 CPUs, against ``--all-cpus`` in the
    same session, December 2026, one reconcile worker): scheduling ~1,800 →
    ~2,830-2,880 placements/s for Sessions of 10 and ~660 → ~1,045-1,070 for Sessions of
    1, heartbeat and API latencies about the same, the apply of 1,000 Sessions the
    same; in-process (no API thread) no difference. Threads started later inherit it, so
    call it first.
    ``gu hub --all-cpus`` leaves the process on every CPU it may use.

    The engine's process (``--engine-process``) is kept on another CPU the same way
    (``--cpu``): its one busy thread takes the GIL in turn with its feed and liveness
    threads. Measured (``bench_pool.py``, 1,000 agents, 10,000 Sessions of 1, same
    session): 1,574 / 1,663 placements/s with it on one CPU, 1,252 / 1,226 with it on
    both.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None
    cpu = current_cpu()
    if cpu is None or cpu not in allowed:
        cpu = min(allowed)
    os.sched_setaffinity(0, {cpu})
    return cpu


def run_hub(
    state_dir: Path,
    listen: str = DEFAULT_LISTEN,
    node_grace: float = 30.0,
    store_max_gib: float | None = None,
    store: str | None = None,
    max_heartbeats_per_second: float = MAX_HEARTBEATS_PER_SECOND,
    all_cpus: bool = False,
    engine_process: bool | None = None,
) -> None:
    """Start a hub and block until it is stopped (the ``gu hub`` command).

    ``engine_process``: the reconcile engine in a child process (``controller.enginehost``);
    None: when the store is SQLite and the hub may use two CPUs or more."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if engine_process is None:
        engine_process = store is None and len(allowed) >= 2
    pinned = None if all_cpus else pin_to_one_cpu()  # (before any thread starts)
    # the engine's process on another CPU than the API's (if the hub keeps to one)
    engine_cpu = next((c for c in allowed if c != pinned), None) if pinned is not None else None
    setup_logging(os.environ.get("GU_LOG_LEVEL", "INFO"))
    if pinned is not None:
        log.info(kv(event="hub_cpu", cpu=pinned, note="gu hub --all-cpus: every CPU"))
    if store is not None and engine_process:
        log.warning(kv("engine_process_ignored", why="the engine runs in the hub with --store"))
    settings = HubSettings(
        state_dir=state_dir.expanduser(),
        listen=listen,
        node_grace=node_grace,
        store_max_bytes=int(store_max_gib * (1 << 30)) if store_max_gib else None,
        store=store,
        max_heartbeats_per_second=max_heartbeats_per_second,
        engine_process=engine_process,
        engine_cpu=engine_cpu,
    )
    parse_listen(listen)
    gc.set_threshold(*GC_THRESHOLDS)
    hub = Hub(settings)
    gc.freeze()  # what start-up loaded lives as long as the hub: no collection scans it
    print(f"gu hub {hub.hub_id} listening on {settings.url}", flush=True)
    print(f"admin client config: {hub.admin_config}", flush=True)
    if hub.first_start:
        announce_first_join_token(hub)
    asyncio.run(hub.serve())
