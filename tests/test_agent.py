"""The provider agent: enrolment and heartbeats against a real hub with real agent
processes, and the local reconcile in-process with the real native runtime.

Two halves:

- ``gu agent`` processes (``python -m agent.main``) against the ``hub`` fixture:
  enrolment with a join token, log-in by key on later starts, refusals with
  messages that say what to do, file modes, heartbeats, prompt SIGTERM.
- ``WorkloadReconciler`` in this process, with the real ``NativeRuntime`` and
  ``ImageCache`` and a recording stand-in for the hub (``FakeHub``): the hub
  cannot be given Placements without a Session and its scheduler, and these
  behaviours (hash mismatch, restart backoff, suspend, adoption, write
  economy) are about the agent's side only. The end-to-end suite
  (``test_agent_e2e.py``) runs the same code against a real hub.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.identity import KEY_FILE, RECORD_FILE
from agent.images import ImageCache
from agent.workloads import WorkloadReconciler
from controller.client import ApiError, Client
from runtimes.base import WorkloadNotFound
from runtimes.native import NativeRuntime
from specs.identity import generate_key, load_private_key, node_id, public_key_str
from specs.signing import sign_admission, sign_image
from tests.conftest import HubProcess
from tests.helpers import ROOT, process_running, wait_for

AGENT = [sys.executable, "-m", "agent.main"]


# ---------------------------------------------------------------- processes


class AgentProcess:
    """One ``gu agent`` subprocess with its own state dir and log file."""

    def __init__(
        self, hub: HubProcess, state_dir: Path, log_path: Path, netns: str | None = None,
        hub_url: str | None = None,
    ) -> None:  # fmt: skip
        self.hub = hub
        self.state_dir = state_dir
        self.log_path = log_path
        self.netns = netns  # started inside this network namespace (``tests.netlan``)
        self.hub_url = hub_url or hub.url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> AgentProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(["ip", "netns", "exec", self.netns] if self.netns else []),
                    *AGENT,
                    "--hub",
                    self.hub_url,
                    "--state-dir",
                    str(self.state_dir),
                    *([] if "--vnet-bind" in args else ["--vnet-bind", "127.0.0.1"]),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.hub.env,
            )
        return self

    @property
    def node_id(self) -> str:
        return node_id(public_key_str(load_private_key(self.state_dir / KEY_FILE)))

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def agents(hub: HubProcess, tmp_path: Path) -> Iterator[Any]:
    """``agents(name)`` → an AgentProcess (not started); every one is stopped afterwards."""
    made: list[AgentProcess] = []

    def make(name: str = "a1") -> AgentProcess:
        a = AgentProcess(hub, tmp_path / f"agent-{name}", tmp_path / f"agent-{name}.log")
        made.append(a)
        return a

    try:
        yield make
    finally:
        for a in made:
            a.stop(signal.SIGKILL)


@pytest.fixture
def admin(hub: HubProcess) -> Iterator[Client]:
    with hub.client() as client:
        yield client


def join_token(admin: Client) -> str:
    return str(admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"])


def provider(admin: Client, nid: str) -> dict[str, Any] | None:
    try:
        return admin.get("Provider", nid)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


# ----------------------------------------------------------- enrolment


def test_first_start_with_a_join_token_enrols_a_provider_named_by_its_node_id(
    agents: Any, admin: Client
) -> None:
    a = agents().start("--join-token", join_token(admin), "--name", "box-1", "--label", "zone=lab")
    nid = wait_for(lambda: a.node_id, timeout=20, what="the identity key")
    prov = wait_for(lambda: provider(admin, nid), timeout=20, what=f"Provider {nid}")
    assert prov["metadata"]["name"] == nid
    assert prov["spec"]["nodeId"] == nid
    assert prov["spec"]["displayName"] == "box-1"
    assert prov["spec"]["labels"] == {"zone": "lab"}
    assert prov["spec"]["publicKey"] == public_key_str(load_private_key(a.state_dir / KEY_FILE))


def test_a_later_start_needs_no_token_and_logs_in_with_its_key(agents: Any, admin: Client) -> None:
    a = agents().start("--join-token", join_token(admin), "--heartbeat", "0.5")
    nid = wait_for(lambda: a.node_id, timeout=20, what="the identity key")
    wait_for(
        lambda: (provider(admin, nid) or {}).get("status", {}).get("lastHeartbeat"),
        timeout=20,
        what="a first heartbeat",
    )
    a.stop()
    first = provider(admin, nid)
    assert first is not None

    a.start("--heartbeat", "0.5")  # no token this time
    later = wait_for(
        lambda: (
            (p := provider(admin, nid))
            and p["status"]["lastHeartbeat"] != first["status"]["lastHeartbeat"]
            and p
        ),
        timeout=20,
        what="a heartbeat from the restarted agent",
    )
    assert later["metadata"]["uid"] == first["metadata"]["uid"]  # the same Provider
    assert "event=enrolled" not in a.log().split("event=agent_stopped")[-1]
    assert "event=identity_ready" in a.log()


def test_sigterm_stops_the_agent_within_seconds(agents: Any, admin: Client) -> None:
    a = agents().start("--join-token", join_token(admin))
    wait_for(lambda: "event=heartbeat_ok" in a.log(), timeout=20, what="a first heartbeat")
    started = time.monotonic()
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
    assert a.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert "event=agent_stopped" in a.log()


def test_the_hub_stops_promptly_while_agents_hold_watch_streams(
    hub: HubProcess, agents: Any, admin: Client
) -> None:
    a = agents().start("--join-token", join_token(admin))
    wait_for(lambda: "event=heartbeat_ok" in a.log(), timeout=20, what="a first heartbeat")
    wait_for(lambda: "event=placements_listed" in a.log(), timeout=20, what="the agent's list")
    time.sleep(0.5)  # the watch stream opens right after the list
    started = time.monotonic()
    assert hub.stop() == 0
    # uvicorn would wait its 10 s graceful timeout for open streams; the hub ends them
    assert time.monotonic() - started < 5
    assert "event=hub_stopped" in hub.logs()


def test_a_bad_join_token_is_refused_with_a_clear_message(agents: Any, admin: Client) -> None:
    a = agents().start("--join-token", "gujt1_not-a-real-token")
    assert a.wait(timeout=30) == 3
    out = a.log()
    assert "refused to enrol" in out
    assert "join token unknown, expired, revoked or used up" in out
    assert "gu hub token create" in out
    assert "gujt1_not-a-real-token" not in out  # the token is never echoed
    assert admin.list("Provider") == []


def test_no_token_and_not_enrolled_says_how_to_get_one(agents: Any, admin: Client) -> None:
    a = agents().start()
    assert a.wait(timeout=30) == 2
    out = a.log()
    assert "not enrolled" in out
    assert "gu hub token create" in out
    assert "--join-token" in out


def test_identity_key_is_0600_in_a_0700_state_dir_and_the_record_names_the_node(
    agents: Any, admin: Client
) -> None:
    a = agents().start("--join-token", join_token(admin), "--name", "box-2")
    wait_for(lambda: (a.state_dir / RECORD_FILE).exists(), timeout=20, what="agent.json")
    assert stat.S_IMODE(os.stat(a.state_dir / KEY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(a.state_dir).st_mode) == 0o700
    record = (a.state_dir / RECORD_FILE).read_text()
    assert a.node_id in record and "box-2" in record and a.hub.url in record
    assert "PRIVATE" not in record


def test_changed_labels_are_applied_only_with_a_join_token(agents: Any, admin: Client) -> None:
    a = agents().start("--join-token", join_token(admin), "--label", "zone=a")
    nid = wait_for(lambda: a.node_id, timeout=20, what="the identity key")
    wait_for(lambda: provider(admin, nid), timeout=20, what="the Provider")
    a.stop()

    a.start("--label", "zone=b")
    wait_for(lambda: "event=enrolment_unchanged" in a.log(), timeout=20, what="the warning")
    assert provider(admin, nid)["spec"]["labels"] == {"zone": "a"}  # type: ignore[index]
    a.stop()

    a.start("--label", "zone=b", "--join-token", join_token(admin))
    wait_for(
        lambda: provider(admin, nid)["spec"]["labels"] == {"zone": "b"},  # type: ignore[index]
        timeout=20,
        what="the re-enrolment with the new label",
    )


def test_heartbeats_fill_inventory_usage_and_last_heartbeat(agents: Any, admin: Client) -> None:
    # no engine at this address, whatever this machine runs: the agent offers native only
    no_docker = ("--docker-host", "unix:///nonexistent/docker.sock")
    a = agents().start("--join-token", join_token(admin), "--heartbeat", "0.5", *no_docker)
    nid = wait_for(lambda: a.node_id, timeout=20, what="the identity key")
    prov = wait_for(
        lambda: (p := provider(admin, nid)) and p["status"].get("inventory") and p,
        timeout=20,
        what="an inventory on the Provider",
    )
    inv = prov["status"]["inventory"]
    assert inv["cpu"]["threads"] == psutil.cpu_count(logical=True)
    assert inv["cpu"]["cores"] == (psutil.cpu_count(logical=False) or inv["cpu"]["threads"])
    assert inv["memoryBytes"] == psutil.virtual_memory().total
    assert inv["runtimes"] == ["native"]
    assert prov["status"]["usage"]["workloads"] == 0
    assert prov["status"]["heartbeatSeconds"] == 0.5  # the hub measures silence by it
    first = datetime.fromisoformat(prov["status"]["lastHeartbeat"])
    wait_for(
        lambda: datetime.fromisoformat(provider(admin, nid)["status"]["lastHeartbeat"]) > first,  # type: ignore[index]
        timeout=10,
        what="lastHeartbeat to move",
    )


def test_the_agent_outlives_a_hub_restart_and_heartbeats_again(
    hub: HubProcess, agents: Any, admin: Client
) -> None:
    a = agents().start("--join-token", join_token(admin), "--heartbeat", "0.5")
    nid = wait_for(lambda: a.node_id, timeout=20, what="the identity key")
    wait_for(lambda: "event=heartbeat_ok" in a.log(), timeout=20, what="a first heartbeat")
    hub.stop()
    wait_for(lambda: "event=heartbeat_failed" in a.log(), timeout=10, what="a failed heartbeat")
    time.sleep(1.0)
    assert a.proc is not None and a.proc.poll() is None  # still running, retrying
    hub.start()
    before = a.log().count("event=heartbeat_ok")
    wait_for(
        lambda: a.log().count("event=heartbeat_ok") > before,
        timeout=20,
        what="heartbeats to resume",
    )
    with hub.client() as fresh:
        assert (provider(fresh, nid) or {}).get("status", {}).get("lastHeartbeat")
    assert "Traceback" not in a.log()


# ------------------------------------------------- local reconcile (in-process)

NODE = "0x" + "11" * 20
LOOP = '#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo "tick $i $GU_PLACEMENT"; sleep 0.05; done\n'


def tar_image(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha3(data: bytes) -> str:
    return "sha3-256:" + hashlib.sha3_256(data).hexdigest()


class FakeHub:
    """Stands in for the hub at the ``HubPort`` seam: keeps placements, counts writes.

    Like the hub, it signs an admission (allowed by hash) into every placement
    it adds, unless the test passes its own ``admission``.
    """

    def __init__(self) -> None:
        self.key = generate_key()
        self.placements: dict[str, dict[str, Any]] = {}
        self.images: dict[str, bytes] = {}
        self.logs: dict[str, bytes] = {}
        self.log_runs: dict[str, list[int]] = {}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.pulls = 0
        self.rv = 100

    def admit(self, name: str, image: str, **fields: Any) -> dict[str, Any]:
        """A hub-signed admission of ``image`` for placement ``name`` on NODE."""
        adm = {
            "placement": name,
            "node": NODE,
            "app": "a",
            "imageHash": image,
            "allowedBy": "hash",
            "policy": "p",
            "signerKeys": [],
            "signatures": [],
            **fields,
        }
        return sign_admission(self.key, adm)

    def add(self, name: str, workload: dict[str, Any], **spec: Any) -> dict[str, Any]:
        if "admission" not in spec:
            spec["admission"] = self.admit(name, workload["image"]["hash"])
        elif spec["admission"] is None:
            del spec["admission"]
        self.rv += 1
        obj = {
            "kind": "Placement",
            "metadata": {"name": name, "generation": 1, "resourceVersion": self.rv},
            "spec": {"session": "s", "app": "a", "node": NODE, "workload": workload, **spec},
            "status": {"state": "Pending"},
        }
        self.placements[name] = obj
        return copy.deepcopy(obj)

    def change(self, name: str, **spec: Any) -> dict[str, Any]:
        self.rv += 1
        obj = self.placements[name]
        obj["spec"].update(spec)
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = self.rv
        return copy.deepcopy(obj)

    def put_status(self, name: str, status: dict[str, Any], rv: int | None) -> dict[str, Any]:
        obj = self.placements.get(name)
        if obj is None:
            raise ApiError(404, f"Placement/{name} not found")
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "conflict")
        self.rv += 1
        obj["status"] = copy.deepcopy(status)
        obj["metadata"]["resourceVersion"] = self.rv
        self.writes.append((name, copy.deepcopy(status)))
        return copy.deepcopy(obj)

    def put_logs(self, name: str, data: bytes, run: int) -> None:
        self.logs[name] = data
        self.log_runs.setdefault(name, []).append(run)

    def get_placement(self, name: str) -> dict[str, Any] | None:
        obj = self.placements.get(name)
        return copy.deepcopy(obj) if obj else None

    def fetch_image(self, image_hash: str) -> Iterator[bytes]:
        self.pulls += 1
        yield self.images[image_hash]

    def state(self, name: str) -> dict[str, Any]:
        return dict(self.placements[name]["status"])


def agent_process(fake: FakeHub, tmp_path: Path) -> tuple[WorkloadReconciler, NativeRuntime]:
    """What one agent process holds: a reconciler over a real native runtime and image cache
    in ``tmp_path`` (a second call is a restarted agent over the same state)."""
    runtime = NativeRuntime(tmp_path / "runtimes" / "native")
    rec = WorkloadReconciler(
        NODE,
        {"native": runtime},
        ImageCache(tmp_path / "images"),
        fake,
        hub_public_key=public_key_str(fake.key),
        stop_grace=2.0,
    )
    return rec, runtime


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[WorkloadReconciler, FakeHub, NativeRuntime]]:
    """A reconciler over a real native runtime and image cache; workloads removed after."""
    fake = FakeHub()
    rec, runtime = agent_process(fake, tmp_path)
    try:
        yield rec, fake, runtime
    finally:
        for name in rec.workload_names():
            runtime.remove(name)
        for wd in (tmp_path / "runtimes" / "native").iterdir():
            if wd.is_dir():
                runtime.remove(wd.name)


def workload(image: str, script: str = "./run.sh", *args: str) -> dict[str, Any]:
    return {"runtime": "native", "image": {"hash": image}, "command": [script], "args": list(args)}


def converge(rec: WorkloadReconciler, fake: FakeHub, name: str, until: Any, timeout: float = 15):
    """Reconcile ``name`` (as the resync ticker would) until ``until(status)`` holds."""

    def step() -> Any:
        rec.reconcile(name)
        status = fake.state(name)
        return status if until(status) else None

    return wait_for(step, timeout=timeout, interval=0.1, what=f"{name}: {until.__doc__ or ''}")


def test_running_placement_is_pulled_verified_started_and_reported(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    rec.replace_all([fake.add("p-run", workload(sha3(data)))])
    status = converge(rec, fake, "p-run", lambda s: s["state"] == "Running")
    states = [w["state"] for n, w in fake.writes if n == "p-run"]
    assert states[:3] == ["Pulling", "Starting", "Running"]
    assert status["observedGeneration"] == 1 and status["startedAt"]
    pid = runtime.inspect("p-run").pid
    assert pid and psutil.pid_exists(pid)
    wait_for(
        lambda: rec.reconcile("p-run") or b"tick" in fake.logs.get("p-run", b""),
        timeout=10,
        what="the log tail on the hub",
    )
    assert b"p-run" in fake.logs["p-run"]  # GU_PLACEMENT is set for the workload


def test_a_converged_pass_writes_nothing(local: Any) -> None:
    rec, fake, _ = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    rec.replace_all([fake.add("p-quiet", workload(sha3(data)))])
    converge(rec, fake, "p-quiet", lambda s: s["state"] == "Running")
    writes = len(fake.writes)
    for _ in range(5):
        rec.reconcile("p-quiet")
    assert len(fake.writes) == writes


def test_an_image_whose_bytes_do_not_match_its_hash_runs_nothing(local: Any) -> None:
    rec, fake, runtime = local
    good = tar_image({"run.sh": LOOP})
    evil = tar_image({"run.sh": "#!/bin/sh\necho pwned\n"})
    fake.images[sha3(good)] = evil  # the hub (or the wire) hands out other bytes
    rec.replace_all([fake.add("p-evil", workload(sha3(good)))])
    status = converge(rec, fake, "p-evil", lambda s: s["state"] == "Failed")
    assert status["reason"] == "ImageHashMismatch"
    assert sha3(good) in status["message"] and sha3(evil) in status["message"]
    assert rec.workload_names() == []
    assert runtime.adopt() == []  # nothing was ever started


def test_a_cached_image_changed_on_disk_is_caught_right_before_start(
    local: Any, tmp_path: Path
) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    image = sha3(data)
    fake.images[image] = data
    rec.cache.ensure(image, fake.fetch_image)
    cached = rec.cache.path(image)
    os.chmod(cached, 0o644)
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size: only a re-hash sees it
    rec.replace_all([fake.add("p-rot", workload(image))])
    status = converge(rec, fake, "p-rot", lambda s: s["state"] == "Failed")
    assert status["reason"] == "ImageHashMismatch"
    assert runtime.adopt() == []


def test_an_unknown_runtime_is_runtime_unavailable(local: Any) -> None:
    rec, fake, _ = local
    wl = {"runtime": "vm", "image": {"hash": "sha3-256:" + "0" * 64}, "command": ["x"]}
    rec.replace_all([fake.add("p-vm", wl)])
    status = converge(rec, fake, "p-vm", lambda s: s["state"] == "Failed")
    assert status["reason"] == "RuntimeUnavailable"
    assert "'vm'" in status["message"] and "native" in status["message"]


def refused(rec: WorkloadReconciler, fake: FakeHub, runtime: NativeRuntime, name: str) -> Any:
    """Converge ``name`` to Failed and check that nothing of it was started."""
    status = converge(rec, fake, name, lambda s: s["state"] == "Failed")
    assert rec.workload_names() == []
    assert runtime.adopt() == []
    return status


def test_a_placement_without_an_admission_is_refused_before_anything_is_pulled(
    local: Any,
) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    rec.replace_all([fake.add("p-noadm", workload(sha3(data)), admission=None)])
    status = refused(rec, fake, runtime, "p-noadm")
    assert status["reason"] == "AdmissionRejected"
    assert "no hub-signed admission" in status["message"]
    assert fake.pulls == 0


def test_an_admission_signed_by_another_key_is_refused(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    other = FakeHub()  # a hub this agent never enrolled with
    adm = other.admit("p-forged", sha3(data))
    rec.replace_all([fake.add("p-forged", workload(sha3(data)), admission=adm)])
    status = refused(rec, fake, runtime, "p-forged")
    assert status["reason"] == "AdmissionRejected"
    assert "not signed by the hub" in status["message"]
    assert fake.pulls == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("placement", "p-other"),
        ("node", "0x" + "ab" * 20),
        ("app", "b"),
        ("imageHash", "sha3-256:" + "0" * 64),
    ],
)
def test_an_admission_for_something_else_is_refused(local: Any, field: str, value: str) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    adm = fake.admit("p-else", sha3(data), **{field: value})  # validly signed, wrong subject
    rec.replace_all([fake.add("p-else", workload(sha3(data)), admission=adm)])
    status = refused(rec, fake, runtime, "p-else")
    assert status["reason"] == "AdmissionRejected"
    assert f"{field}={value!r}" in status["message"]


def test_an_admission_edited_after_signing_is_refused(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    adm = fake.admit("p-edit", sha3(data))
    adm["policy"] = "another-policy"
    rec.replace_all([fake.add("p-edit", workload(sha3(data)), admission=adm)])
    assert refused(rec, fake, runtime, "p-edit")["reason"] == "AdmissionRejected"


def by_signature(fake: FakeHub, name: str, data: bytes, sig: dict[str, Any], key: str) -> Any:
    """An admission of ``data`` allowed by ``sig`` under the trusted ``key``."""
    return fake.admit(name, sha3(data), allowedBy="signature", signerKeys=[key], signatures=[sig])


def test_an_image_admitted_by_a_valid_signature_runs(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    signer = generate_key()
    sig = sign_image(signer, sha3(data), len(data))
    adm = by_signature(fake, "p-signed", data, sig, public_key_str(signer))
    rec.replace_all([fake.add("p-signed", workload(sha3(data)), admission=adm)])
    converge(rec, fake, "p-signed", lambda s: s["state"] == "Running")
    assert runtime.inspect("p-signed").state == "Running"


def flip_signature(sig: dict[str, Any]) -> dict[str, Any]:
    raw = bytearray(sig["signature"].encode())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit of the base64 text
    return {**sig, "signature": raw.decode()}


def test_a_flipped_signature_or_an_untrusted_signer_is_signature_invalid(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    signer, stranger = generate_key(), generate_key()
    good = sign_image(signer, sha3(data), len(data))
    cases = {
        "p-flip": by_signature(fake, "p-flip", data, flip_signature(good), public_key_str(signer)),
        "p-stranger": by_signature(
            fake,
            "p-stranger",
            data,
            sign_image(stranger, sha3(data), len(data)),
            public_key_str(signer),
        ),
        "p-size": by_signature(  # signed for other bytes of the same hash claim
            fake,
            "p-size",
            data,
            sign_image(signer, sha3(data), len(data) + 1),
            public_key_str(signer),
        ),
    }
    rec.replace_all([fake.add(n, workload(sha3(data)), admission=a) for n, a in cases.items()])
    for name in cases:
        status = refused(rec, fake, runtime, name)
        assert status["reason"] == "SignatureInvalid", (name, status)
        assert "nothing was run" in status["message"]


def test_exit_zero_succeeds_and_a_failure_stays_failed_with_restart_policy_never(
    local: Any,
) -> None:
    rec, fake, _ = local
    ok = tar_image({"run.sh": "#!/bin/sh\necho done\n"})
    bad = tar_image({"run.sh": "#!/bin/sh\necho oops >&2\nexit 3\n"})
    fake.images.update({sha3(ok): ok, sha3(bad): bad})
    rec.replace_all([fake.add("p-ok", workload(sha3(ok))), fake.add("p-bad", workload(sha3(bad)))])
    s_ok = converge(rec, fake, "p-ok", lambda s: s["state"] == "Succeeded")
    s_bad = converge(rec, fake, "p-bad", lambda s: s["state"] == "Failed")
    assert s_ok["exitCode"] == 0 and s_ok["finishedAt"]
    assert s_bad["exitCode"] == 3 and s_bad["restarts"] == 0
    assert fake.logs["p-ok"] == b"done\n"  # uploaded before the final status
    assert b"oops" in fake.logs["p-bad"]
    time.sleep(1.5)
    rec.reconcile("p-bad")
    assert fake.state("p-bad")["state"] == "Failed" and fake.state("p-bad")["restarts"] == 0


def test_on_failure_restarts_in_place_with_a_doubling_backoff(local: Any) -> None:
    rec, fake, _ = local
    crash = tar_image({"run.sh": "#!/bin/sh\necho run\nexit 1\n"})
    fake.images[sha3(crash)] = crash
    rec.replace_all([fake.add("p-crash", workload(sha3(crash)), restartPolicy="OnFailure")])
    converge(rec, fake, "p-crash", lambda s: s["restarts"] >= 2, timeout=20)
    backoffs = [w for n, w in fake.writes if w["reason"] == "BackOff"]
    assert backoffs and all(w["state"] == "Starting" for w in backoffs)
    assert "restart 1 in 1s" in backoffs[0]["message"]
    assert any("in 2s" in w["message"] for w in backoffs)  # 1 s, then 2 s
    assert fake.pulls == 1  # restarts reuse the cached (and re-verified) image
    runs = fake.log_runs["p-crash"]
    assert runs == sorted(runs) and runs[0] == 0 and runs[-1] >= 1  # each run's output named


def test_suspend_resume_and_stop_follow_desired_state(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    rec.replace_all([fake.add("p-sus", workload(sha3(data)))])
    converge(rec, fake, "p-sus", lambda s: s["state"] == "Running")
    pid = runtime.inspect("p-sus").pid

    rec.apply_event("MODIFIED", fake.change("p-sus", desiredState="Suspended"))
    converge(rec, fake, "p-sus", lambda s: s["state"] == "Suspended")
    rec.apply_event("MODIFIED", fake.change("p-sus", desiredState="Running"))
    status = converge(rec, fake, "p-sus", lambda s: s["state"] == "Running")
    assert runtime.inspect("p-sus").pid == pid  # resumed, not restarted
    assert status["observedGeneration"] == 3

    rec.apply_event("MODIFIED", fake.change("p-sus", desiredState="Stopped"))
    status = converge(rec, fake, "p-sus", lambda s: s["state"] == "Stopped")
    assert not process_running(pid)


def test_a_placement_gone_from_the_hub_is_removed(local: Any) -> None:
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    rec.replace_all([fake.add("p-gone", workload(sha3(data)))])
    converge(rec, fake, "p-gone", lambda s: s["state"] == "Running")
    pid = runtime.inspect("p-gone").pid
    gone = fake.placements.pop("p-gone")
    gone["metadata"]["resourceVersion"] = fake.rv + 1
    rec.apply_event("DELETED", gone)
    rec.reconcile("p-gone")
    assert rec.workload_names() == []
    assert runtime.adopt() == []
    wait_for(lambda: not psutil.pid_exists(pid), timeout=5, what="the shim to be gone")


def running_placements(local: Any, *names: str) -> tuple[bytes, dict[str, int]]:
    """Placements ``names`` of one looping image, Running; (the image, their PIDs)."""
    rec, fake, runtime = local
    data = tar_image({"run.sh": LOOP})
    fake.images[sha3(data)] = data
    rec.replace_all([fake.add(n, workload(sha3(data))) for n in names])
    for name in names:
        converge(rec, fake, name, lambda s: s["state"] == "Running")
    return data, {n: runtime.inspect(n).pid for n in names}


def test_an_adopted_workload_whose_admission_no_longer_holds_is_stopped(
    local: Any, tmp_path: Path
) -> None:
    """A new agent process checks an adopted workload's admission as at a start."""
    data, pids = running_placements(local, "p-ok", "p-forged")
    fake = local[1]
    # while the agent was away, p-forged's admission was replaced by one another key signed
    forged = sign_admission(generate_key(), fake.admit("p-forged", sha3(data)))
    fake.change("p-forged", admission=forged)

    rec2, runtime2 = agent_process(fake, tmp_path)
    assert sorted(rec2.adopt()) == ["p-forged", "p-ok"]
    rec2.replace_all(list(fake.placements.values()))
    for name in ("p-ok", "p-forged"):
        rec2.reconcile(name)
    assert runtime2.inspect("p-ok").pid == pids["p-ok"]  # still admitted: kept, same PID
    assert fake.state("p-ok")["state"] == "Running"
    status = fake.state("p-forged")
    assert (status["state"], status["reason"]) == ("Failed", "AdmissionRejected"), status
    assert "not signed by the hub" in status["message"]
    assert rec2.workload_names() == ["p-ok"]
    with pytest.raises(WorkloadNotFound):
        runtime2.inspect("p-forged")
    wait_for(lambda: not process_running(pids["p-forged"]), timeout=5, what="p-forged gone")
    rec2.reconcile("p-forged")  # Failed is final: nothing starts it again
    assert fake.state("p-forged")["state"] == "Failed" and fake.pulls == 1


def test_adoption_keeps_wanted_workloads_running_and_removes_the_others(
    local: Any, tmp_path: Path
) -> None:
    _, pids = running_placements(local, "p-keep", "p-drop")
    fake = local[1]
    del fake.placements["p-drop"]  # deleted while the agent was away

    # A new agent process: new runtime, cache and reconciler over the same state.
    rec2, runtime2 = agent_process(fake, tmp_path)
    assert sorted(rec2.adopt()) == ["p-drop", "p-keep"]
    rec2.reconcile("p-drop")  # before the first list: nothing is removed
    assert runtime2.inspect("p-drop").state == "Running"
    writes = len(fake.writes)
    rec2.replace_all(list(fake.placements.values()))
    for name in ("p-keep", "p-drop"):
        rec2.reconcile(name)
    assert runtime2.inspect("p-keep").pid == pids["p-keep"]
    assert fake.state("p-keep")["state"] == "Running"
    assert len([w for n, w in fake.writes[writes:] if n == "p-keep"]) == 0  # nothing new to say
    assert rec2.workload_names() == ["p-keep"]
    wait_for(lambda: not psutil.pid_exists(pids["p-drop"]), timeout=5, what="p-drop gone")
    assert fake.pulls == 1


def test_an_agent_beats_as_seldom_as_a_busy_hub_asks(tmp_path: Path) -> None:
    """A hub told to keep its pool under 0.1 beats a second asks the one agent (1 s
    period) for 10 s: the agent says so in its log, its Provider records 10 s, and it
    beats no more than that."""
    from tests.conftest import make_hub

    hub = make_hub(tmp_path, "--max-heartbeats-per-second", "0.1")
    hub.start()
    agent = AgentProcess(hub, tmp_path / "agent", tmp_path / "agent.log")
    try:
        admin = hub.client()
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        agent.start("--join-token", token, "--name", "slow", "--heartbeat", "1")
        wait_for(lambda: "heartbeat_period" in agent.log(), timeout=30, what="the new period")
        assert "seconds=10 asked_by=hub" in agent.log()
        node = agent.node_id

        def period() -> float | None:
            status = admin.call("GET", f"/v1/providers/{node}")["status"]
            value = status.get("heartbeatSeconds")
            return float(value) if value is not None else None

        wait_for(lambda: period() == 10.0, timeout=10, what="heartbeatSeconds 10")
        seen = admin.call("GET", f"/peers/{node}")["lastSeen"]
        time.sleep(4)  # at 1 s it would have beaten 4 times
        assert admin.call("GET", f"/peers/{node}")["lastSeen"] == seen
        assert admin.call("GET", f"/peers/{node}")["ready"] is True
    finally:
        agent.stop()
        hub.stop()
