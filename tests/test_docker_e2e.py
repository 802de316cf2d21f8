"""Docker end to end: a real hub, a real agent on a real engine, and one agent without one.

Built once for the module: a hub; agent ``dock`` with ``--docker-host`` of the
test engine (and a 1 s image GC delay), agent ``plain`` pointed at no engine;
an App, an ImagePolicy and the busybox ``docker save`` tarball pushed to the
hub with ``gu image build --runtime docker`` + ``gu image push``. Each test
runs its own Session; the finalizer deletes them and stops everything.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.client import Client
from tests.conftest import HubProcess, make_hub
from tests.dockerd import Engine, import_busybox
from tests.helpers import run_gu, wait_for
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import session_gone, tear_down


@dataclass
class Pool:
    hub: HubProcess
    admin: Client
    dock: AgentProcess
    plain: AgentProcess
    image: str
    image_id: str
    engine: Engine
    tmp: Path


def docker_session(
    pool: Pool,
    name: str,
    script: str,
    cpu: float = 0.2,
    workload_extra: dict[str, Any] | None = None,
    **spec: Any,
) -> None:
    pool.admin.apply(
        [
            {
                "apiVersion": "gu/v1",
                "kind": "Session",
                "metadata": {"name": name},
                "spec": {
                    "app": "dock",
                    "workload": {
                        "runtime": "docker",
                        "image": {"hash": pool.image},
                        "command": ["sh", "-c", script],
                        "resources": {"cpu": cpu, "memoryMiB": 32},
                        **(workload_extra or {}),
                    },
                    **spec,
                },
            }
        ]
    )


def only_placement(pool: Pool, session: str) -> dict[str, Any] | None:
    found = pool.admin.list("Placement", selector=f"gu/session={session}")
    return found[0] if len(found) == 1 else None


def placement_in(pool: Pool, session: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (p := only_placement(pool, session)) and p["status"].get("state") == state and p,
        timeout=timeout,
        what=f"{session}'s placement {state}",
    )


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, docker_engine: Engine) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("docker-pool")
    image_id = import_busybox(docker_engine, "gu-test/e2e:latest", marker="e2e")
    hub = make_hub(tmp)
    hub.start()
    admin = hub.client()
    agents: list[AgentProcess] = []
    try:
        token = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        dock = AgentProcess(hub, tmp / "dock", tmp / "dock.log")
        dock.start(
            "--join-token", token, "--name", "dock", "--heartbeat", "1",
            "--docker-host", docker_engine.host, "--docker-image-gc-delay", "1",
        )  # fmt: skip
        plain = AgentProcess(hub, tmp / "plain", tmp / "plain.log")
        plain.start(
            "--join-token", token, "--name", "plain", "--heartbeat", "1",
            "--docker-host", "unix:///nonexistent/docker.sock",
        )  # fmt: skip
        agents += [dock, plain]
        tarball = tmp / "e2e.tar"
        built = run_gu(
            "image", "build", "--runtime", "docker", image_id, "-o", str(tarball),
            "--docker-host", docker_engine.host, env=hub.env,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        image = built.stdout.strip()
        client = docker_engine.client()
        try:  # the agent loads it from the verified tarball itself (and so may remove it)
            client.images.remove(image_id, force=True)
        finally:
            client.close()
        pushed = run_gu("image", "push", str(tarball), env=hub.env)
        assert pushed.returncode == 0 and pushed.stdout.strip() == image, pushed.stderr
        admin.apply(
            [
                {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": "dock"}, "spec": {}},
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "dock"},
                    "spec": {"apps": ["dock"], "allowImages": [image]},
                },
            ]
        )
        wait_for(
            lambda: len([p for p in admin.call("GET", "/peers") if p["ready"]]) == 2,
            timeout=30,
            what="both agents Ready",
        )
        yield Pool(hub, admin, dock, plain, image, image_id, docker_engine, tmp)
    finally:
        tear_down(hub, admin, agents, "gu-docker-e2e")


def provider_named(pool: Pool, name: str) -> dict[str, Any]:
    return next(p for p in pool.admin.list("Provider") if p["spec"]["displayName"] == name)


def test_only_the_agent_with_an_engine_offers_docker_with_its_version(pool: Pool) -> None:
    dock = provider_named(pool, "dock")["status"]["inventory"]
    plain = provider_named(pool, "plain")["status"]["inventory"]
    assert dock["runtimes"] == ["native", "docker"]
    assert plain["runtimes"] == ["native"]
    client = pool.engine.client()
    try:
        version = client.version()["Version"]
    finally:
        client.close()
    info = {r["name"]: r for r in dock["runtimeInfo"]}
    assert info["docker"]["version"] == f"docker {version}"


def test_exit_code_and_output_reach_the_placement_and_gu_logs(pool: Pool) -> None:
    docker_session(pool, "exit3", "echo hello; echo oops >&2; exit 3")
    p = placement_in(pool, "exit3", "Failed")
    assert p["status"]["exitCode"] == 3
    assert p["spec"]["node"] == pool.dock.node_id
    logs = wait_for(
        lambda: (
            (r := run_gu("logs", "exit3", env=pool.hub.env)).returncode == 0
            and "oops" in r.stdout
            and r.stdout
        ),
        timeout=20,
        what="gu logs of exit3",
    )
    assert "hello" in logs and "oops" in logs


def test_a_docker_session_on_a_pool_without_engines_waits_naming_the_runtime(pool: Pool) -> None:
    docker_session(pool, "nowhere", "true", providers={"nodes": [pool.plain.node_id]})
    session = wait_for(
        lambda: (
            (s := pool.admin.get("Session", "nowhere"))
            and "lack runtime docker" in str(s.get("status", {}).get("conditions"))
            and s
        ),
        timeout=30,
        what="the Unschedulable reason",
    )
    stalled = next(c for c in session["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["message"] == "0/2 providers: 1 not in providers.nodes, 1 lack runtime docker"
    pool.admin.delete("Session", "nowhere")


def test_suspend_pauses_and_resume_runs_the_same_container(pool: Pool) -> None:
    docker_session(pool, "pausable", "sleep 600")
    p = placement_in(pool, "pausable", "Running")
    client = pool.engine.client()
    try:
        container = client.containers.get(f"gu-{p['metadata']['name']}")
        docker_session(pool, "pausable", "sleep 600", suspend=True)
        placement_in(pool, "pausable", "Suspended")
        container.reload()
        assert container.attrs["State"]["Paused"] is True
        docker_session(pool, "pausable", "sleep 600", suspend=False)
        placement_in(pool, "pausable", "Running")
        again = client.containers.get(f"gu-{p['metadata']['name']}")
        assert again.id == container.id and again.attrs["State"]["Paused"] is False
    finally:
        client.close()
    pool.admin.delete("Session", "pausable")
    wait_for(lambda: session_gone(pool, "pausable"), timeout=60, what="pausable deleted")


def test_an_urgent_session_pauses_a_batch_container_which_resumes_after(pool: Pool) -> None:
    """Priorities on Docker: the victim is paused (same container), then unpaused."""
    pool.admin.apply(
        [
            {"apiVersion": "gu/v1", "kind": "Priority", "metadata": {"name": n}, "spec": s}
            for n, s in (("d-batch", {"value": 0}), ("d-urgent", {"value": 1000}))
        ]
    )
    cores = provider_named(pool, "dock")["status"]["inventory"]["cpu"]["cores"]
    count = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"
    docker_session(pool, "d-low", count, cpu=cores, priority="d-batch")
    p = placement_in(pool, "d-low", "Running")
    client = pool.engine.client()
    try:
        container = client.containers.get(f"gu-{p['metadata']['name']}")
        wait_for(lambda: len(container.logs().split()) >= 3, timeout=20, what="the counter")
        docker_session(pool, "d-urgent", "echo urgent; sleep 2", cpu=cores, priority="d-urgent")
        victim = placement_in(pool, "d-low", "Suspended")
        assert victim["status"]["reason"] == "Preempted"
        container.reload()
        assert container.attrs["State"]["Paused"] is True
        frozen = len(container.logs().split())
        placement_in(pool, "d-urgent", "Succeeded")
        assert len(container.logs().split()) <= frozen + 1
        placement_in(pool, "d-low", "Running")
        again = client.containers.get(f"gu-{p['metadata']['name']}")
        assert again.id == container.id and again.attrs["State"]["Paused"] is False
        wait_for(lambda: len(again.logs().split()) > frozen + 1, timeout=20, what="it counts on")
    finally:
        client.close()
    for name in ("d-low", "d-urgent"):
        pool.admin.delete("Session", name)
        wait_for(lambda n=name: session_gone(pool, n), timeout=60, what=f"{name} deleted")


def test_a_restarted_agent_adopts_its_container_and_deletion_removes_container_and_image(
    pool: Pool,
) -> None:
    from docker.errors import ImageNotFound, NotFound

    docker_session(pool, "long", "sleep 600")
    p = placement_in(pool, "long", "Running")
    name = f"gu-{p['metadata']['name']}"
    client = pool.engine.client()
    try:
        before = client.containers.get(name).id
        pool.dock.stop(signal.SIGKILL)
        pool.dock.start(
            "--heartbeat", "1", "--docker-host", pool.engine.host, "--docker-image-gc-delay", "1"
        )
        time.sleep(3)  # a few passes of the restarted agent
        assert client.containers.get(name).id == before
        assert placement_in(pool, "long", "Running")["status"]["state"] == "Running"
        assert "adopted" in pool.dock.log()
        pool.admin.delete("Session", "long")
        wait_for(lambda: session_gone(pool, "long"), timeout=60, what="long deleted")

        def container_gone() -> bool:
            try:
                client.containers.get(name)
            except NotFound:
                return True
            return False

        wait_for(container_gone, timeout=30, what="the container removed")
        for s in pool.admin.list("Session"):  # nothing else of ours holds the image
            pool.admin.delete("Session", s["metadata"]["name"])
        wait_for(lambda: not pool.admin.list("Placement"), timeout=60, what="all placements gone")

        def image_gone() -> bool:
            try:
                client.images.get(pool.image_id)
            except ImageNotFound:
                return True
            return False

        wait_for(image_gone, timeout=30, what="the loaded image removed after the delay")
    finally:
        client.close()


def test_a_container_reads_its_input_read_only_and_its_outputs_reach_gu_outputs(
    pool: Pool, tmp_path: Path
) -> None:
    data = os.urandom(1 << 20)
    blob = pool.admin.call("POST", "/v1/blobs", content=data, params={"app": "dock"})["hash"]
    script = (
        "sha256sum in/data.bin | cut -d' ' -f1 > out/result.txt; "
        "if echo x > in/data.bin 2>/dev/null; then echo writable; else echo read-only; fi"
        " > out/input-was.txt"
    )
    docker_session(
        pool, "dock-io", script, providers={"nodes": [pool.dock.node_id]},
        workload_extra={"inputs": [{"hash": blob, "path": "in/data.bin"}],
                        "outputs": {"path": "out", "maxMiB": 5}},
    )  # fmt: skip
    done = placement_in(pool, "dock-io", "Succeeded")
    assert done["status"]["outputs"]["files"] == 2
    out = tmp_path / "fetched"
    got = run_gu("outputs", "dock-io", "-o", str(out), env=pool.hub.env, timeout=60)
    assert got.returncode == 0, got.stderr
    folder = out / done["metadata"]["name"]
    assert (folder / "result.txt").read_text().strip() == hashlib.sha256(data).hexdigest()
    assert (folder / "input-was.txt").read_text().strip() == "read-only"
    pool.admin.delete("Session", "dock-io")
    wait_for(lambda: session_gone(pool, "dock-io"), timeout=60, what="dock-io deleted")
    wait_for(lambda: not list((pool.dock.state_dir / "data").glob("*")), timeout=20,
             what="the agent's data folder for dock-io removed")  # fmt: skip
