"""The virtual network's bridge between providers: Ethernet frames over authenticated UDP.

Every network a provider hosts a VM of has a bus here (``agent.vnet``); the bridge joins
it and carries frames between it and the agents of the network's other members:

- A frame a local VM sends on the bus goes to the node hosting its destination MAC, or,
  broadcast or multicast (ARP), to every other member node. A frame for a MAC not in the
  network is dropped.
- A frame from a peer is injected onto the bus if it is for a local member's MAC or
  broadcast/multicast; anything else is dropped and counted.

Each datagram is ``header || ChaCha20-Poly1305(frame)`` with the header as associated
data: ``version (1) | network id (8: sha256 of the name) | sender node id (20) | key id
(4) | counter (8)``. Every member shares the network's key (``GET
/v1/vnet/{name}/membership``, only to agents hosting a member); each sender encrypts with
its own subkey (HKDF of the network key and its node id), so two senders never reuse a
nonce, and the nonce is the sender's counter, which starts at the clock in nanoseconds
(it never repeats across restarts). Receivers keep a sliding replay window of 2,048
counters per sender and key. A datagram that fails any check is dropped and counted.

Peers are addressed by node id, not by IP: the membership lists each member node's
reported endpoints (heartbeats carry this agent's); an authenticated datagram from a new
source address moves that peer's endpoint there (WireGuard-style roaming), and every
member is sent a keepalive every ``KEEPALIVE_SECONDS`` so NAT mappings stay open. When
nothing came directly from a peer for ``PATH_TIMEOUT``, datagrams for it also go through
the hub (``POST /v1/vnet/relay``, over the agent's authenticated connection; the hub
passes ciphertext on and can read none of it) while the direct path keeps being tried;
the first datagram heard directly again makes it direct (Tailscale's DERP fallback, in
small).
The membership is read again every ``REFRESH_SECONDS`` while the provider hosts a
member; keys rotate with it (the previous key is still accepted during the overlap).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import itertools
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from specs.kinds import default_bus
from specs.logfmt import kv

log = logging.getLogger("gu.agent.bridge")

VERSION = 1
HEADER = struct.Struct("!B8s20sIQ")
REPLAY_WINDOW = 2048
KEEPALIVE_SECONDS = 2.0
PATH_TIMEOUT = 5.0
"""A path counts as working while a datagram came over it within this many seconds."""
RELAYED = ("relay", 0)
"""The source address of a datagram that came through the hub's relay."""
REFRESH_SECONDS = 2.0
MAX_DATAGRAM = 65535
SOCKET_BUFFER = 4 << 20
"""Receive buffers of the bus and peer sockets: bursts wait there, not on the floor."""
CLONE_NEWNET = 0x40000000
DROP_REASONS = ("badTag", "replay", "unknownNetwork", "unknownPeer", "unknownMac", "malformed")

Membership = Callable[[str], dict[str, Any]]
"""``membership(network)``: the hub's ``GET /v1/vnet/{name}/membership`` answer."""


class RelayPort(Protocol):
    """The hub's relay over the agent's authenticated connection (``agent.hubsession``)."""

    def relay_send(self, to: str, datagrams: list[bytes]) -> None: ...

    def relay_poll(self, timeout: float) -> list[bytes]: ...


def network_id(network: str) -> bytes:
    return hashlib.sha256(network.encode()).digest()[:8]


def node_bytes(node: str) -> bytes:
    return bytes.fromhex(node.removeprefix("0x"))


def sender_key(key: bytes, node: str) -> bytes:
    """The subkey one sender encrypts with (its nonces never meet another sender's)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"gu vnet sender " + node_bytes(node)
    ).derive(key)


class ReplayWindow:
    """Counters seen from one sender under one key: each accepted once, within the newest
    ``REPLAY_WINDOW`` (RFC 6479's sliding window, as WireGuard keeps)."""

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def accept(self, counter: int) -> bool:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = counter
            return True
        back = self.top - counter
        if back >= REPLAY_WINDOW or self.bits >> back & 1:
            return False
        self.bits |= 1 << back
        return True


@dataclass
class Peer:
    node: str
    reported: list[tuple[str, int]] = field(default_factory=list)
    learned: tuple[str, int] | None = None
    last_heard: float = 0.0
    direct_at: float = 0.0
    relayed_at: float = 0.0

    def targets(self) -> list[tuple[str, int]]:
        """Where to send: the address it was last heard from, else every reported one."""
        return [self.learned] if self.learned else list(self.reported)

    def direct(self, now: float) -> bool:
        return now - self.direct_at < PATH_TIMEOUT

    def path(self, now: float) -> str:
        if self.direct(now):
            return "direct"
        return "relayed" if now - self.relayed_at < PATH_TIMEOUT else "unknown"


@dataclass
class Network:
    """One network this provider hosts a member of."""

    name: str
    nid: bytes
    bus: tuple[str, int]
    netns: str | None
    rx: socket.socket
    tx: socket.socket
    netns_id: tuple[int, int] | None = None  # which namespace of that name (namespace_id)
    keys: list[tuple[int, bytes]] = field(default_factory=list)
    local_macs: set[bytes] = field(default_factory=set)
    macs: dict[bytes, str] = field(default_factory=dict)  # MAC → node hosting it
    peers: dict[str, Peer] = field(default_factory=dict)
    windows: dict[tuple[str, int], ReplayWindow] = field(default_factory=dict)
    counters: dict[str, int] = field(
        default_factory=lambda: (
            {"framesOut": 0, "bytesOut": 0, "framesIn": 0, "bytesIn": 0}
            | {f"dropped.{r}": 0 for r in DROP_REASONS}
        )
    )


def namespace_id(netns: str | None) -> tuple[int, int] | None:
    """Which namespace ``/run/netns/<netns>`` is now (device, inode; None: the host's, or
    none of that name): a namespace deleted and made again under one name differs."""
    if netns is None:
        return None
    try:
        st = os.stat(f"/run/netns/{netns}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


IP_BLOCK_SOURCE = getattr(socket, "IP_BLOCK_SOURCE", 38)  # (Linux; Python lacks the name)


def bus_source(node: str) -> str:
    """The loopback address this agent's bridge speaks on its buses from: its own, so its
    listening socket can have the kernel drop what it injected itself (127.x.y.z from the
    node id; every 127/8 address is the loopback's)."""
    h = hashlib.sha256(node.encode()).digest()
    return f"127.{h[0]}.{h[1]}.{max(2, h[2])}"


def open_bus(
    group: str, port: int, netns: str | None, source: str = "127.0.0.1"
) -> tuple[socket.socket, socket.socket]:
    """(the socket that hears the bus, the one that speaks on it from ``source``), made
    inside ``netns`` (a socket stays in the namespace it was made in, whichever thread
    uses it). With a ``source`` of its own the listening socket does not hear what the
    speaking one sends: every injected frame would otherwise come back to be dropped."""
    made: list[Any] = []

    def make() -> None:
        try:
            if netns is not None:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {netns}")
                finally:
                    os.close(fd)
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(AttributeError, OSError):
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            rx.bind((group, port))
            mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            if source != "127.0.0.1":  # struct ip_mreq_source: group, interface, source
                rx.setsockopt(socket.IPPROTO_IP, IP_BLOCK_SOURCE, mreq + socket.inet_aton(source))
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.bind((source, 0))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            made.extend([rx, tx])
        except BaseException as exc:
            made.append(exc)

    # a thread of its own: setns moves only the calling thread, which then ends
    t = threading.Thread(target=make, name="gu-vnet-setns", daemon=True)
    t.start()
    t.join(10)
    if not made or isinstance(made[0], BaseException):
        raise RuntimeError(f"cannot open the bus {group}:{port} in {netns}: {made[:1]}")
    return made[0], made[1]


def _recv(sock: socket.socket) -> tuple[bytes, Any] | None:
    """One datagram from a non-blocking socket, or None after 0.5 s without one. While
    datagrams keep coming this is one system call each: a socket with a timeout would
    poll before every read."""
    try:
        return sock.recvfrom(MAX_DATAGRAM)
    except BlockingIOError:
        select.select([sock], [], [], 0.5)
        return None


class Bridge:
    """The bridge of one agent (see the module doc)."""

    def __init__(
        self,
        node_id: str,
        membership: Membership,
        netns_of: Callable[[str], str | None],
        port: int = 0,
        bind: str = "0.0.0.0",
        relay: RelayPort | None = None,
    ) -> None:
        self.node_id = node_id
        self.relay = relay
        self._outbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=4096)
        self.me = node_bytes(node_id)
        self.membership = membership
        self.netns_of = netns_of
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        try:
            self.sock.bind((bind, port))
        except OSError as exc:  # (another agent on this machine has it): any free port
            log.warning(kv("vnet_port_taken", port=port, error=exc, action="using a free one"))
            self.sock.bind((bind, 0))
        self.sock.setblocking(False)  # (see _recv)
        self.port = self.sock.getsockname()[1]
        self.bind = bind
        log.info(kv("vnet_bridge_listening", address=f"{bind}:{self.port}"))
        self.networks: dict[bytes, Network] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(time.time_ns())
        self._aeads: dict[tuple[bytes, str], ChaCha20Poly1305] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.unknown_network = 0
        """Datagrams for no network this agent hosts (or of another version)."""

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loops = [(self._peer_loop, "gu-vnet-peers")]
        if self.relay is not None:
            loops += [(self._relay_out, "gu-vnet-relay-out"), (self._relay_in, "gu-vnet-relay-in")]
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        with self._lock:
            nets = list(self.networks.values())
            self.networks.clear()
        for net in nets:
            net.rx.close()
            net.tx.close()
        self.sock.close()

    def endpoints(self) -> list[str]:
        """This agent's bridge endpoints, for its heartbeats (``ip:port``)."""
        if self.bind not in ("0.0.0.0", ""):
            return [f"{self.bind}:{self.port}"]
        out = []
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family == socket.AF_INET and not a.address.startswith("127."):
                    out.append(f"{a.address}:{self.port}")
        return sorted(out)

    # ---------------------------------------------------------- membership

    def hosted(self) -> list[str]:
        with self._lock:
            return [n.name for n in self.networks.values()]

    def sync(self, networks: set[str]) -> None:
        """Join the networks in ``networks`` (read their membership now) and leave the
        others; called by the agent as its VMs come and go, and every REFRESH_SECONDS."""
        for name in networks:
            try:
                self._refresh(name, self.membership(name))
            except Exception as exc:
                log.warning(kv("vnet_membership_failed", network=name, error=exc))
        with self._lock:
            gone = [n for n in self.networks.values() if n.name not in networks]
            for net in gone:
                del self.networks[net.nid]
        for net in gone:
            net.rx.close()
            net.tx.close()
            log.info(kv("vnet_left", network=net.name, counters=net.counters))

    def _refresh(self, name: str, m: dict[str, Any]) -> None:
        nid = network_id(name)
        netns = self.netns_of(name)
        with self._lock:
            net = self.networks.get(nid)
        if net is not None and net.netns_id != namespace_id(netns):
            # the bus's namespace was deleted with the network's last VM here and made
            # anew for the next one: the sockets are still in the old one, hear the new
            with self._lock:
                self.networks.pop(nid, None)
            net.rx.close()
            net.tx.close()
            log.info(kv("vnet_bus_moved", network=name, netns=netns))
            net = None
        if net is None:
            members = m.get("members") or []
            bus = str(m.get("bus") or default_bus(name))
            mine = [x for x in members if x.get("node") == self.node_id]
            group, _, port = bus.partition(":")
            ns_id = namespace_id(netns)
            rx, tx = open_bus(group, int(port), netns, bus_source(self.node_id))
            net = Network(name, nid, (group, int(port)), netns, rx, tx, netns_id=ns_id)
            with self._lock:
                self.networks[nid] = net
            t = threading.Thread(
                target=self._bus_loop, args=(net,), name=f"gu-vnet-bus-{name}", daemon=True
            )
            t.start()
            self._threads.append(t)
            log.info(kv("vnet_joined", network=name, bus=bus, local=len(mine)))
        keys = [(int(k["id"]), base64.b64decode(k["key"])) for k in m.get("keys") or []]
        macs: dict[bytes, str] = {}
        local: set[bytes] = set()
        peers: dict[str, Peer] = {}
        for member in m.get("members") or []:
            mac = bytes.fromhex(str(member.get("mac", "")).replace(":", ""))
            node = str(member.get("node"))
            macs[mac] = node
            if node == self.node_id:
                local.add(mac)
                continue
            reported = []
            for e in member.get("endpoints") or []:
                host, _, p = str(e).rpartition(":")
                if host and p.isdigit():
                    reported.append((host, int(p)))
            # the same Peer for a known node: where it was heard from, and its paths, stay
            peer = peers[node] = net.peers.get(node) or Peer(node)
            peer.reported = reported
        with self._lock:
            net.keys, net.macs, net.local_macs, net.peers = keys, macs, local, peers

    # ----------------------------------------------------------- sending

    def _aead(self, key: bytes, node: str) -> ChaCha20Poly1305:
        found = self._aeads.get((key, node))
        if found is None:
            found = self._aeads[(key, node)] = ChaCha20Poly1305(sender_key(key, node))
        return found

    def _seal(self, net: Network, frame: bytes) -> bytes | None:
        if not net.keys:
            return None
        key_id, key = net.keys[0]
        counter = next(self._counter)
        header = HEADER.pack(VERSION, net.nid, self.me, key_id, counter)
        nonce = b"\0\0\0\0" + counter.to_bytes(8, "big")
        return header + self._aead(key, self.node_id).encrypt(nonce, frame, header)

    def send_frame(self, net: Network, frame: bytes) -> None:
        """A frame from the local bus: to the node of its destination MAC, or to every
        member node for broadcast and multicast."""
        dest = frame[:6]
        if len(frame) < 14:
            net.counters["dropped.malformed"] += 1
            return
        if dest[0] & 1:
            nodes = list(net.peers)
        else:
            node = net.macs.get(dest)
            if node is None:
                net.counters["dropped.unknownMac"] += 1
                return
            if node == self.node_id:
                return  # another VM on this bus: it has the frame already
            nodes = [node]
        datagram = self._seal(net, frame)
        if datagram is None:
            return
        now = time.monotonic()
        for node in nodes:
            peer = net.peers.get(node)
            if peer is None:
                continue
            self._send(peer, datagram, now)
            net.counters["framesOut"] += 1
            net.counters["bytesOut"] += len(frame)

    def _send(self, peer: Peer, datagram: bytes, now: float) -> None:
        """Directly while that path works; else through the hub's relay as well, while
        the direct one keeps being tried (it is taken again as soon as it answers)."""
        for target in peer.targets():
            with contextlib.suppress(OSError):
                self.sock.sendto(datagram, target)
        if self.relay is not None and not peer.direct(now):
            with contextlib.suppress(queue.Full):
                self._outbox.put_nowait((peer.node, datagram))

    def keepalive(self) -> None:
        """An empty authenticated datagram to every peer of every network."""
        with self._lock:
            nets = list(self.networks.values())
        now = time.monotonic()
        for net in nets:
            datagram = self._seal(net, b"")
            if datagram is None:
                continue
            for peer in list(net.peers.values()):
                self._send(peer, datagram, now)

    # --------------------------------------------------------- receiving

    def _bus_loop(self, net: Network) -> None:
        net.rx.setblocking(False)
        own = net.tx.getsockname()
        while not self._stop.is_set():
            try:
                got = _recv(net.rx)
            except OSError:
                return  # closed: the network was left
            if got is None:
                continue
            frame, src = got
            if src == own:
                continue  # what this bridge injected, heard back (where not blocked)
            self.send_frame(net, frame)

    def _peer_loop(self) -> None:
        last_keepalive = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_keepalive >= KEEPALIVE_SECONDS:
                last_keepalive = now
                self.keepalive()
            try:
                got = _recv(self.sock)
            except OSError:
                return
            if got is not None:
                self.receive(*got)

    def receive(self, datagram: bytes, src: tuple[str, int]) -> str:
        """Check one datagram from a peer and deliver its frame; what became of it
        (``delivered``, ``keepalive``, or the drop reason)."""
        if len(datagram) < HEADER.size + 16:
            self.unknown_network += 1
            return "malformed"
        version, nid, sender, key_id, counter = HEADER.unpack_from(datagram)
        net = self.networks.get(nid)  # (one dict read: atomic; writers hold the lock)
        if version != VERSION or net is None:
            self.unknown_network += 1
            return "unknownNetwork"
        node = "0x" + sender.hex()
        peer = net.peers.get(node)
        if peer is None:
            return self._drop(net, "unknownPeer")
        key = next((k for i, k in net.keys if i == key_id), None)
        if key is None:
            return self._drop(net, "badTag")
        header = datagram[: HEADER.size]
        nonce = b"\0\0\0\0" + counter.to_bytes(8, "big")
        try:
            frame = self._aead(key, node).decrypt(nonce, datagram[HEADER.size :], header)
        except InvalidTag:
            return self._drop(net, "badTag")
        window = net.windows.get((node, key_id))
        if window is None:
            window = net.windows[(node, key_id)] = ReplayWindow()
        if not window.accept(counter):
            return self._drop(net, "replay")
        now = time.monotonic()
        if src == RELAYED:
            if not peer.direct(now) and now - peer.relayed_at >= PATH_TIMEOUT:
                log.info(kv("vnet_peer_relayed", network=net.name, peer=node))
            peer.relayed_at = now
        else:
            if peer.learned != src:
                if peer.learned is not None:
                    log.info(kv("vnet_peer_roamed", network=net.name, peer=node,
                                endpoint=f"{src[0]}:{src[1]}"))  # fmt: skip
                peer.learned = src
            if not peer.direct(now):
                log.info(kv("vnet_peer_direct", network=net.name, peer=node))
            peer.direct_at = now
        peer.last_heard = now
        if not frame:
            return "keepalive"
        dest = frame[:6]
        if not (dest[0] & 1) and dest not in net.local_macs:
            return self._drop(net, "unknownMac")
        with contextlib.suppress(OSError):
            net.tx.sendto(frame, net.bus)
            net.counters["framesIn"] += 1
            net.counters["bytesIn"] += len(frame)
        return "delivered"

    # ------------------------------------------------------------- relay

    def _relay_out(self) -> None:
        """Hand queued datagrams to the hub's relay, in batches per recipient."""
        assert self.relay is not None
        while not self._stop.is_set():
            try:
                first = self._outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            batch: dict[str, list[bytes]] = {first[0]: [first[1]]}
            with contextlib.suppress(queue.Empty):
                for _ in range(255):
                    node, datagram = self._outbox.get_nowait()
                    batch.setdefault(node, []).append(datagram)
            for node, datagrams in batch.items():
                try:
                    self.relay.relay_send(node, datagrams)
                except Exception as exc:  # the hub is away: direct probes go on
                    log.debug(kv("vnet_relay_send_failed", peer=node, error=exc))

    def _relay_in(self) -> None:
        """Take what the hub relays to this agent (long poll) as if it came over UDP."""
        assert self.relay is not None
        while not self._stop.is_set():
            with self._lock:
                hosting = bool(self.networks)
            if not hosting:  # no network here: nothing can be relayed to this agent
                self._stop.wait(1.0)
                continue
            try:
                datagrams = self.relay.relay_poll(20.0)
            except Exception as exc:
                log.debug(kv("vnet_relay_poll_failed", error=exc))
                self._stop.wait(1.0)
                continue
            for datagram in datagrams:
                self.receive(datagram, RELAYED)
            if not datagrams:
                self._stop.wait(0.2)  # (a hub that is stopping answers at once: no spin)

    def _drop(self, net: Network, reason: str) -> str:
        net.counters[f"dropped.{reason}"] += 1
        return reason

    def stats(self) -> dict[str, Any]:
        """Per network: counters, drops by reason and each peer's path (direct once heard
        from, with its endpoint) — what the heartbeat's ``usage.networks`` carries."""
        with self._lock:
            nets = list(self.networks.values())
        return {
            n.name: {
                **{k: v for k, v in n.counters.items() if not k.startswith("dropped.")},
                "dropped": {
                    k.removeprefix("dropped."): v
                    for k, v in n.counters.items()
                    if k.startswith("dropped.") and v
                },
                "peers": {
                    p.node: {
                        "path": p.path(time.monotonic()),
                        "endpoint": f"{p.learned[0]}:{p.learned[1]}" if p.learned else None,
                    }
                    for p in n.peers.values()
                },
            }
            for n in nets
        }


__all__ = [
    "HEADER",
    "Bridge",
    "ReplayWindow",
    "bus_source",
    "namespace_id",
    "network_id",
    "open_bus",
    "sender_key",
]
