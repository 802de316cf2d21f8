"""Addresses on a VirtualNetwork: each member placement's IP and MAC (pure).

A placement of a Session with ``spec.network`` gets its interface when the Session
pass creates or binds it — ``spec.networkInterface: {address, mac, mtu}`` — and keeps
it for its whole life (the hub never rewrites it), so its address is stable.

- **IP**: the lowest host address of the network's CIDR that no active member holds
  (the network and broadcast addresses are never given; on /31 and /32 every
  address is a host). An address is free again once its placement has ended.
- **MAC**: locally administered, unicast, and deterministic: ``02`` followed by the
  first five bytes of ``sha256("<network>/<placement>")``; if that is taken in the
  network, ``sha256("<network>/<placement>/1")``, and so on.
- **Full**: with no free address the placement is not bound; its reason says so and it
  is retried like any waiting placement.

Session passes run one at a time under the ``ClusterState`` lock, which keeps the
addresses in use per network (``ClusterState.interfaces_in``), so two passes never
hand out the same address; :class:`Allocator` adds what one pass hands out.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

from specs.kinds import default_bus

Obj = dict[str, Any]


def mac_for(network: str, placement: str, attempt: int = 0) -> str:
    """The deterministic, locally administered unicast MAC of ``placement`` on ``network``."""
    seed = f"{network}/{placement}" + (f"/{attempt}" if attempt else "")
    digest = hashlib.sha256(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


class Allocator:
    """Hands out the interfaces of one Session pass on one network."""

    def __init__(
        self,
        network: str,
        cidr: str,
        mtu: int,
        in_use: Iterable[tuple[str, str]],
        bus: str | None = None,
    ) -> None:
        """``in_use``: the (ip, mac) pairs the network's active members hold; ``bus`` its
        ``multicast`` as ``GROUP:PORT`` (None: ``default_bus``)."""
        self.network = network
        self.bus = bus or default_bus(network)
        self.net = ipaddress.IPv4Network(cidr, strict=False)
        self.mtu = mtu
        pairs = list(in_use)
        self.ips = {ip for ip, _ in pairs}
        self.macs = {mac for _, mac in pairs}

    def has_room(self) -> bool:
        """Whether one more member can get an address."""
        hosts = self.net.num_addresses - (2 if self.net.prefixlen < 31 else 0)
        return len(self.ips) < hosts

    def full_reason(self) -> str:
        return f"network {self.network}: no free address in {self.net}"

    def assign(self, placement: str) -> Obj | None:
        """An interface for ``placement``, or None when the CIDR has no free address."""
        for host in self.net.hosts() if self.net.prefixlen < 31 else self.net:
            ip = str(host)
            if ip not in self.ips:
                break
        else:
            return None
        attempt = 0
        mac = mac_for(self.network, placement)
        while mac in self.macs:
            attempt += 1
            mac = mac_for(self.network, placement, attempt)
        self.ips.add(ip)
        self.macs.add(mac)
        return {
            "address": f"{ip}/{self.net.prefixlen}",
            "mac": mac,
            "mtu": self.mtu,
            "bus": self.bus,
        }


__all__ = ["Allocator", "mac_for"]
