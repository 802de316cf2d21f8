"""gVMkit end to end: a real hub, a real agent running QEMU VMs under TCG.

Built once for the module: a hub; agent ``vm`` with the test's guest assets
(``--vm-assets``, ``--vm-accel tcg``); an App, an ImagePolicy and a busybox
``.gvmi`` built with ``gu image build --runtime vm --from-dir`` and pushed with
``gu image push``. Three VMs boot in all: one that exits 7, one that exits 0,
one that runs until it is suspended, resumed, outlives a ``kill -9`` of its
agent and is deleted. A tampered image boots none.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.vnet import netns_name
from controller.client import Client
from specs.identity import load_private_key
from tests.conftest import HubProcess, make_hub
from tests.helpers import run_gu, wait_for
from tests.netlan import Lan, lan_possible
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import session_gone, tear_down
from tests.vmkit import busybox_root, qemu_pids, vm_assets


@dataclass
class Pool:
    hub: HubProcess
    admin: Client
    agent: AgentProcess
    image: str
    assets: Path
    tmp: Path


SCRIPT = """\
# the other member of a two-member network: .1 for .2, .2 for anything else
other_of() { echo "$1" | /bin/busybox awk -F'[./]' '{print $1"."$2"."$3"."($4 == 1 ? 2 : 1)}'; }
# a peer may boot later: one ping a second until it answers (ping -c N sends only N)
reach() { for _ in $(/bin/busybox seq 1 "${2:-90}"); do
    /bin/busybox ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0; done; return 1; }
case "$1" in
exit7) echo hello-from-vm; echo oops >&2; exit 7 ;;
ok) echo fine; exit 0 ;;
count) i=0; while :; do i=$((i+1)); echo $i; /bin/busybox usleep 100000; done ;;
io) b=/bin/busybox; $b sha256sum in/data.bin | $b cut -d' ' -f1 > out/result.txt
    if echo x 2>/dev/null > in/data.bin; then echo writable; else echo read-only; fi > out/ro.txt
    $b mkdir out/sub && echo nested > out/sub/note.txt ;;
peer) b=/bin/busybox; $b ip addr; me=$($b ip -4 -o addr show eth0 | $b awk '{print $4}')
    other=$(other_of "$me")
    reach "$other" 60 && $b ping -c 3 -w 10 "$other" && echo "reached $other"; r=$?
    $b sleep 6; exit $r ;;  # (stays up for the peer's pings)
mesh) b=/bin/busybox; me=$($b ip -4 -o addr show eth0 | $b awk '{print $4}' | $b cut -d/ -f1)
    pre=${me%.*}; ok=0; first=
    for i in $($b seq 1 "$2"); do
      [ "$pre.$i" = "$me" ] && continue; [ -n "$first" ] || first=$pre.$i
      reach "$pre.$i" && { echo "reached $pre.$i"; ok=$((ok+1)); }
    done
    echo "mesh done $ok"
    [ "$3" = long ] && $b ping -c 40 -i 0.25 -w 40 "$first" | $b tail -2
    $b sleep "${4:-25}" ;;
pingloop) b=/bin/busybox; me=$($b ip -4 -o addr show eth0 | $b awk '{print $4}')
    other=$(other_of "$me")
    reach "$other"; echo "pinging $other"
    $b ping -c "$2" -i 0.25 -w "$(($2 / 4 + 30))" "$other" | $b tail -2; $b sleep 4 ;;
tcprecv) b=/bin/busybox; me=$($b ip -4 -o addr show eth0 | $b awk '{print $4}')
    other=$(other_of "$me"); i=0
    until $b wget -q -O /tmp/got "http://$other:5000/out"; do
      i=$((i+1)); [ $i -gt 90 ] && exit 1; $b sleep 1
    done
    echo "received $($b sha256sum /tmp/got | $b cut -d' ' -f1) $($b wc -c < /tmp/got)" ;;
tcpsend) b=/bin/busybox; $b mkdir -p /tmp/www; $b head -c 10485760 /dev/urandom > /tmp/www/out
    echo "sent $($b sha256sum /tmp/www/out | $b cut -d' ' -f1)"
    $b httpd -f -p 5000 -h /tmp/www & h=$!
    i=0; while [ $i -lt 120 ]; do $b sleep 1; i=$((i+1)); done; kill $h ;;
iso) /bin/busybox ip addr add "$3" dev eth0  # even with an address of the other network
     if /bin/busybox ping -c 3 -w 6 "$2" >/dev/null 2>&1; then echo "reached $2"
     else echo "isolated from $2"; fi ;;
flood) i=0; while :; do /bin/busybox head -c 1048576 /dev/zero > out/c$i; i=$((i+1)); done ;;
esac
"""


def vm_session(
    pool: Pool,
    name: str,
    mode: str,
    cpu: float = 1,
    data: dict[str, Any] | None = None,
    **spec: Any,
) -> None:
    pool.admin.apply(
        [
            {
                "apiVersion": "gu/v1",
                "kind": "Session",
                "metadata": {"name": name},
                "spec": {
                    "app": "vms",
                    "workload": {
                        "runtime": "vm",
                        "image": {"hash": pool.image},
                        "args": [mode],
                        "resources": {"cpu": cpu, "memoryMiB": 192},
                        **(data or {}),
                    },
                    **spec,
                },
            }
        ]
    )


def placement_in(pool: Pool, session: str, state: str, timeout: float = 120) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        ps = pool.admin.list("Placement", selector=f"gu/session={session}")
        return ps[0] if len(ps) == 1 and ps[0]["status"].get("state") == state else None

    return wait_for(found, timeout=timeout, what=f"{session}'s placement {state}")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    assets = vm_assets()
    tmp = tmp_path_factory.mktemp("vm-pool")
    hub = make_hub(tmp)
    hub.start()
    admin = hub.client()
    agents: list[AgentProcess] = []
    try:
        root = busybox_root(tmp / "root", SCRIPT)
        gvmi = tmp / "busybox.gvmi"
        built = run_gu(
            "image", "build", "--runtime", "vm", "--from-dir", str(root),
            "--entrypoint", "/bin/sh", "--entrypoint", "/run.sh", "-o", str(gvmi), env=hub.env,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        image = built.stdout.strip()
        pushed = run_gu("image", "push", str(gvmi), env=hub.env)
        assert pushed.returncode == 0 and pushed.stdout.strip() == image, pushed.stderr
        admin.apply(
            [
                {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "vms"}, "spec": {}},
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "vms"},
                    "spec": {"apps": ["vms"], "allowImages": [image]},
                },
            ]
        )
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        agent = AgentProcess(hub, tmp / "vm", tmp / "vm.log")
        agent.start(
            "--join-token", token, "--name", "vm", "--heartbeat", "1",
            "--runtimes", "native,vm", "--vm-assets", str(assets), "--vm-accel", "tcg",
        )  # fmt: skip
        agents.append(agent)
        wait_for(
            lambda: [p for p in admin.call("GET", "/peers") if p["ready"]],
            timeout=30,
            what="the agent Ready",
        )
        yield Pool(hub, admin, agent, image, assets, tmp)
    finally:
        tear_down(hub, admin, agents, "gu-vm-e2e")


def test_the_agent_offers_vm_with_its_accel_and_qemu_version(pool: Pool) -> None:
    (provider,) = pool.admin.list("Provider")
    inventory = provider["status"]["inventory"]
    assert inventory["runtimes"] == ["native", "vm"]
    info = {r["name"]: r for r in inventory["runtimeInfo"]}
    assert info["vm"]["accel"] == "tcg" and info["vm"]["version"]
    peer = run_gu("peer", pool.agent.node_id, env=pool.hub.env)
    assert peer.returncode == 0 and "tcg" in peer.stdout, peer.stdout


def test_exit_code_and_both_streams_reach_the_placement_and_gu_logs(pool: Pool) -> None:
    vm_session(pool, "exit7", "exit7")
    p = placement_in(pool, "exit7", "Failed")
    assert p["status"]["exitCode"] == 7
    logs = wait_for(
        lambda: (
            (r := run_gu("logs", "exit7", env=pool.hub.env)).returncode == 0
            and "oops" in r.stdout
            and r.stdout
        ),
        timeout=30,
        what="gu logs of exit7",
    )
    assert "hello-from-vm" in logs and "oops" in logs
    pool.admin.delete("Session", "exit7")
    wait_for(lambda: session_gone(pool, "exit7"), timeout=60, what="exit7 deleted")


def test_exit_0_succeeds(pool: Pool) -> None:
    vm_session(pool, "ok", "ok")
    p = placement_in(pool, "ok", "Succeeded")
    assert p["status"]["exitCode"] == 0
    pool.admin.delete("Session", "ok")
    wait_for(lambda: session_gone(pool, "ok"), timeout=60, what="ok deleted")


def test_a_byte_flipped_gvmi_is_refused_before_qemu_starts(pool: Pool) -> None:
    root = busybox_root(pool.tmp / "root-tampered", SCRIPT + "# tampered\n")
    gvmi = pool.tmp / "tampered.gvmi"
    built = run_gu(
        "image", "build", "--runtime", "vm", "--from-dir", str(root),
        "--entrypoint", "/bin/sh", "--entrypoint", "/run.sh", "-o", str(gvmi), env=pool.hub.env,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    image = built.stdout.strip()
    assert image != pool.image
    pushed = run_gu("image", "push", str(gvmi), env=pool.hub.env)
    assert pushed.returncode == 0, pushed.stderr
    policy = pool.admin.get("ImagePolicy", "vms")
    policy["spec"]["allowImages"] = [pool.image, image]
    pool.admin.apply([{k: policy[k] for k in ("apiVersion", "kind", "metadata", "spec")}])
    stored = pool.hub.state_dir / "images" / "sha3-256" / image.split(":", 1)[1]
    data = bytearray(stored.read_bytes())
    assert bytes(data) == gvmi.read_bytes()
    data[len(data) // 2] ^= 0x01  # same size: only a re-hash can tell
    stored.chmod(0o644)
    stored.write_bytes(bytes(data))

    before = qemu_pids()
    pool.admin.apply(
        [
            {
                "apiVersion": "gu/v1",
                "kind": "Session",
                "metadata": {"name": "tampered"},
                "spec": {
                    "app": "vms",
                    "workload": {
                        "runtime": "vm",
                        "image": {"hash": image},
                        "args": ["ok"],
                        "resources": {"cpu": 1, "memoryMiB": 192},
                    },
                },
            }
        ]
    )
    p = placement_in(pool, "tampered", "Failed", timeout=60)
    assert p["status"]["reason"] == "ImageHashMismatch", p["status"]
    assert not (qemu_pids() - before)  # no QEMU was started for it
    assert not (pool.tmp / "vm" / "runtimes" / "vm" / p["metadata"]["name"] / "qemu.pid").exists()
    assert "event=image_rejected" in pool.agent.log()
    pool.admin.delete("Session", "tampered")
    wait_for(lambda: session_gone(pool, "tampered"), timeout=60, what="tampered deleted")


def test_suspend_resume_adoption_and_deletion_of_one_vm(pool: Pool) -> None:
    before = qemu_pids()
    vm_session(pool, "counter", "count")
    p = placement_in(pool, "counter", "Running")
    name = p["metadata"]["name"]
    vm_dir = pool.tmp / "vm" / "runtimes" / "vm" / name
    pid = int((vm_dir / "qemu.pid").read_text())
    assert pid in qemu_pids() and pid not in before

    def count() -> int:
        words = (vm_dir / "stdout").read_bytes().split()
        return int(words[-1]) if words else 0

    wait_for(lambda: count() >= 3, timeout=30, what="the counter to count")
    vm_session(pool, "counter", "count", suspend=True)
    placement_in(pool, "counter", "Suspended")
    frozen = count()
    time.sleep(1.0)
    assert count() <= frozen + 1  # (one line may have been on its way)
    vm_session(pool, "counter", "count", suspend=False)
    placement_in(pool, "counter", "Running")
    wait_for(lambda: count() > frozen + 1, timeout=30, what="the counter to go on")
    assert int((vm_dir / "qemu.pid").read_text()) == pid

    pool.agent.stop(signal.SIGKILL)
    assert pid in qemu_pids()  # the VM outlives its agent
    pool.agent.start(
        "--heartbeat", "1", "--runtimes", "native,vm",
        "--vm-assets", str(pool.assets), "--vm-accel", "tcg",
    )  # fmt: skip
    time.sleep(3)  # a few passes of the restarted agent
    assert placement_in(pool, "counter", "Running")
    assert "adopted" in pool.agent.log()
    assert pid in qemu_pids()

    pool.admin.delete("Session", "counter")
    wait_for(lambda: session_gone(pool, "counter"), timeout=60, what="counter deleted")
    wait_for(lambda: pid not in qemu_pids(), timeout=30, what="QEMU gone")
    wait_for(lambda: not vm_dir.exists(), timeout=30, what="the VM's files gone")


def test_an_urgent_session_pauses_a_batch_vm_which_resumes_after(pool: Pool) -> None:
    """Priorities on VMs: the victim's QEMU is paused (QMP stop), then continued: same pid."""
    pool.admin.apply(
        [
            {"apiVersion": "gu/v1", "kind": "Priority", "metadata": {"name": n}, "spec": s}
            for n, s in (("v-batch", {"value": 0}), ("v-urgent", {"value": 1000}))
        ]
    )
    (provider,) = pool.admin.list("Provider")
    cores = provider["status"]["inventory"]["cpu"]["cores"]
    vm_session(pool, "v-low", "count", cpu=cores, priority="v-batch")
    p = placement_in(pool, "v-low", "Running")
    vm_dir = pool.tmp / "vm" / "runtimes" / "vm" / p["metadata"]["name"]
    pid = int((vm_dir / "qemu.pid").read_text())

    def count() -> int:
        words = (vm_dir / "stdout").read_bytes().split()
        return int(words[-1]) if words else 0

    wait_for(lambda: count() >= 3, timeout=30, what="the counter to count")
    vm_session(pool, "v-urgent", "ok", cpu=cores, priority="v-urgent")
    victim = placement_in(pool, "v-low", "Suspended")
    assert victim["status"]["reason"] == "Preempted"
    frozen = count()
    placement_in(pool, "v-urgent", "Succeeded")
    assert count() <= frozen + 1
    placement_in(pool, "v-low", "Running")
    wait_for(lambda: count() > frozen + 1, timeout=30, what="the counter to go on")
    assert int((vm_dir / "qemu.pid").read_text()) == pid and pid in qemu_pids()
    for name in ("v-low", "v-urgent"):
        pool.admin.delete("Session", name)
        wait_for(lambda n=name: session_gone(pool, n), timeout=60, what=f"{name} deleted")
    wait_for(lambda: pid not in qemu_pids(), timeout=30, what="QEMU gone")


def test_a_vm_reads_its_input_read_only_and_gu_outputs_fetches_its_outputs(
    pool: Pool, tmp_path: Path
) -> None:
    data = os.urandom(1 << 20)
    blob = pool.admin.call("POST", "/v1/blobs", content=data, params={"app": "vms"})["hash"]
    vm_session(pool, "vm-io", "io", data={
        "inputs": [{"hash": blob, "path": "in/data.bin"}],
        "outputs": {"path": "out", "maxMiB": 4},
    })  # fmt: skip
    done = placement_in(pool, "vm-io", "Succeeded")
    assert done["status"]["outputs"]["files"] == 3, done["status"]
    out = tmp_path / "fetched"
    got = run_gu("outputs", "vm-io", "-o", str(out), env=pool.hub.env, timeout=60)
    assert got.returncode == 0, got.stderr
    folder = out / done["metadata"]["name"]
    assert (folder / "result.txt").read_text().strip() == hashlib.sha256(data).hexdigest()
    assert (folder / "ro.txt").read_text().strip() == "read-only"
    assert (folder / "sub" / "note.txt").read_text() == "nested\n"

    # one VM more: writing past maxMiB stops it, Failed, nothing kept
    vm_session(pool, "vm-flood", "flood", data={"outputs": {"path": "out", "maxMiB": 2}})
    flood = placement_in(pool, "vm-flood", "Failed")
    assert flood["status"]["reason"] == "OutputLimitExceeded", flood["status"]
    assert not flood["status"].get("outputs")
    for name in ("vm-io", "vm-flood"):
        pool.admin.delete("Session", name)
        wait_for(lambda n=name: session_gone(pool, n), timeout=60, what=f"{name} deleted")
    wait_for(lambda: not list((pool.agent.state_dir / "data").glob("*")), timeout=20,
             what="the agent's data folders removed")  # fmt: skip


def test_two_vms_on_one_network_ping_each_other_over_the_providers_bus(pool: Pool) -> None:
    pool.admin.apply([{"apiVersion": "gu/v1", "kind": "VirtualNetwork",
                       "metadata": {"name": "lab"}, "spec": {"cidr": "10.77.0.0/24"}}])  # fmt: skip
    for name in ("vm-a", "vm-b"):
        vm_session(pool, name, "peer", cpu=0.5, network="lab")
    if os.geteuid() == 0:  # the bus in a namespace of its own, holding only a loopback
        netns = netns_name(pool.agent.node_id, "lab")

        def ours() -> list[int]:
            found = subprocess.run(["pgrep", "-f", "process=gu-vm-[ab]-"], capture_output=True,
                                   text=True).stdout.split()  # fmt: skip
            return [int(p) for p in found]

        wait_for(lambda: os.path.exists(f"/run/netns/{netns}") and len(ours()) == 2,
                 timeout=60, what="the network's namespace and its two VMs")  # fmt: skip
        links = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True,
                               text=True, check=True).stdout.splitlines()  # fmt: skip
        assert [ln.split(":")[1].strip() for ln in links] == ["lo"], links
        for pid in ours():
            where = subprocess.run(["ip", "netns", "identify", str(pid)],
                                   capture_output=True, text=True).stdout.strip()  # fmt: skip
            assert where == netns, (pid, where)
    # the network's key and members: to the agent hosting them (and the admin) only
    agent = Client(pool.hub.url, load_private_key(pool.agent.state_dir / "identity.key"))
    seen = wait_for(
        lambda: len((m := agent.call("GET", "/v1/vnet/lab/membership"))["members"]) == 2 and m,
        timeout=60, what="both members in the membership",
    )  # fmt: skip
    assert [k["id"] for k in seen["keys"]] == [1] and len(
        base64.b64decode(seen["keys"][0]["key"])
    ) == 32
    rotated = run_gu("vnet", "rotate-key", "lab", env=pool.hub.env)
    assert rotated.returncode == 0, rotated.stderr
    after = pool.admin.call("GET", "/v1/vnet/lab/membership")
    assert [k["id"] for k in after["keys"]] == [2, 1] and after["keys"][1] == seen["keys"][0]
    secrets = [k["key"] for k in after["keys"]]
    a = placement_in(pool, "vm-a", "Succeeded", timeout=180)
    b = placement_in(pool, "vm-b", "Succeeded", timeout=180)
    ips = sorted(p["spec"]["networkInterface"]["address"] for p in (a, b))
    assert ips == ["10.77.0.1/24", "10.77.0.2/24"]
    for name, other in (("vm-a", b), ("vm-b", a)):
        logs = run_gu("logs", name, env=pool.hub.env).stdout
        peer_ip = other["spec"]["networkInterface"]["address"].split("/")[0]
        assert f"reached {peer_ip}" in logs, logs
        links = [line.split(":")[1].strip() for line in logs.splitlines()
                 if line[:1].isdigit() and ": " in line and "<" in line]  # fmt: skip
        assert links == ["lo", "eth0"], logs  # the guest has its one NIC and nothing else
        assert "0 packets received" not in logs
    shown = [run_gu("get", "vnet", "lab", "-o", "json", env=pool.hub.env).stdout,
             json.dumps(pool.admin.events("VirtualNetwork", "lab")),
             json.dumps([pool.admin.get("Placement", p["metadata"]["name"]) for p in (a, b)]),
             pool.hub.logs(), pool.agent.log_path.read_text()]  # fmt: skip
    for key in secrets:  # the key is in no object, event or log
        assert not any(key in text for text in shown)
    for name in ("vm-a", "vm-b"):
        pool.admin.delete("Session", name)
        wait_for(lambda n=name: session_gone(pool, n), timeout=60, what=f"{name} deleted")
    # gone with its last VM (the agent removes a workload once its placement is gone)
    wait_for(lambda: not os.path.exists(f"/run/netns/{netns_name(pool.agent.node_id, 'lab')}"),
             timeout=15, what="the network's namespace removed")  # fmt: skip


# ------------------------------------------------- two providers on a LAN


@dataclass
class LanPool:
    """Two vm agents, each in a provider namespace of a LAN (``tests.netlan``):
    ``a`` at 192.0.2.11, ``b`` at 192.0.2.12, their bridges on every address they have."""

    lan: Lan
    a: AgentProcess
    b: AgentProcess
    ns_a: str


needs_lan = pytest.mark.skipif(lan_possible() is not None, reason=str(lan_possible()))


@pytest.fixture(scope="module")
def lan(pool: Pool) -> Iterator[LanPool]:
    net = Lan(pool.hub.port)
    agents: list[AgentProcess] = []
    try:
        for name, host in (("pa", 11), ("pb", 12)):
            ns = net.add(name, host)
            token = pool.admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
            agent = AgentProcess(pool.hub, pool.tmp / f"lan-{name}", pool.tmp / f"lan-{name}.log",
                                 netns=ns, hub_url=net.hub_url(ns))  # fmt: skip
            agent.start(
                "--join-token", token, "--name", f"lan-{name}", "--heartbeat", "1",
                "--vnet-bind", "0.0.0.0", "--vnet-port", "0", "--runtimes", "native,vm",
                "--vm-assets", str(pool.assets), "--vm-accel", "tcg",
            )  # fmt: skip
            agents.append(agent)
        for agent in agents:
            wait_for(lambda a=agent: (a.state_dir / "identity.key").exists(), timeout=30,
                     what=f"{agent.state_dir.name} enrolled (log {agent.log_path})")  # fmt: skip
        nodes = {a.node_id for a in agents}
        wait_for(lambda: nodes <= {p["nodeId"] for p in pool.admin.call("GET", "/peers")
                                   if p["ready"]}, timeout=30, what="both LAN agents Ready")  # fmt: skip
        for agent, host in zip(agents, (11, 12), strict=True):  # their bridges, on the LAN
            endpoints = pool.admin.get("Provider", agent.node_id)["status"]["endpoints"]
            assert [e.rsplit(":", 1)[0] for e in endpoints] == [f"192.0.2.{host}"], endpoints
        yield LanPool(net, agents[0], agents[1], net.namespaces[1])
    finally:
        for agent in agents:
            agent.stop()
        net.close()


def delete_sessions(pool: Pool, names: tuple[str, ...]) -> None:
    for name in names:
        with contextlib.suppress(Exception):
            pool.admin.delete("Session", name)
    for name in names:
        wait_for(lambda n=name: session_gone(pool, n), timeout=60, what=f"{name} deleted")


@needs_lan
def test_vms_on_two_providers_reach_each_other_through_the_bridge_across_a_key_rotation(
    pool: Pool, lan: LanPool
) -> None:
    """Three VMs on one provider and one on another, all pairs ping (bus and bridge); the
    key rotates while one pings; a VM on another network with the same CIDR reaches none."""
    names = ("far-a", "far-c", "far-d", "far-b", "iso")
    try:
        here, there = {"nodes": [lan.a.node_id]}, {"nodes": [lan.b.node_id]}
        pool.admin.apply([
            {"apiVersion": "gu/v1", "kind": "VirtualNetwork", "metadata": {"name": n},
             "spec": {"cidr": cidr}} for n, cidr in (("wide", "10.78.0.0/24"),
                                                     ("other", "10.79.0.0/24"))
        ])  # fmt: skip
        for name in ("far-a", "far-c", "far-d"):
            vm_session(pool, name, "mesh", cpu=0.3, network="wide", providers=here,
                       data={"args": ["mesh", "4"]})  # fmt: skip
        vm_session(pool, "far-b", "mesh", cpu=0.3, network="wide", providers=there,
                   data={"args": ["mesh", "4", "long", "5"]})  # fmt: skip
        vm_session(pool, "iso", "iso", cpu=0.3, network="other", providers=here,
                   data={"args": ["iso", "10.78.0.2", "10.78.0.250/24"]})  # fmt: skip
        wait_for(lambda: "mesh done" in run_gu("logs", "far-b", env=pool.hub.env).stdout,
                 timeout=240, what="far-b through its mesh pings")  # fmt: skip
        rotated = run_gu("vnet", "rotate-key", "wide", env=pool.hub.env)
        assert rotated.returncode == 0, rotated.stderr
        # while they run: members, and the bridges' paths to each other (live, heartbeats)
        described = wait_for(
            lambda: "direct" in (out := run_gu("describe", "vnet", "wide", env=pool.hub.env)
                                 .stdout) and out,
            timeout=20, what="gu describe vnet showing direct paths",
        )  # fmt: skip
        assert "Bridges" in described and "10.78.0.4" in described, described
        wide = run_gu("get", "vnet", "wide", "-o", "wide", env=pool.hub.env).stdout
        assert "10.78.0.4" in wide and "direct" in wide, wide
        for name in names:
            placement_in(pool, name, "Succeeded", timeout=240)
        for name in ("far-a", "far-c", "far-d", "far-b"):
            logs = run_gu("logs", name, env=pool.hub.env).stdout
            assert "mesh done 3" in logs, (name, logs)  # the other three, bus or bridge
        long = run_gu("logs", "far-b", env=pool.hub.env).stdout
        received = int(long.split(" packets received")[0].rsplit(", ", 1)[1])
        assert received >= 30, long  # at most a few seconds lost while the key rotated
        iso = run_gu("logs", "iso", env=pool.hub.env).stdout
        assert "isolated from 10.78.0.2" in iso, iso
    finally:
        delete_sessions(pool, names)


def bridge_report(pool: Pool, node: str, network: str) -> dict[str, Any]:
    """What ``node``'s bridge last reported of ``network`` (its heartbeat's usage)."""
    usage = pool.admin.call("GET", f"/peers/{node}").get("usage") or {}
    return (usage.get("networks") or {}).get(network) or {}


def path_between(pool: Pool, network: str) -> str:
    out = run_gu("describe", "vnet", network, env=pool.hub.env).stdout
    first = next((ln for ln in out.splitlines() if "paths:" in ln), "")
    return first.rsplit("paths:", 1)[-1]


@needs_lan
def test_pings_survive_a_new_lan_address_and_a_udp_block_through_the_relay(
    pool: Pool, lan: LanPool
) -> None:
    """Two VMs on two providers ping each other every 0.25 s. Provider A moves to another
    LAN address: B hears an authenticated datagram from it and sends there within 5 s,
    nothing restarted. Then UDP into and out of A is blocked: frames go on through the
    hub's relay; unblocked, the path is direct again."""
    names = ("roam-a", "roam-b")
    a, b = lan.a.node_id, lan.b.node_id
    try:
        pool.admin.apply([{"apiVersion": "gu/v1", "kind": "VirtualNetwork",
                           "metadata": {"name": "roam"}, "spec": {"cidr": "10.80.0.0/24"}}])  # fmt: skip
        for name, node in zip(names, (a, b), strict=True):
            vm_session(pool, name, "pingloop", cpu=0.4, network="roam",
                       providers={"nodes": [node]}, data={"args": ["pingloop", "280"]})  # fmt: skip
        for name in names:
            wait_for(lambda n=name: "pinging" in run_gu("logs", n, env=pool.hub.env).stdout,
                     timeout=240, what=f"{name} pinging")  # fmt: skip
        wait_for(lambda: "direct" in path_between(pool, "roam"), timeout=30, what="a direct path")
        vms = qemu_pids()

        # A's LAN address changes: B learns it from A's next datagram
        lan.lan.readdress(lan.ns_a, 21)
        moved = time.monotonic()
        wait_for(lambda: str((bridge_report(pool, b, "roam").get("peers") or {}).get(a, {})
                             .get("endpoint")).startswith("192.0.2.21:"),
                 timeout=5, what="B sending to A's new address")  # fmt: skip
        resumed = time.monotonic() - moved
        before = bridge_report(pool, a, "roam").get("framesIn", 0)
        wait_for(lambda: bridge_report(pool, a, "roam").get("framesIn", 0) > before + 4,
                 timeout=5, what="B's frames reaching A at its new address")  # fmt: skip
        endpoints = pool.admin.get("Provider", a)["status"]["endpoints"]
        wait_for(lambda: [e.rsplit(":", 1)[0] for e in pool.admin.get("Provider", a)["status"]
                          ["endpoints"]] == ["192.0.2.21"], timeout=10,
                 what=f"A's heartbeat reporting its new address (was {endpoints})")  # fmt: skip
        assert qemu_pids() >= vms  # nothing restarted

        # no direct UDP between A and B: through the hub, then direct again
        lan.lan.block_udp(lan.ns_a, True)
        try:
            wait_for(lambda: "relayed" in path_between(pool, "roam"), timeout=30,
                     what="the path relayed")  # fmt: skip
            before = bridge_report(pool, a, "roam").get("framesIn", 0)
            wait_for(lambda: bridge_report(pool, a, "roam").get("framesIn", 0) > before + 4,
                     timeout=10, what="frames reaching A through the relay")  # fmt: skip
        finally:
            lan.lan.block_udp(lan.ns_a, False)
        wait_for(lambda: "direct" in path_between(pool, "roam"), timeout=30,
                 what="the path direct again")  # fmt: skip
        for name in names:
            placement_in(pool, name, "Succeeded", timeout=240)
        for name in names:
            logs = run_gu("logs", name, env=pool.hub.env).stdout
            received = int(logs.split(" packets received")[0].rsplit(", ", 1)[1])
            assert received >= 200, logs  # of 280: a few seconds lost while the path moved
        print(f"B sent to A's new address {resumed:.1f} s after it moved")
    finally:
        delete_sessions(pool, names)


@needs_lan
@pytest.mark.parametrize("far", [False, True], ids=["same-provider", "two-providers"])
def test_ten_mib_over_tcp_between_vms_arrive_intact(pool: Pool, lan: LanPool, far: bool) -> None:
    names = ("tcp-recv", "tcp-send")
    try:
        pool.admin.apply([{"apiVersion": "gu/v1", "kind": "VirtualNetwork",
                           "metadata": {"name": "tcp"}, "spec": {"cidr": "10.81.0.0/24"}}])  # fmt: skip
        vm_session(pool, "tcp-recv", "tcprecv", cpu=0.5, network="tcp",
                   providers={"nodes": [lan.a.node_id]})  # fmt: skip
        vm_session(pool, "tcp-send", "tcpsend", cpu=0.5, network="tcp",
                   providers={"nodes": [lan.b.node_id if far else lan.a.node_id]})  # fmt: skip
        placement_in(pool, "tcp-recv", "Succeeded", timeout=240)
        sent = run_gu("logs", "tcp-send", env=pool.hub.env).stdout
        got = run_gu("logs", "tcp-recv", env=pool.hub.env).stdout
        digest = sent.split("sent ", 1)[1].split()[0]
        assert f"received {digest} 10485760" in got, (sent, got)
    finally:
        delete_sessions(pool, names)
