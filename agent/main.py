"""The agent process: identity, runtimes, adoption, then the threads, until a signal.

``run_agent(config)`` does, in order:

1. ``ensure_enrolled`` (``agent.identity``): key, enrolment or log-in.
2. Build the runtime drivers from ``runtimes.registry`` (``--runtimes``,
   default every available one), each with its own folder
   ``<state>/runtimes/<name>``, fingerprint each once (its capabilities go into
   the inventory of every heartbeat), and the image cache ``<state>/images``.
3. Adopt what a previous agent process left running — before anything is
   read from the hub, so no placement is ever started twice.
4. Start the threads (all daemon, all bounded):

   - ``gu-agent-heartbeat``: inventory + usage every ``heartbeat`` seconds;
   - ``gu-agent-watch``: list + watch of this node's Placements;
   - ``gu-agent-worker-N``: the local reconcile (``agent.workloads``);
   - ``gu-agent-resync``: re-queues every placement each second.

5. Wait for SIGTERM/SIGINT (or ``stop``), then stop the threads: the hub
   connection is closed, which ends a blocked watch or pull at once, and each
   thread is given a short, bounded join. Workloads keep running: the next
   agent process adopts them.

``python -m agent.main --hub URL …`` runs the same command as ``gu agent``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from agent.bridge import REFRESH_SECONDS, Bridge
from agent.data import PlacementData
from agent.hubsession import HubSession, PlacementInformer, heartbeat_loop
from agent.identity import DEFAULT_STATE_DIR, ensure_enrolled
from agent.images import ImageCache
from agent.inventory import collect_inventory, collect_usage
from agent.vnet import Buses
from agent.workloads import WorkloadReconciler
from controller.client import Client
from runtimes import registry
from runtimes.base import Capabilities, Runtime
from runtimes.registry import RuntimeOptions
from specs.logfmt import kv

log = logging.getLogger("gu.agent")

DEFAULT_HEARTBEAT: Final = 5.0
DEFAULT_WORKERS: Final = 4
DEFAULT_VNET_PORT: Final = 61623
SHUTDOWN_TIMEOUT: Final = 3.0


class AgentConfigError(ValueError):
    """A bad agent option (unknown or unavailable runtime, bad label); the message says which."""


@dataclass
class AgentConfig:
    """Everything ``gu agent`` takes on its command line."""

    hub: str
    state_dir: Path = DEFAULT_STATE_DIR
    join_token: str | None = None
    name: str | None = None
    labels: dict[str, str] | None = None
    runtimes: list[str] | None = None
    runtime_options: RuntimeOptions = field(default_factory=RuntimeOptions)
    heartbeat: float = DEFAULT_HEARTBEAT
    workers: int = DEFAULT_WORKERS
    vnet_port: int = DEFAULT_VNET_PORT
    vnet_bind: str = "0.0.0.0"


@dataclass(frozen=True)
class RuntimeSet:
    """The agent's drivers by name, with the fingerprint each gave at start."""

    drivers: dict[str, Runtime]
    capabilities: dict[str, Capabilities]


def build_runtimes(
    state_dir: Path, wanted: list[str] | None, options: RuntimeOptions | None = None
) -> RuntimeSet:
    """The runtime drivers to use: ``wanted`` (each must be available), else every available one."""
    names = wanted or registry.known()
    unknown = [n for n in names if n not in registry.DRIVERS]
    if unknown:
        raise AgentConfigError(str(registry.UnknownRuntime(unknown)))
    drivers: dict[str, Runtime] = {}
    capabilities: dict[str, Capabilities] = {}
    for name in names:
        driver = registry.create(name, state_dir / "runtimes" / name, options)
        caps = driver.fingerprint()
        if caps.available:
            drivers[name] = driver
            capabilities[name] = caps
            log.info(kv("runtime_ready", runtime=name, version=caps.version, accel=caps.accel))
        elif wanted:
            raise AgentConfigError(
                f"runtime {name!r} is not available on this machine"
                + (f": {caps.reason}" if caps.reason else "")
            )
        else:
            log.info(kv("runtime_unavailable", runtime=name, reason=caps.reason or None))
    return RuntimeSet(drivers, capabilities)


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info(kv("signal", name=signal.Signals(signum).name, action="stopping"))
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def undo() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return undo


def run_agent(config: AgentConfig, stop: threading.Event | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stop`` is set); see the module doc.

    Raises ``agent.identity.EnrollmentError`` (with what to do) when the agent
    cannot enrol or log in, AgentConfigError for bad options.
    """
    stop = stop or threading.Event()
    undo_signals = _install_signals(stop)
    try:
        _run(config, stop)
    finally:
        undo_signals()


def _run(config: AgentConfig, stop: threading.Event) -> None:
    from agent.identity import Interrupted

    hub = config.hub.rstrip("/")
    try:
        identity = ensure_enrolled(
            hub,
            config.state_dir,
            join_token=config.join_token,
            name=config.name,
            labels=config.labels,
            stop=stop,
        )
    except Interrupted:
        log.info(kv("agent_stopped", reason="signal before the hub answered"))
        return
    state = identity.state_dir
    runtime_set = build_runtimes(state, config.runtimes, config.runtime_options)
    runtimes = runtime_set.drivers
    cache = ImageCache(state / "images")
    session = HubSession(Client(hub, identity.key), identity.node_id)
    reconciler = WorkloadReconciler(
        identity.node_id,
        runtimes,
        cache,
        session,
        hub_public_key=identity.record.hubPublicKey,
        data=PlacementData(state / "data"),
        buses=(
            buses := Buses(identity.node_id, on_change=(networks_changed := threading.Event()).set)
        ),
    )
    reconciler.adopt()
    bridge = Bridge(
        identity.node_id,
        session.vnet_membership,
        buses.netns_for,
        port=config.vnet_port,
        bind=config.vnet_bind,
        relay=session,
    )
    bridge.start()
    runtime_names = sorted(runtimes)

    threads = [
        threading.Thread(
            target=heartbeat_loop,
            args=(
                session,
                stop,
                config.heartbeat,
                lambda: collect_inventory(runtime_set.capabilities, state),
                lambda: collect_usage(state, reconciler.running_count(), bridge.stats()),
                bridge.endpoints,
            ),
            name="gu-agent-heartbeat",
            daemon=True,
        ),
        threading.Thread(
            target=_follow_networks,
            args=(bridge, reconciler, stop, networks_changed),
            name="gu-agent-vnet",
            daemon=True,
        ),
        threading.Thread(
            target=PlacementInformer(session, reconciler).run,
            args=(stop,),
            name="gu-agent-watch",
            daemon=True,
        ),
        threading.Thread(
            target=reconciler.run_resync, args=(stop,), name="gu-agent-resync", daemon=True
        ),
    ]
    threads += [
        threading.Thread(
            target=reconciler.run_worker, args=(stop,), name=f"gu-agent-worker-{i}", daemon=True
        )
        for i in range(max(1, config.workers))
    ]
    log.info(
        kv(
            "agent_started",
            node=identity.node_id,
            name=identity.record.name,
            hub=hub,
            runtimes=",".join(runtime_names) or "-",
            state_dir=state,
        )
    )
    for thread in threads:
        thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        stop.set()
        networks_changed.set()  # (wakes the network follower)
        session.close()  # ends a blocked watch or image pull at once
        bridge.stop()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in threads if t.is_alive()]
        log.info(kv("agent_stopped", node=identity.node_id, still_busy=",".join(busy) or None))


def _follow_networks(
    bridge: Bridge,
    reconciler: WorkloadReconciler,
    stop: threading.Event,
    changed: threading.Event,
) -> None:
    """Keep the bridge in the networks this provider's workloads are members of, with their
    current keys and members: every REFRESH_SECONDS, and at once when a bus's namespace
    was made or deleted (``changed``)."""
    while not stop.is_set():
        changed.wait(REFRESH_SECONDS)
        changed.clear()
        if stop.is_set():
            return
        try:
            bridge.sync(reconciler.networks())
        except Exception as exc:  # the loop must outlive anything the hub does
            log.warning(kv("vnet_sync_failed", error=exc))


def main() -> None:
    """``python -m agent.main``: the ``gu agent`` command on its own."""
    from agent.cli import agent_command

    agent_command(prog_name="gu agent")


if __name__ == "__main__":
    main()


__all__ = ["AgentConfig", "AgentConfigError", "RuntimeSet", "build_runtimes", "run_agent"]
