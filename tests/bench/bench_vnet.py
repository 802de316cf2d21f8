"""The virtual network bridge between two provider namespaces, against plain UDP.

Run (root: it makes network namespaces): ``python tests/bench/bench_vnet.py [--frames
20000] [--pings 1000]``. Prints one JSON line per figure.

The LAN: two provider namespaces joined by a veth pair (192.0.2.1/24 and 192.0.2.2/24,
TEST-NET-1), each with an agent's bridge (``agent.bridge.Bridge``, in a process of its
own, its UDP socket in its provider namespace), and one bus namespace per provider for
the network (loopback only, as the agent makes them). Synthetic 1,400-byte frames for
the remote member's MAC are injected on A's bus and counted on B's.

- throughput: frames/s and Mbit/s of frames delivered on B's bus while A's bus is
  flooded, against plain UDP datagrams of the same size sent from A's provider namespace
  to B's with the same Python sender and receiver, in the same run (ratio; goal ≥ 0.5).
- latency: one-way, frames paced 1 ms apart carrying the send time (one host, one
  clock), p50/p99 through the bridges against plain UDP (added p99; goal ≤ 1 ms).

Every namespace is deleted at the end; no traffic leaves them.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.bridge import open_bus  # noqa: E402

A, B = "0x" + "a" * 40, "0x" + "b" * 40
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
BUS = ("239.255.77.2", 47002)
PORT = 47100
SIZE = 1400


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "vnet", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that entered ``ns`` (what it makes stays there)."""
    out: list[Any] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        out.append(fn())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


BRIDGE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from agent.bridge import Bridge
m = json.load(open(sys.argv[2]))
b = Bridge(sys.argv[3], lambda n: m, lambda n: sys.argv[4], port=int(sys.argv[5]),
           bind=sys.argv[6])
b.start()
b.sync({"bench"})
print("ready", flush=True)
sys.stdin.read()
print(json.dumps(b.stats()), flush=True)
b.stop()
"""


def frame(seq: int) -> bytes:
    mac = bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(MAC_A.replace(":", ""))
    head = mac + b"\x08\x00" + struct.pack("!QQ", seq, time.perf_counter_ns())
    return head + b"\0" * (SIZE - len(head))


def receive(
    sock: socket.socket, want: int, seconds: float, offset: int
) -> tuple[int, list[float], float]:
    """Frames received (until ``want`` or ``seconds`` of silence), their one-way delays, and
    the time from the first to the last."""
    sock.settimeout(seconds)
    got, delays = 0, []
    first = last = 0.0
    try:
        while got < want:
            data = sock.recv(4096)
            last = time.perf_counter()
            first = first or last
            _, sent = struct.unpack_from("!QQ", data, offset)
            delays.append((time.perf_counter_ns() - sent) / 1e6)
            got += 1
    except TimeoutError:
        pass
    return got, delays, last - first


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def run_pair(send: Callable[[bytes], None], rx: socket.socket, frames: int, pings: int,
             offset: int) -> dict[str, float]:  # fmt: skip
    """Flood ``frames`` then pace ``pings``; throughput and one-way delays at ``rx``."""
    result: dict[str, Any] = {}

    def listen() -> None:
        result["flood"] = receive(rx, frames, 2.0, offset)

    t = threading.Thread(target=listen)
    t.start()
    for i in range(frames):
        send(frame(i))
    t.join()
    got, _, span = result["flood"]
    t = threading.Thread(target=lambda: result.setdefault("ping", receive(rx, pings, 2.0, offset)))
    t.start()
    for i in range(pings):
        send(frame(i))
        time.sleep(0.001)
    t.join()
    delays = result["ping"][1]
    fps = (got - 1) / span if got > 1 and span > 0 else 0.0
    return {"fps": fps, "got": got, "p50": pct(delays, 50), "p99": pct(delays, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--pings", type=int, default=1000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_vnet needs root (it makes network namespaces)")
    tag = uuid.uuid4().hex[:5]
    pa, pb, ba, bb = (f"gub{tag}{x}" for x in ("pa", "pb", "ba", "bb"))
    made: list[str] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        for ns in (pa, pb, ba, bb):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns in (ba, bb):
            sh("ip", "-n", ns, "link", "set", "lo", "multicast", "on")
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "lo")
        sh("ip", "link", "add", f"v{tag}a", "netns", pa, "type", "veth", "peer", f"v{tag}b",
           "netns", pb)  # fmt: skip
        for ns, dev, addr in ((pa, f"v{tag}a", "192.0.2.1/24"), (pb, f"v{tag}b", "192.0.2.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        membership = {
            "bus": f"{BUS[0]}:{BUS[1]}",
            "keys": [{"id": 1, "key": base64.b64encode(os.urandom(32)).decode()}],
            "members": [
                {"placement": "a", "node": A, "mac": MAC_A, "endpoints": [f"192.0.2.1:{PORT}"]},
                {"placement": "b", "node": B, "mac": MAC_B, "endpoints": [f"192.0.2.2:{PORT}"]},
            ],
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(membership, f)
        for ns, node, bus_ns, addr in ((pa, A, ba, "192.0.2.1"), (pb, B, bb, "192.0.2.2")):
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", BRIDGE, str(ROOT), f.name,
                 node, bus_ns, str(PORT), addr],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

        # plain UDP, provider namespace A → B, the same sender and receiver
        rx_plain = in_netns(pb, lambda: _bound("192.0.2.2", PORT + 1))
        tx_plain = in_netns(pa, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        plain = run_pair(lambda d: tx_plain.sendto(d[14:], ("192.0.2.2", PORT + 1)), rx_plain,
                         args.frames, args.pings, 0)  # fmt: skip
        # through the bridges: injected on A's bus, heard on B's
        rx_bus, _unused = open_bus(*BUS, bb)
        rx_bus.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        _, tx_bus = open_bus(*BUS, ba)
        bridged = run_pair(lambda d: tx_bus.sendto(d, BUS), rx_bus, args.frames, args.pings, 14)
        mbit = lambda fps: fps * SIZE * 8 / 1e6  # noqa: E731
        emit("plain_udp_throughput", plain["fps"], "frames/s", mbit_s=round(mbit(plain["fps"]), 1),
             delivered=plain["got"], sent=args.frames)  # fmt: skip
        emit("bridge_throughput", bridged["fps"], "frames/s",
             mbit_s=round(mbit(bridged["fps"]), 1), delivered=bridged["got"], sent=args.frames,
             ratio_to_plain=round(bridged["fps"] / plain["fps"], 3), goal_ratio=0.5)  # fmt: skip
        emit("plain_udp_latency_p50", plain["p50"], "ms", p99_ms=round(plain["p99"], 3))
        emit("bridge_latency_p50", bridged["p50"], "ms", p99_ms=round(bridged["p99"], 3),
             added_p99_ms=round(bridged["p99"] - plain["p99"], 3), goal_added_p99_ms=1.0)  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                assert p.stdin is not None
                p.stdin.close()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _bound(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, port))
    return s


if __name__ == "__main__":
    main()
