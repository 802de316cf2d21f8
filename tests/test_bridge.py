"""The virtual network bridge (``agent.bridge``) between two agents, in one process: each
bus in a network namespace this test makes (root), the bridges' UDP on 127.0.0.1. Real
sockets, real ChaCha20-Poly1305; forged, flipped and replayed datagrams are dropped and
counted."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent.bridge import HEADER, Bridge, ReplayWindow, open_bus
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

A, B = "0x" + "a" * 40, "0x" + "b" * 40
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
KEY = os.urandom(32)
BUS = "239.255.77.1:47001"


def netns(name: str) -> str:
    subprocess.run(["ip", "netns", "add", name], check=True)
    for args in (["link", "set", "lo", "up"], ["link", "set", "lo", "multicast", "on"],
                 ["route", "add", "224.0.0.0/4", "dev", "lo"]):  # fmt: skip
        subprocess.run(["ip", "-n", name, *args], check=True)
    return name


@pytest.fixture
def pair() -> Iterator[tuple[Bridge, Bridge, dict[str, str]]]:
    tag = uuid.uuid4().hex[:6]
    spaces = {A: netns(f"gu-t{tag}a"), B: netns(f"gu-t{tag}b")}
    ports: dict[str, int] = {}

    def membership(_: str) -> dict[str, Any]:
        return {
            "bus": BUS,
            "keys": [{"id": 1, "key": base64.b64encode(KEY).decode()}],
            "members": [
                {"placement": "p-a", "node": A, "mac": MAC_A, "endpoints": [f"127.0.0.1:{ports[A]}"]},
                {"placement": "p-b", "node": B, "mac": MAC_B, "endpoints": [f"127.0.0.1:{ports[B]}"]},
            ],
        }  # fmt: skip

    a = Bridge(A, membership, lambda n: spaces[A], bind="127.0.0.1")
    b = Bridge(B, membership, lambda n: spaces[B], bind="127.0.0.1")
    ports[A], ports[B] = a.port, b.port
    try:
        for br in (a, b):
            br.start()
            br.sync({"lab"})
        yield a, b, spaces
    finally:
        a.stop()
        b.stop()
        for ns in spaces.values():
            subprocess.run(["ip", "netns", "del", ns], check=False)


def frame(dest: str, src: str, payload: bytes = b"hello over the bridge") -> bytes:
    mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
    return mac(dest) + mac(src) + b"\x08\x00" + payload


def listener(ns: str) -> socket.socket:
    group, _, port = BUS.partition(":")
    rx, tx = open_bus(group, int(port), ns)
    tx.close()
    rx.settimeout(5)
    return rx


def test_a_frame_from_one_bus_reaches_the_other_and_nothing_else(pair: Any) -> None:
    a, b, spaces = pair
    heard = listener(spaces[B])
    group, _, port = BUS.partition(":")
    _, vm = open_bus(group, int(port), spaces[A])  # "a VM" on A's bus
    try:
        vm.sendto(frame(MAC_B, MAC_A), (group, int(port)))
        got = heard.recv(2048)
        assert got == frame(MAC_B, MAC_A)
        net_a = next(iter(a.networks.values()))
        net_b = next(iter(b.networks.values()))
        wait_for(lambda: net_b.counters["framesIn"] == 1, timeout=5, what="one frame in")
        assert net_a.counters["framesOut"] == 1
        # a frame for a MAC the network does not have stays home
        vm.sendto(frame("02:00:00:00:00:99", MAC_A), (group, int(port)))
        wait_for(lambda: net_a.counters["dropped.unknownMac"] == 1, timeout=5, what="dropped")
        # broadcast (ARP) goes to every member
        vm.sendto(frame("ff:ff:ff:ff:ff:ff", MAC_A), (group, int(port)))
        assert heard.recv(2048)[:6] == b"\xff" * 6
        assert b.stats()["lab"]["peers"][A]["path"] == "direct"
    finally:
        vm.close()
        heard.close()


def test_forged_flipped_replayed_and_unknown_datagrams_are_dropped_and_counted(
    pair: Any,
) -> None:
    a, b, _ = pair
    net_a = next(iter(a.networks.values()))
    net_b = next(iter(b.networks.values()))
    src = ("127.0.0.1", a.port)
    good = a._seal(net_a, frame(MAC_B, MAC_A))
    assert good is not None
    assert b.receive(good, src) == "delivered"
    assert b.receive(good, src) == "replay"
    flipped = bytearray(a._seal(net_a, frame(MAC_B, MAC_A)) or b"")
    flipped[-1] ^= 1
    assert b.receive(bytes(flipped), src) == "badTag"
    header = bytearray(a._seal(net_a, frame(MAC_B, MAC_A)) or b"")
    header[HEADER.size - 1] ^= 1  # the counter, authenticated as associated data
    assert b.receive(bytes(header), src) == "badTag"
    net_a.keys = [(1, os.urandom(32))]  # a sender without the network's key
    forged = a._seal(net_a, frame(MAC_B, MAC_A))
    assert forged is not None and b.receive(forged, src) == "badTag"
    unknown = bytearray(good)
    unknown[1:9] = b"\0" * 8
    assert b.receive(bytes(unknown), src) == "unknownNetwork"
    counts = net_b.counters
    assert (counts["dropped.badTag"], counts["dropped.replay"], b.unknown_network) == (3, 1, 1)


def test_an_authenticated_datagram_from_a_new_address_moves_the_peer_there(pair: Any) -> None:
    a, b, _ = pair
    net_a = next(iter(a.networks.values()))
    net_b = next(iter(b.networks.values()))
    first = a._seal(net_a, b"")
    assert first is not None and b.receive(first, ("127.0.0.1", 40001)) == "keepalive"
    assert net_b.peers[A].learned == ("127.0.0.1", 40001)
    moved = a._seal(net_a, b"")
    assert moved is not None and b.receive(moved, ("127.0.0.1", 40002)) == "keepalive"
    assert net_b.peers[A].learned == ("127.0.0.1", 40002)
    # a forged one from yet another address moves nothing
    forged = bytearray(a._seal(net_a, b"") or b"")
    forged[-1] ^= 1
    assert b.receive(bytes(forged), ("127.0.0.1", 40003)) == "badTag"
    assert net_b.peers[A].learned == ("127.0.0.1", 40002)


def test_the_replay_window_accepts_each_counter_once_within_its_span() -> None:
    w = ReplayWindow()
    assert all(w.accept(c) for c in (10, 12, 11, 3000))
    assert not w.accept(12) and not w.accept(3000)
    assert not w.accept(3000 - 2048)  # too old for the window
    assert w.accept(3000 - 2047) and not w.accept(3000 - 2047)


def test_a_peer_keeps_its_path_across_membership_refreshes(pair: Any) -> None:
    """A refresh (every 2 s) must not forget that a peer answers directly: a peer taken for
    unreachable is sent every frame through the hub as well, and its copies arrive as
    replays."""
    a, b, _ = pair
    net_a = next(iter(a.networks.values()))
    hello = b._seal(next(iter(b.networks.values())), b"")
    assert hello is not None and a.receive(hello, ("127.0.0.1", b.port)) == "keepalive"
    assert a.stats()["lab"]["peers"][B]["path"] == "direct"
    a.sync({"lab"})
    a.sync({"lab"})
    assert a.stats()["lab"]["peers"][B]["path"] == "direct"
    assert net_a.peers[B].learned == ("127.0.0.1", b.port)


def test_a_bus_namespace_made_anew_under_its_name_is_joined_again(pair: Any) -> None:
    """The agent deletes a network's namespace with its last VM and makes it again for the
    next: the bridge's bus sockets must follow to the new one."""
    _, b, spaces = pair
    old = next(iter(b.networks.values()))
    subprocess.run(["ip", "netns", "del", spaces[B]], check=True)
    netns(spaces[B])
    b.sync({"lab"})
    new = next(iter(b.networks.values()))
    assert new is not old and new.netns_id != old.netns_id
    heard = listener(spaces[B])
    group, _, port = BUS.partition(":")
    _, vm = open_bus(group, int(port), spaces[A])
    try:
        vm.sendto(frame(MAC_B, MAC_A), (group, int(port)))
        assert heard.recv(2048) == frame(MAC_B, MAC_A)  # injected into the new namespace
    finally:
        vm.close()
        heard.close()
