"""Session inputs and outputs end to end on the native runtime: a real hub, three real
agents, blobs pushed with the real ``gu blob push`` by the app itself, outputs fetched
with ``gu outputs``. (The docker variant is in ``tests/test_docker_e2e.py``.)"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.client import ApiError, Client
from specs.identity import generate_key, save_private_key
from tests.conftest import HubProcess, make_hub
from tests.helpers import run_gu, wait_for
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import push_script_image, tear_down
from tests.test_security_matrix import app_object

MARK = f"gu-io-{uuid.uuid4().hex[:8]}"
# $1: what to do: "checksum" (of in/data.bin, into out/result.txt), "flood" (write past the
# limit), "late" (sleep, then write); the marker keeps these processes findable
SCRIPT = f"""#!/bin/sh
# {MARK}
case "$1" in
  checksum)
    sha256sum in/data.bin | cut -d' ' -f1 > out/result.txt
    echo "$GU_PLACEMENT" >> out/result.txt
    mkdir -p out/deeper && echo nested > out/deeper/note.txt ;;
  flood)
    i=0
    while true; do
      head -c 1048576 /dev/zero > out/chunk-$i; i=$((i + 1)); sleep 0.1
    done ;;
  late)
    sleep "$2"
    echo "late result" > out/result.txt ;;
esac
"""


@dataclass
class Pool:
    hub: HubProcess
    admin: Client
    app: Client
    app_env: dict[str, str]
    agents: list[AgentProcess]
    image: str
    tmp: Path

    def session(self, name: str, args: list[str], inputs: list[dict[str, Any]],
                max_mib: int = 10, count: int = 1) -> None:  # fmt: skip
        self.app.apply(
            [
                {
                    "apiVersion": "gu/v1",
                    "kind": "Session",
                    "metadata": {"name": name},
                    "spec": {
                        "app": "io",
                        "providers": {"count": count},
                        "workload": {
                            "runtime": "native",
                            "image": {"hash": self.image},
                            "command": ["./run.sh"],
                            "args": args,
                            "resources": {"cpu": 0.1, "memoryMiB": 32},
                            "inputs": inputs,
                            "outputs": {"path": "out", "maxMiB": max_mib},
                        },
                    },
                }
            ]
        )

    def placements(self, session: str) -> list[dict[str, Any]]:
        return self.admin.list("Placement", selector=f"gu/session={session}")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("io")
    hub = make_hub(tmp)
    hub.start()
    admin = hub.client()
    agents: list[AgentProcess] = []
    try:
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        for i in range(3):
            a = AgentProcess(hub, tmp / f"agent-{i}", tmp / f"agent-{i}.log")
            a.start("--join-token", token, "--name", f"io-{i}", "--heartbeat", "1")
            agents.append(a)
        image = push_script_image(admin, tmp, "io", SCRIPT)
        key = generate_key()
        save_private_key(key, tmp / "app.key")
        admin.apply(
            [
                app_object("io", key),
                app_object("other", generate_key()),
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "io"},
                    "spec": {"apps": ["io", "other"], "allowImages": [image]},
                },
            ]
        )
        app_env = {**hub.env, "GU_CONFIG": str(tmp / "app-config.yaml")}
        login = run_gu("login", "--app", "io", "--key", str(tmp / "app.key"),
                       "--hub", hub.url, env=app_env)  # fmt: skip
        assert login.returncode == 0, login.stderr
        wait_for(
            lambda: len([p for p in admin.call("GET", "/peers") if p["ready"]]) == 3,
            timeout=30,
            what="3 ready providers",
        )
        yield Pool(hub, admin, Client(hub.url, key), app_env, agents, image, tmp)
    finally:
        tear_down(hub, admin, agents, MARK)


def push_blob(pool: Pool, path: Path) -> str:
    """``gu blob push`` as the app; the hash it prints."""
    out = run_gu("blob", "push", str(path), env=pool.app_env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def states(pool: Pool, session: str) -> list[str]:
    return sorted(p["status"].get("state", "Pending") for p in pool.placements(session))


def data_folders(pool: Pool) -> list[Path]:
    """What the agents keep in their data folders (one per placement with data)."""
    return [p for a in pool.agents for p in (a.state_dir / "data").glob("*")]


# --------------------------------------------------------------------- tests


def test_three_placements_read_a_20_mib_input_and_gu_outputs_fetches_each(
    pool: Pool, tmp_path: Path
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(20 << 20))
    blob = push_blob(pool, data)
    assert blob.startswith("sha3-256:")
    pool.session("checksum", ["checksum"], [{"hash": blob, "path": "in/data.bin"}], count=3)
    wait_for(lambda: states(pool, "checksum") == ["Succeeded"] * 3, timeout=90,
             what="three placements Succeeded")  # fmt: skip
    placements = pool.placements("checksum")
    assert all(p["status"]["outputs"]["files"] == 2 for p in placements)

    out = tmp_path / "results"
    fetched = run_gu("outputs", "checksum", "-o", str(out), env=pool.app_env, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    want = hashlib.sha256(data.read_bytes()).hexdigest()
    names = sorted(p["metadata"]["name"] for p in placements)
    assert sorted(d.name for d in out.iterdir()) == names
    for name in names:
        assert (out / name / "result.txt").read_text() == f"{want}\n{name}\n"
        assert (out / name / "deeper" / "note.txt").read_text() == "nested\n"
    described = run_gu("describe", "session", "checksum", env=pool.app_env)
    assert "Outputs" in described.stdout and all(n in described.stdout for n in names)
    node = placements[0]["spec"]["node"]
    one = run_gu("outputs", "checksum", "--node", node, "--json", env=pool.app_env)
    assert one.returncode == 0 and one.stdout.count('"placement"') == 1

    # another app: neither the Session's outputs nor the bytes (404, as for what it may
    # not see); then deleting the Session removes them from the hub within a minute
    other = Client(pool.hub.url, generate_key())
    pool.admin.apply([app_object("other", other.key)])
    first = placements[0]["status"]["outputs"]["hash"]
    for path in ("/v1/sessions/checksum/outputs", f"/v1/blobs/{first}"):
        with pytest.raises(ApiError) as err:
            other.call("GET", path)
        assert err.value.status == 404
    output_hashes = {p["status"]["outputs"]["hash"] for p in placements}
    store = pool.hub.state_dir / "images" / "sha3-256"
    assert all((store / h.removeprefix("sha3-256:")).exists() for h in output_hashes)
    pool.app.delete("Session", "checksum")
    wait_for(
        lambda: not any((store / h.removeprefix("sha3-256:")).exists() for h in output_hashes),
        timeout=70,
        what="the outputs gone from the hub",
    )
    assert (store / blob.removeprefix("sha3-256:")).exists()  # the pushed input stays
    wait_for(lambda: not data_folders(pool), timeout=30, what="the agents' data folders gone")


def test_writing_past_max_mib_fails_the_placement_and_leaves_nothing(pool: Pool) -> None:
    pool.session("flood", ["flood"], [], max_mib=2)
    placement = wait_for(
        lambda: (ps := pool.placements("flood")) and ps[0]["status"].get("state") == "Failed"
        and ps[0],
        timeout=60,
        what="flood Failed",
    )  # fmt: skip
    assert placement["status"]["reason"] == "OutputLimitExceeded"
    assert "2 MiB" in placement["status"]["message"]
    assert not placement["status"].get("outputs")
    node = placement["spec"]["node"]
    agent = next(a for a in pool.agents if a.node_id == node)
    folder = agent.state_dir / "data" / placement["metadata"]["name"]
    assert not (folder / "outputs").exists() and not (folder / "outputs.tar").exists()
    assert not pool.app.call("GET", "/v1/sessions/flood/outputs")["items"]  # none on the hub


def test_a_tampered_input_on_the_hub_fails_before_the_workload_starts(
    pool: Pool, tmp_path: Path
) -> None:
    data = tmp_path / "tamper.bin"
    data.write_bytes(b"the original bytes\n" * 1000)
    blob = push_blob(pool, data)
    stored = pool.hub.state_dir / "images" / "sha3-256" / blob.removeprefix("sha3-256:")
    stored.chmod(0o644)
    with stored.open("r+b") as f:
        f.write(b"THE")
    pool.session("tampered", ["checksum"], [{"hash": blob, "path": "in/data.bin"}])
    placement = wait_for(
        lambda: (ps := pool.placements("tampered")) and ps[0]["status"].get("state") == "Failed"
        and ps[0],
        timeout=60,
        what="tampered Failed",
    )  # fmt: skip
    assert placement["status"]["reason"] == "InputHashMismatch", placement["status"]
    assert placement["status"].get("startedAt") is None  # nothing ran
    assert not pool.app.call("GET", "/v1/sessions/tampered/outputs")["items"]


def test_inputs_must_be_the_apps_own_blobs(pool: Pool, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.bin"
    theirs.write_bytes(b"pushed by the admin for nobody\n")
    with theirs.open("rb") as f:
        blob = pool.admin.call("POST", "/v1/blobs", content=f.read())["hash"]
    with pytest.raises(ApiError) as err:
        pool.session("not-mine", ["checksum"], [{"hash": blob, "path": "in/data.bin"}])
    assert err.value.status == 403 and "does not belong to app io" in str(err.value.details)
    assert not pool.placements("not-mine")


def test_an_agent_killed_while_its_workload_runs_uploads_the_outputs_once(pool: Pool) -> None:
    pool.session("late", ["late", "4"], [])
    placement = wait_for(
        lambda: (ps := pool.placements("late")) and ps[0]["status"].get("state") == "Running"
        and ps[0],
        timeout=60,
        what="late Running",
    )  # fmt: skip
    agent = next(a for a in pool.agents if a.node_id == placement["spec"]["node"])
    agent.stop(signal.SIGKILL)
    time.sleep(5)  # the workload finishes meanwhile, its agent gone
    agent.start("--heartbeat", "1")
    done = wait_for(
        lambda: (ps := pool.placements("late")) and ps[0]["status"].get("outputs") and ps[0],
        timeout=60,
        what="late's outputs recorded",
    )
    assert done["status"]["state"] == "Succeeded"
    items = pool.app.call("GET", "/v1/sessions/late/outputs")["items"]
    assert len(items) == 1 and items[0]["hash"] == done["status"]["outputs"]["hash"]
    name = done["metadata"]["name"]
    uploads = agent.log_path.read_text().count(f"event=outputs_uploaded name={name} ")
    assert uploads == 1, agent.log_path.read_text()[-3000:]
    with httpx.Client(base_url=pool.hub.url, timeout=10) as http:
        got = http.get(f"/v1/blobs/{items[0]['hash']}",
                       headers={"Authorization": f"Bearer {pool.app.token()}"})  # fmt: skip
    assert got.status_code == 200 and b"late result" in got.content
