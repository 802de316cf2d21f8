"""The provider's side of a VirtualNetwork: one per-host bus per network, in a namespace.

The VMs of one network on this provider share a QEMU multicast bus
(``-netdev socket,mcast=GROUP:PORT,localaddr=127.0.0.1``): every frame one VM sends,
the others on the bus receive. Where the agent may (root, or CAP_NET_ADMIN), each
network's bus lives in a network namespace of its own, ``gu-<hash of the name>``, that
holds only a loopback (up, multicast on, a route for 224.0.0.0/4 and nothing else): the
QEMU processes of that network run inside it, so no other process of the host can read
or inject its frames, and a VM's process can reach nothing but its network. Where it
may not, the agent says so at start and the buses are bound to the host's 127.0.0.1.

The namespace is made when the network's first VM here starts and deleted when its
last one is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable

from runtimes.base import NetworkAttachment
from specs.kinds import NetworkInterface, default_bus
from specs.logfmt import kv

log = logging.getLogger("gu.agent.vnet")


def netns_name(node: str, network: str) -> str:
    """The namespace of ``network``'s bus on provider ``node`` (≤ 15 characters; the node
    in it too, so two agents on one machine never share a bus)."""
    return "gu-" + hashlib.sha256(f"{node}/{network}".encode()).hexdigest()[:12]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)


class Buses:
    """The network namespaces of this provider's buses (see the module doc)."""

    def __init__(
        self,
        node: str = "",
        use_netns: bool | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.on_change = on_change
        """Called when a namespace was made or deleted (the bridge follows at once)."""
        can = os.geteuid() == 0 and shutil.which("ip") is not None
        self.use_netns = can if use_netns is None else use_netns and can
        self._lock = threading.Lock()
        self._made: set[str] = set()
        if not self.use_netns:
            log.info(
                kv(
                    "vnet_buses_on_loopback",
                    reason="no CAP_NET_ADMIN (not root) or no ip(8): a network's VMs share "
                    "the host's 127.0.0.1 instead of a namespace of their own",
                )
            )

    def attachment(self, network: str, iface: NetworkInterface) -> NetworkAttachment:
        """The attachment of a member with ``iface`` (its namespace made if need be)."""
        netns = self.ensure(network) if self.use_netns else None
        return NetworkAttachment(
            network=network,
            address=iface.address,
            mac=iface.mac,
            mtu=iface.mtu,
            bus=iface.bus or default_bus(network),
            netns=netns,
        )

    def ensure(self, network: str) -> str:
        """``network``'s namespace, made now if it is not there: only a loopback, up, with
        multicast and a route for it (RuntimeError saying what failed)."""
        name = netns_name(self.node, network)
        with self._lock:
            if name in self._made and os.path.exists(f"/run/netns/{name}"):
                return name
            if not os.path.exists(f"/run/netns/{name}"):
                done = _ip("netns", "add", name)
                if done.returncode != 0 and "exists" not in done.stderr:
                    raise RuntimeError(f"cannot make network namespace {name}: {done.stderr}")
            for args in (
                ("link", "set", "lo", "up"),
                ("link", "set", "lo", "multicast", "on"),
                ("route", "replace", "224.0.0.0/4", "dev", "lo"),
            ):
                done = _ip("-n", name, *args)
                if done.returncode != 0:
                    raise RuntimeError(f"network namespace {name}: ip {' '.join(args)}: "
                                       f"{done.stderr.strip()}")  # fmt: skip
            self._made.add(name)
            log.info(kv("vnet_bus_ready", network=network, netns=name))
        if self.on_change is not None:
            self.on_change()
        return name

    def netns_for(self, network: str) -> str | None:
        """The namespace ``network``'s bus is in here (None: the host's loopback)."""
        return netns_name(self.node, network) if self.use_netns else None

    def release(self, network: str, still_used: Iterable[str]) -> None:
        """Delete ``network``'s namespace unless a workload in ``still_used`` (network names
        of this provider's remaining workloads) still needs it."""
        if not self.use_netns or network in set(still_used):
            return
        name = netns_name(self.node, network)
        with self._lock:
            if os.path.exists(f"/run/netns/{name}"):
                done = _ip("netns", "del", name)
                if done.returncode != 0:
                    log.warning(kv("vnet_netns_delete_failed", netns=name, error=done.stderr))
                else:
                    log.info(kv("vnet_bus_removed", network=network, netns=name))
            self._made.discard(name)
        if self.on_change is not None:
            self.on_change()


__all__ = ["Buses", "netns_name"]
