"""A LAN of network namespaces for the tests that cross a network (root only).

``Lan`` makes one bridge namespace holding a Linux bridge and, per provider, a namespace
joined to it by a veth pair, with an address from TEST-NET-1 (192.0.2.0/24): traffic
between providers crosses a real (virtual) link whose addresses a test may change or
block, and goes nowhere else. The hub stays on the host's loopback: each provider
namespace gets a forwarder on its own 127.0.0.1 to it (a listening socket made inside
the namespace, connections passed on to the hub's port from the host's), so an agent
started with ``ip netns exec`` reaches the hub at ``Lan.hub_url(ns)``.

Everything made is deleted by ``close`` (the namespaces take their links with them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
SUBNET = "192.0.2"
"""TEST-NET-1: addresses no real network uses."""


def sh(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a thread that entered namespace ``ns`` (sockets it makes stay there)."""
    out: list[Any] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if not out or isinstance(out[0], BaseException):
        raise RuntimeError(f"in namespace {ns}: {out[:1]}")
    return out[0]


class Forwarder:
    """Connections to 127.0.0.1:``port`` inside a namespace, passed on to the host's
    127.0.0.1:``target`` (the hub): one thread per direction per connection."""

    def __init__(self, ns: str, target: int) -> None:
        self.target = target
        self.listener: socket.socket = in_netns(ns, self._listen)
        self.port = self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"fwd-{ns}", daemon=True).start()

    @staticmethod
    def _listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        return s

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                outer.settimeout(None)
            except OSError:
                inner.close()
                continue
            for sock in (inner, outer):  # (or Nagle holds a request's body for an ACK)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open += [inner, outer]
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.close()
            self._open.clear()


class Lan:
    """The LAN (see the module doc): ``add(name)`` makes a provider namespace on it."""

    def __init__(self, hub_port: int) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.hub_port = hub_port
        self.bridge_ns = f"gul{self.tag}br"
        self.namespaces: list[str] = []
        self.forwarders: dict[str, Forwarder] = {}
        self.devices: dict[str, str] = {}
        self._make(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")

    def _make(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def add(self, name: str, host: int) -> str:
        """A provider namespace ``name`` at ``192.0.2.<host>/24`` on the LAN; its name."""
        ns = f"gul{self.tag}{name}"[:15]
        self._make(ns)
        dev, peer = f"v{self.tag}{name}"[:15], f"b{self.tag}{name}"[:15]
        sh("ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", peer,
           "netns", self.bridge_ns)  # fmt: skip
        sh("ip", "-n", self.bridge_ns, "link", "set", peer, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{host}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        self.devices[ns] = dev
        self.forwarders[ns] = Forwarder(ns, self.hub_port)
        return ns

    def hub_url(self, ns: str) -> str:
        """The hub's URL as seen from inside provider namespace ``ns``."""
        return f"http://127.0.0.1:{self.forwarders[ns].port}"

    def readdress(self, ns: str, host: int) -> None:
        """Move ``ns`` to ``192.0.2.<host>``: its address flushed and another added."""
        sh("ip", "-n", ns, "addr", "flush", "dev", self.devices[ns])
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{host}/24", "dev", self.devices[ns])

    def block_udp(self, ns: str, blocked: bool) -> None:
        """Drop (or stop dropping) every UDP datagram into and out of ``ns``'s LAN link."""
        action = "-I" if blocked else "-D"
        dev = self.devices[ns]
        for chain, way in (("INPUT", "-i"), ("OUTPUT", "-o")):
            sh("ip", "netns", "exec", ns, "iptables", action, chain, way, dev, "-p", "udp",
               "-j", "DROP")  # fmt: skip

    def close(self) -> None:
        for fwd in self.forwarders.values():
            fwd.close()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()


def lan_possible() -> str | None:
    """Why a LAN of namespaces cannot be made here (None: it can)."""
    import shutil

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None
