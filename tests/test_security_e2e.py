"""Security end to end: a real hub, three real agents, and an app that logs in with its key.

The pool: agent ``a0`` enrolled with a join token labelled ``pool=a`` (``gu hub
token create --label pool=a --uses 1``), ``b0`` with one labelled ``pool=b``, and
``a1`` with an unlabelled token but ``--label pool=a`` on its own command line: a
claim, which no policy trusts until the admin labels it (``gu label provider``). The app ``a`` makes its key with ``gu keys new``, logs in with
``gu login`` into its own client config, and does everything else through the
``gu`` CLI as a user would (build, push, sign, apply). The admin (the hub's own
config) writes the App and the ImagePolicy objects.

Every image's script first creates a proof file named in its arguments, then
loops printing a marker: a proof file that exists means the image's code
executed; one that does not, after the placement was refused, means nothing of
it did. The psutil scan for a test's marker finds its processes (and the
finalizer kills whatever is left).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from agent.identity import KEY_FILE
from controller.client import Client
from specs.identity import load_private_key
from tests.conftest import HubProcess, make_hub
from tests.helpers import condition_of, process_running, run_gu, wait_for
from tests.test_agent import AgentProcess
from tests.test_agent_e2e import marker_pids, tear_down, workload_pids
from tests.test_security_secrets import key_forms

RUN_SH = """#!/bin/sh
# $1: marker; $2: proof file to create before anything else
: > "$2"
while true; do
  echo "tick $1 on $GU_NODE"
  sleep 0.2
done
"""
MARK_PREFIX = f"gu-sec-{uuid.uuid4().hex[:8]}"
RESYNC = 30.0  # the hub's default resync period: the bound for "within one resync"


@dataclass
class Pool:
    tmp: Path
    hub: HubProcess
    admin: Client
    agents: dict[str, AgentProcess]
    app_env: dict[str, str]
    signer_key: Path
    signer_pub: str
    join_token: str
    images: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def node(self, name: str) -> str:
        return self.agents[name].node_id

    def gu(self, *args: str, ok: bool = True) -> Any:
        """``gu ARGS`` as the app; with ``ok`` the exit code must be 0."""
        out = run_gu(*args, env=self.app_env, cwd=self.tmp)
        self.outputs += [out.stdout, out.stderr]
        if ok:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out

    def build(self, tag: str) -> tuple[Path, str]:
        """A native image whose bytes differ by ``tag``; (file, hash)."""
        folder = self.tmp / f"img-{tag}"
        folder.mkdir()
        (folder / "run.sh").write_text(RUN_SH)
        (folder / "run.sh").chmod(0o755)
        (folder / "TAG").write_text(tag)
        out = self.tmp / f"{tag}.tar.gz"
        built = self.gu("image", "build", str(folder), "-o", str(out))
        image = built.stdout.strip().split()[-1]
        assert image.startswith("sha3-256:")
        self.images[tag] = image
        return out, image

    def policy(self, name: str, **spec: Any) -> None:
        self.admin.apply(
            [
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": name},
                    "spec": {"apps": ["a"], **spec},
                }
            ]
        )

    def session_file(self, name: str, image: str, marker: str, **providers: Any) -> Path:
        doc = {
            "apiVersion": "gu/v1",
            "kind": "Session",
            "metadata": {"name": name},
            "spec": {
                "app": "a",
                "providers": providers or {"count": 1},
                "workload": {
                    "runtime": "native",
                    "image": {"hash": image},
                    "command": ["./run.sh"],
                    "args": [marker, str(self.proof(marker))],
                    "resources": {"cpu": 0.1, "memoryMiB": 16},
                },
            },
        }
        path = self.tmp / f"{name}.yaml"
        with path.open("w") as f:
            YAML().dump(doc, f)
        return path

    def proof(self, marker: str) -> Path:
        return self.tmp / f"proof-{marker}"

    def placements(self, session: str) -> list[dict[str, Any]]:
        return self.admin.list("Placement", selector=f"gu/session={session}")

    def only_placement(self, session: str, state: str) -> dict[str, Any]:
        """Wait (30 s at most) for the session's one placement to reach ``state``."""
        placements = wait_for(
            lambda: (
                (ps := self.placements(session)) and ps[0]["status"].get("state") == state and ps
            ),
            timeout=30,
            what=f"{session}'s placement to be {state}",
        )
        assert len(placements) == 1
        return placements[0]

    def delete_session(self, name: str) -> None:
        self.gu("delete", "session", name)
        wait_for(lambda: not self.placements(name), timeout=30, what=f"{name}'s placements gone")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("sec")
    hub = make_hub(tmp)
    hub.start()
    admin = hub.client()
    agents: dict[str, AgentProcess] = {}
    try:
        plain = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        for name, token_label, own_label in (
            ("a0", "pool=a", "pool=a"),
            ("a1", None, "pool=a"),  # claims pool=a itself: not trusted
            ("b0", "pool=b", "pool=b"),
        ):
            token = plain
            if token_label:
                made = run_gu(
                    "hub", "token", "create", "--ttl", "10m", "--uses", "1",
                    "--label", token_label, env=hub.env,
                )  # fmt: skip
                assert made.returncode == 0, made.stderr
                token = made.stdout.strip()
            agent = AgentProcess(hub, tmp / f"agent-{name}", tmp / f"agent-{name}.log")
            agent.start(
                "--join-token", token, "--name", name, "--label", own_label, "--heartbeat", "1"
            )  # fmt: skip
            agents[name] = agent

        app_env = {**os.environ, "GU_CONFIG": str(tmp / "app-config.yaml")}
        app_key, signer_key = tmp / "a.key", tmp / "signer.key"
        pubs = {}
        for path in (app_key, signer_key):
            made = run_gu("keys", "new", "--out", str(path), env=app_env)
            assert made.returncode == 0, made.stderr
            pubs[path] = made.stdout.strip().split()[-1]
            assert pubs[path].startswith("ed25519:")
            assert (path.stat().st_mode & 0o777) == 0o600
        admin.apply(
            [
                {
                    "apiVersion": "gu/v1",
                    "kind": "App",
                    "metadata": {"name": "a"},
                    "spec": {"publicKeys": [pubs[app_key]]},
                }
            ]
        )
        login = run_gu("login", "--app", "a", "--key", str(app_key), "--hub", hub.url, env=app_env)
        assert login.returncode == 0, login.stderr
        wait_for(
            lambda: (
                len(peers := admin.call("GET", "/peers")) == 3
                and all(p["ready"] for p in peers)
                and peers
            ),
            timeout=30,
            what="3 ready peers",
        )
        yield Pool(tmp, hub, admin, agents, app_env, signer_key, pubs[signer_key], token)
    finally:
        tear_down(hub, admin, list(agents.values()), MARK_PREFIX)


# --------------------------------------------------------------------- tests


def test_without_a_policy_the_apps_session_is_refused_and_nothing_is_written(pool: Pool) -> None:
    _, image = pool.build("nopolicy")
    pool.gu("image", "push", str(pool.tmp / "nopolicy.tar.gz"))
    marker = f"{MARK_PREFIX}-nopolicy"
    out = pool.gu("apply", "-f", str(pool.session_file("nopol", image, marker)), ok=False)
    assert out.returncode == 3, out.stdout
    assert 'app "a" has no ImagePolicy (default deny)' in out.stderr, out.stderr
    assert "nothing was applied" in out.stderr
    assert pool.admin.list("Session") == []
    assert not pool.proof(marker).exists()


def test_a_policy_for_pool_a_runs_the_session_there_and_only_there(pool: Pool) -> None:
    file, image = pool.build("poola")
    pool.gu("image", "push", str(file))
    pool.policy("a-pool", allowImages=[image], allowProviders={"selector": {"pool": "a"}})
    marker = f"{MARK_PREFIX}-poola"
    pool.gu("apply", "-f", str(pool.session_file("poola", image, marker, count=3)))
    # a1 says pool=a of itself: the policy trusts only a0's label, from its token
    wait_for(
        lambda: (
            [p for p in pool.placements("poola") if p["status"].get("state") == "Running"]
            and len(pool.placements("poola")) == 2  # one bound, one waits for both other slots
        ),
        timeout=30,
        what="1 Running placement",
    )
    time.sleep(2.0)  # several scheduling passes
    bound = [p["spec"].get("node") for p in pool.placements("poola") if p["spec"].get("node")]
    assert bound == [pool.node("a0")]
    a1 = pool.admin.get("Provider", pool.node("a1"))
    assert a1["metadata"]["labels"] == {} and a1["spec"]["labels"] == {"pool": "a"}

    refused = pool.gu("label", "provider", "a1", "pool=a", ok=False)  # the app may not
    assert refused.returncode != 0 and "lacks permission" in refused.stderr, refused.stderr
    labeled = run_gu("label", "provider", "a1", "pool=a", env=pool.hub.env)  # the admin may
    assert labeled.returncode == 0 and "pool=a" in labeled.stdout, labeled.stderr
    pool_a = {pool.node("a0"), pool.node("a1")}

    running = wait_for(
        lambda: (
            (ps := [p for p in pool.placements("poola") if p["status"].get("state") == "Running"])
            and len(ps) == 2
            and ps
        ),
        timeout=30,
        what="2 Running placements",
    )
    assert {p["spec"]["node"] for p in running} == pool_a
    assert len(workload_pids(marker)) == 2
    time.sleep(2.0)  # several scheduling passes: the third slot must stay unbound
    slots = pool.placements("poola")
    assert len(slots) == 3
    bound = [p["spec"].get("node") for p in slots if p["spec"].get("node")]
    assert sorted(bound) == sorted(pool_a)  # b0 is never chosen
    assert len(workload_pids(marker)) == 2

    # Naming the pool=b node explicitly is refused at apply, naming the rule.
    other = f"{MARK_PREFIX}-poolb"
    explicit = pool.session_file("poolb", image, other, nodes=[pool.node("b0")])
    out = pool.gu("apply", "-f", str(explicit), ok=False)
    assert out.returncode == 3
    assert pool.node("b0") in out.stderr and "allowProviders" in out.stderr, out.stderr
    assert [s["metadata"]["name"] for s in pool.admin.list("Session")] == ["poola"]
    pool.delete_session("poola")
    wait_for(lambda: not marker_pids(marker), timeout=15, what="no process with the marker")


def test_an_image_allowed_only_by_signature_runs(pool: Pool) -> None:
    file, image = pool.build("signed")
    pool.gu("image", "push", str(file))
    pool.gu("image", "sign", str(file), "--key", str(pool.signer_key), "--push")
    pool.gu("image", "verify", str(file), "--pubkey", pool.signer_pub)
    pool.policy("a-signed", allowImagesSignedBy=[pool.signer_pub])
    marker = f"{MARK_PREFIX}-signed"
    pool.gu("apply", "-f", str(pool.session_file("signed", image, marker)))
    p = pool.only_placement("signed", "Running")
    assert p["spec"]["admission"]["allowedBy"] == "signature"
    assert p["spec"]["admission"]["signerKeys"] == [pool.signer_pub]
    wait_for(lambda: pool.proof(marker).exists(), timeout=10, what="the proof file")
    pool.delete_session("signed")


def test_an_untrusted_signer_or_a_flipped_signature_byte_is_refused_at_admission(
    pool: Pool,
) -> None:
    pool.policy("a-signed", allowImagesSignedBy=[pool.signer_pub])

    stranger = pool.tmp / "stranger.key"
    pool.gu("keys", "new", "--out", str(stranger))
    file, image = pool.build("stranger")
    pool.gu("image", "push", str(file))
    pool.gu("image", "sign", str(file), "--key", str(stranger), "--push")

    flipped, flipped_image = pool.build("flipped")
    pool.gu("image", "sign", str(flipped), "--key", str(pool.signer_key))
    sig_file = Path(f"{flipped}.sig")
    text = sig_file.read_text()
    at = text.index('"signature"') + len('"signature": "') + 10
    sig_file.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])
    # `gu image push` uploads the image, then FLIPPED.sig beside it: the hub refuses that
    pushed = pool.gu("image", "push", str(flipped), ok=False)
    assert pushed.returncode != 0
    assert "does not verify under the key it names" in pushed.stderr, pushed.stderr
    assert pool.admin.call("GET", f"/v1/images/{flipped_image}/signatures")["items"] == []

    for name, img in (("stranger", image), ("flipped", flipped_image)):
        marker = f"{MARK_PREFIX}-{name}"
        out = pool.gu("apply", "-f", str(pool.session_file(name, img, marker)), ok=False)
        assert out.returncode == 3, (name, out.stdout)
        assert "allowImagesSignedBy" in out.stderr, (name, out.stderr)
        assert "a-signed" in out.stderr, (name, out.stderr)
        assert not [s for s in pool.admin.list("Session") if s["metadata"]["name"] == name]
        assert not pool.proof(marker).exists()


def test_a_byte_flipped_in_the_hubs_stored_image_runs_nothing(pool: Pool) -> None:
    file, image = pool.build("tampered")
    pool.gu("image", "push", str(file))
    pool.policy("a-tampered", allowImages=[image])
    stored = pool.hub.state_dir / "images" / "sha3-256" / image.split(":", 1)[1]
    assert stored.read_bytes() == file.read_bytes()
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only a re-hash can tell
    stored.chmod(0o644)
    stored.write_bytes(bytes(data))

    marker = f"{MARK_PREFIX}-tampered"
    pool.gu("apply", "-f", str(pool.session_file("tampered", image, marker)))
    p = pool.only_placement("tampered", "Failed")
    assert p["status"]["reason"] == "ImageHashMismatch", p["status"]
    session = wait_for(
        lambda: (
            (s := pool.admin.get("Session", "tampered"))["status"].get("phase") == "Failed" and s
        ),
        timeout=15,
        what="the Session to show the failure",
    )
    stalled = condition_of(session, "Stalled")
    assert stalled and stalled["reason"] == "PlacementFailed"
    assert "ImageHashMismatch" in stalled["message"] or image in stalled["message"], stalled
    assert [s["reason"] for s in session["status"]["placements"]] == ["ImageHashMismatch"]
    described = pool.gu("describe", "session", "tampered")
    assert "ImageHashMismatch" in described.stdout
    assert not pool.proof(marker).exists()  # the script's first line never ran
    assert not workload_pids(marker)
    node = p["spec"]["node"]
    agent = next(a for a in pool.agents.values() if a.node_id == node)
    assert "event=image_rejected" in agent.log()
    pool.delete_session("tampered")

    # The fix the README gives: push the image again (the hub replaces the
    # damaged copy), and the same Session runs.
    pool.gu("image", "push", str(file))
    assert stored.read_bytes() == file.read_bytes()
    assert "event=image_repaired" in pool.hub.logs()
    pool.gu("apply", "-f", str(pool.session_file("tampered", image, marker)))
    wait_for(lambda: pool.proof(marker).exists(), timeout=30, what="the repaired image to run")
    pool.delete_session("tampered")


def test_removing_the_hash_from_the_policy_stops_the_running_session(pool: Pool) -> None:
    file, image = pool.build("revoked")
    pool.gu("image", "push", str(file))
    keep = "sha3-256:" + "0" * 64  # the policy stays valid; it just no longer lists the image
    pool.policy("a-revoked", allowImages=[image])
    marker = f"{MARK_PREFIX}-revoked"
    pool.gu("apply", "-f", str(pool.session_file("revoked", image, marker)))
    wait_for(
        lambda: pool.admin.get("Session", "revoked")["status"].get("phase") == "Running",
        timeout=30,
        what="the Session to run",
    )
    pids = wait_for(lambda: workload_pids(marker), timeout=10, what="its process")

    for other in ("a-pool", "a-signed", "a-tampered"):  # leave only the policy under test
        with contextlib.suppress(Exception):
            pool.admin.delete("ImagePolicy", other)
    started = time.monotonic()
    pool.policy("a-revoked", allowImages=[keep])
    session = wait_for(
        lambda: (
            (s := pool.admin.get("Session", "revoked"))
            and (c := condition_of(s, "Stalled"))
            and c["reason"] == "PolicyViolation"
            and s
        ),
        timeout=RESYNC,
        interval=0.1,
        what="Stalled/PolicyViolation",
    )
    wait_for(lambda: not workload_pids(marker), timeout=RESYNC, what="the process to stop")
    elapsed = time.monotonic() - started
    assert elapsed < RESYNC
    print(f"policy revoked → process stopped in {elapsed:.2f}s")
    assert not any(process_running(pid) for pid in pids)
    message = condition_of(session, "Stalled")["message"]  # type: ignore[index]
    assert "allowImages" in message and "a-revoked" in message, message
    # Stopped placements are retired (deleted) and none replaces them while the policy says no.
    wait_for(lambda: not pool.placements("revoked"), timeout=10, what="the placement retired")
    time.sleep(2.0)
    assert not pool.placements("revoked") and not workload_pids(marker)
    still = condition_of(pool.admin.get("Session", "revoked"), "Stalled")
    assert still and still["reason"] == "PolicyViolation"
    pool.delete_session("revoked")


TOKEN_SHAPES = re.compile(r"gu1\.[\w-]{16,}|gujt1_[\w-]{8,}")


def test_no_secret_reaches_any_log_or_output_of_the_scenario(pool: Pool) -> None:
    """Runs last: every private key of the scenario, the join token and any bearer token."""
    texts = {"hub log": pool.hub.logs()}
    texts.update({f"agent {n} log": a.log() for n, a in pool.agents.items()})
    texts.update({f"gu output {i}": out for i, out in enumerate(pool.outputs)})
    texts["app config"] = (pool.tmp / "app-config.yaml").read_text()
    keys = [pool.tmp / "a.key", pool.signer_key, pool.tmp / "stranger.key"]
    keys += [a.state_dir / KEY_FILE for a in pool.agents.values()]
    secrets = {"join token": pool.join_token}
    for path in keys:
        for form, value in key_forms(load_private_key(path)).items():
            secrets[f"{path.name} {form}"] = value
    assert len(pool.outputs) > 40 and "event=heartbeat_ok" in texts["agent a0 log"]
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} appears in the {where}"
        shaped = TOKEN_SHAPES.findall(text)
        assert not shaped, f"token-shaped strings in the {where}: {[t[:8] for t in shaped]}"
