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
- VM to VM (``--vm-runs`` pings per case; 0 skips it): a real hub on 127.0.0.1 and two
  real agents in provider namespaces of a LAN (``tests.netlan``), TCG guests pinging
  each other every 0.2 s: both VMs on one provider (the bus alone, the baseline), on
  two providers (bus, bridge, bus), and on two providers with UDP between them blocked
  (through the hub's relay). p50/p99 round trips as the guest's ping reports them.

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
from controller.client import Client  # noqa: E402
from tests.helpers import start_hub_subprocess  # noqa: E402
from tests.netlan import Lan  # noqa: E402
from tests.vmkit import busybox_root  # noqa: E402

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
    ap.add_argument("--vm-runs", type=int, default=100, help="pings per VM case (0: none)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_vnet needs root (it makes network namespaces)")
    bridges(args)
    if args.vm_runs:
        with tempfile.TemporaryDirectory(prefix="gu-bench-vnet-") as tmp:
            vm_round_trips(Path(tmp), args.vm_runs)


def bridges(args: argparse.Namespace) -> None:
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


GUEST = """\
case "$1" in
pong) /bin/busybox sleep "$2" ;;
ping) b=/bin/busybox; i=0
      until $b ping -c 1 -W 1 "$2" >/dev/null 2>&1 || [ $i -ge 90 ]; do i=$((i+1)); done
      $b ping -c "$3" -i 0.2 -w "$(($3 / 5 + 30))" "$2" ;;
esac
"""


def vm_round_trips(tmp: Path, pings: int) -> None:
    """Guest-to-guest ping round trips on one bus, across two bridges, and relayed."""
    from runtimes.vm.assets import find_assets

    assets = ROOT / ".venv" / "vmkit-assets"
    find_assets(assets)
    gu = [sys.executable, "-m", "controller.cli.main"]
    procs: list[subprocess.Popen[bytes]] = []
    lan: Lan | None = None
    try:
        hub, url, config = start_hub_subprocess(tmp)
        procs.append(hub)
        env = dict(os.environ, GU_CONFIG=str(config), GU_LOG_LEVEL="WARNING")
        root = busybox_root(tmp / "root", GUEST)
        built = subprocess.run(
            [*gu, "image", "build", "--runtime", "vm", "--from-dir", str(root), "--entrypoint",
             "/bin/sh", "--entrypoint", "/run.sh", "-o", str(tmp / "g.gvmi")],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        image = built.stdout.strip()
        client = Client.from_config(config)
        with open(tmp / "g.gvmi", "rb") as f:
            client.request("POST", "/v1/images", content=f)
        client.apply([
            {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "b"}, "spec": {}},
            {"apiVersion": "gu/v1", "kind": "ImagePolicy", "metadata": {"name": "b"},
             "spec": {"apps": ["b"], "allowImages": [image]}},
            {"apiVersion": "gu/v1", "kind": "VirtualNetwork", "metadata": {"name": "b"},
             "spec": {"cidr": "10.90.0.0/24"}},
        ])  # fmt: skip
        lan = Lan(int(url.rsplit(":", 1)[1]))
        nodes = []
        for name, host in (("pa", 11), ("pb", 12)):
            ns = lan.add(name, host)
            join = client.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "agent.main",
                 "--hub", lan.hub_url(ns), "--join-token", join, "--state-dir",
                 str(tmp / name), "--heartbeat", "1", "--vnet-bind", "0.0.0.0",
                 "--vnet-port", "0", "--runtimes", "vm", "--vm-assets", str(assets),
                 "--vm-accel", "tcg"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            nodes.append(wait_ready(client, set(nodes)))
        a, b = nodes[0], nodes[1]
        same = ping_case(client, image, "same", a, a, pings)
        emit("vm_rtt_same_provider_p50", same[0], "ms", p99_ms=same[1], pings=pings)
        across = ping_case(client, image, "across", a, b, pings)
        emit("vm_rtt_two_providers_p50", across[0], "ms", p99_ms=across[1], pings=pings,
             added_p50_ms=round(across[0] - same[0], 3))  # fmt: skip
        lan.block_udp(lan.namespaces[1], True)
        relayed = ping_case(client, image, "relayed", a, b, pings)
        lan.block_udp(lan.namespaces[1], False)
        emit("vm_rtt_relayed_p50", relayed[0], "ms", p99_ms=relayed[1], pings=pings,
             added_p50_ms=round(relayed[0] - same[0], 3))  # fmt: skip
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if lan is not None:
            lan.close()


def wait_ready(client: Client, known: set[str]) -> str:
    """The node id of a Ready provider not in ``known`` (bounded: 60 s)."""
    for _ in range(600):
        new = [p["nodeId"] for p in client.call("GET", "/peers") if p["ready"]]
        new = [n for n in new if n not in known]
        if new:
            return str(new[0])
        time.sleep(0.1)
    raise SystemExit("a new agent was not Ready after 60 s")


def ping_case(client: Client, image: str, case: str, at: str, to: str, pings: int
              ) -> tuple[float, float]:  # fmt: skip
    """A guest on ``to`` answering, one on ``at`` pinging it: (p50, p99) in ms."""

    def session(name: str, node: str, args: list[str]) -> dict[str, Any]:
        return {"apiVersion": "gu/v1", "kind": "Session", "metadata": {"name": name},
                "spec": {"app": "b", "network": "b", "providers": {"nodes": [node]},
                         "workload": {"runtime": "vm", "image": {"hash": image}, "args": args,
                                      "resources": {"cpu": 0.5, "memoryMiB": 192}}}}  # fmt: skip

    pong, ping = f"{case}-pong", f"{case}-ping"
    client.apply([session(pong, to, ["pong", str(pings // 5 + 200)])])
    address = state_of(client, pong, "Running")["spec"]["networkInterface"]["address"]
    client.apply([session(ping, at, ["ping", address.split("/")[0], str(pings)])])
    state_of(client, ping, "Succeeded", 300)
    out = client.request("GET", f"/v1/sessions/{ping}/logs").text
    times = [float(line.rsplit("time=", 1)[1].split()[0]) for line in out.splitlines()
             if "time=" in line]  # fmt: skip
    for name in (ping, pong):
        client.delete("Session", name)
    for _ in range(600):  # bounded: 60 s
        if not client.list("Placement"):
            break
        time.sleep(0.1)
    if len(times) < pings // 2:
        raise SystemExit(f"{case}: only {len(times)} of {pings} pings answered: {out[-500:]}")
    return round(pct(times, 50), 3), round(pct(times, 99), 3)


def state_of(client: Client, session: str, state: str, seconds: float = 180) -> dict[str, Any]:
    for _ in range(int(seconds * 10)):
        ps = client.list("Placement", selector=f"gu/session={session}")
        if ps and ps[0]["status"].get("state") == state:
            return ps[0]
        if ps and ps[0]["status"].get("state") == "Failed":
            raise SystemExit(f"{session} failed: {ps[0]['status']}")
        time.sleep(0.1)
    raise SystemExit(f"{session} not {state} after {seconds} s")


def _bound(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, port))
    return s


if __name__ == "__main__":
    main()
