"""No secret in logs, error messages or files at rest; key files 0600, state dir 0700.

One scenario runs against a real hub logging at DEBUG: the admin and an app
log in, the app applies a Session the image policy refuses and then one it
allows, images are pushed, log-ins fail every way we know (garbage, expired,
forged and replayed tokens, a replayed nonce, an unknown key, an unknown join
token), and an agent enrols and heartbeats. Every secret that crossed the wire
is recorded — each bearer token issued, each private key (its PEM body line
and its 32-byte seed in base64, URL-safe base64 and hex), each join token —
and none may appear in the hub's log file, in any error answer of the
scenario, or in any file of the state dir but the key file it lives in.
"""

from __future__ import annotations

import base64
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.client import ApiError, Client
from specs.identity import generate_key, load_private_key
from tests.conftest import HubProcess, make_hub
from tests.test_security_matrix import (
    HEARTBEAT,
    app_object,
    enroll_request,
    policy_object,
    session_object,
    signed_challenge,
)


@dataclass
class Scenario:
    hub: HubProcess
    tokens: list[str] = field(default_factory=list)
    join_tokens: list[str] = field(default_factory=list)
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """The body of every 4xx/5xx answer of the scenario."""

    def client(self, key: Ed25519PrivateKey, **kw: int) -> Client:
        """A Client whose every log-in is recorded."""
        scenario = self

        class Recording(Client):
            def login(self) -> str:
                token = super().login()
                scenario.tokens.append(token)
                return token

        return Recording(self.hub.url, key, **kw)

    def http(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        """A raw request; an error answer is recorded (and a token in the answer too)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = httpx.request(method, self.hub.url + path, headers=headers, timeout=15, **kw)
        if resp.status_code >= 400:
            self.errors.append(resp.text)
        elif "application/json" in resp.headers.get("content-type", ""):
            body = resp.json()
            if isinstance(body, dict) and isinstance(body.get("token"), str):
                issued = self.join_tokens if path == "/v1/jointokens" else self.tokens
                issued.append(body["token"])
        return resp

    def secrets(self) -> dict[str, str]:
        """Every secret of the scenario, by a name that says what it is."""
        out = {f"bearer token #{i}": t for i, t in enumerate(self.tokens)}
        out |= {f"MAC of bearer token #{i}": t.rsplit(".", 1)[1] for i, t in enumerate(self.tokens)}
        out |= {f"join token #{i}": t for i, t in enumerate(self.join_tokens)}
        for name, key in self.keys.items():
            out |= {f"private key {name} ({form})": text for form, text in key_forms(key).items()}
        return out


def key_forms(key: Ed25519PrivateKey) -> dict[str, str]:
    """The ways a private key could be written out: PEM body lines, and its seed."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    seed = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    forms = {
        f"PEM line {i}": line for i, line in enumerate(pem.splitlines()) if "-----" not in line
    }
    forms["seed, base64"] = base64.b64encode(seed).decode().rstrip("=")
    forms["seed, URL-safe base64"] = base64.urlsafe_b64encode(seed).decode().rstrip("=")
    forms["seed, hex"] = seed.hex()
    return forms


def _run(s: Scenario) -> None:
    hub = s.hub
    s.keys["admin"] = load_private_key(hub.state_dir / "admin.key")
    s.keys["hub"] = load_private_key(hub.state_dir / "hub.key")
    admin = s.client(s.keys["admin"])
    admin.login()

    s.keys["app"] = generate_key()
    admin.apply([app_object("a", s.keys["app"])])
    app = s.client(s.keys["app"])
    app_token = app.login()

    image = s.http("POST", "/v1/images", app_token, content=b"#!/bin/sh\necho hi\n").json()["hash"]
    session = {"objects": [session_object("s", "a", image)]}
    refused = s.http("POST", "/v1/apply", app_token, json=session)
    assert refused.status_code == 403 and "image policy" in refused.text
    admin.apply([policy_object("a-runs", ["a"], [image])])
    assert s.http("POST", "/v1/apply", app_token, json=session).status_code == 200
    admin.call("POST", "/v1/images", content=b"another image")

    # every way in without a valid token
    assert s.http("GET", "/v1/sessions", "garbage").status_code == 401
    assert s.http("GET", "/v1/sessions", app_token + "x").status_code == 401
    assert (
        s.http("GET", "/v1/sessions", "gu1.e30." + app_token.rsplit(".", 1)[1]).status_code == 401
    )
    expired = s.client(s.keys["app"], token_ttl=1).login()
    time.sleep(1.2)
    assert s.http("GET", "/v1/sessions", expired).status_code == 401
    login = signed_challenge(hub.url, s.keys["app"])
    assert s.http("POST", "/v1/auth/token", json=login).status_code == 200
    assert s.http("POST", "/v1/auth/token", json=login).status_code == 401  # replayed nonce
    s.keys["stranger"] = generate_key()
    try:
        s.client(s.keys["stranger"]).login()
    except ApiError as exc:
        s.errors.append(exc.message)
    # a token in the wrong scheme must not be echoed either
    basic = {"Authorization": f"Basic {app_token}"}
    resp = httpx.get(hub.url + "/v1/sessions", headers=basic, timeout=10)
    assert resp.status_code == 401
    s.errors.append(resp.text)

    # an agent enrols with a join token, logs in with its key and heartbeats
    join = s.http("POST", "/v1/jointokens", admin.token(), json={"ttl": 600}).json()["token"]
    s.keys["agent"] = generate_key()
    bad_join = enroll_request(hub.url, s.keys["agent"], "gujt1_" + "x" * 32, "agent")
    s.join_tokens.append(bad_join["joinToken"])
    assert s.http("POST", "/v1/agents/enroll", json=bad_join).status_code == 401
    good = enroll_request(hub.url, s.keys["agent"], join, "agent")
    assert s.http("POST", "/v1/agents/enroll", json=good).status_code == 200
    replayed = s.http("POST", "/v1/agents/enroll", json=good)  # nonce already used
    assert replayed.status_code == 401
    agent = s.client(s.keys["agent"])
    for _ in range(3):
        agent.call("POST", "/v1/agents/heartbeat", json=HEARTBEAT)
    assert s.http("POST", "/v1/agents/heartbeat", app_token, json=HEARTBEAT).status_code == 403


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    hub = make_hub(Path(tmp_path_factory.mktemp("secrets")))
    hub.env["GU_LOG_LEVEL"] = "DEBUG"  # the most the hub will ever write
    hub.start()
    s = Scenario(hub)
    try:
        _run(s)
    finally:
        hub.stop()  # flushes the log
    yield s


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return sorted(name for name, value in secrets.items() if value and value in text)


def _without_first_start_banner(log: str) -> str:
    """The log less the two lines ``gu hub`` prints on first start (see the xfail below)."""
    return re.sub(r"^(join token for agents|  start an agent: ).*$", "", log, flags=re.M)


def test_the_scenario_issued_the_secrets_it_looks_for(scenario: Scenario) -> None:
    assert len(scenario.tokens) >= 6 and len(scenario.join_tokens) == 2
    assert set(scenario.keys) == {"admin", "hub", "app", "stranger", "agent"}
    assert len(scenario.errors) >= 9
    log = scenario.hub.logs()  # the right file, at DEBUG
    assert "event=image_stored" in log and "level=DEBUG" in log


def test_no_bearer_token_reaches_the_hub_log(scenario: Scenario) -> None:
    secrets = {k: v for k, v in scenario.secrets().items() if "bearer token" in k}
    assert _leaks(scenario.hub.logs(), secrets) == []


def test_no_private_key_reaches_the_hub_log(scenario: Scenario) -> None:
    secrets = {k: v for k, v in scenario.secrets().items() if k.startswith("private key")}
    assert _leaks(scenario.hub.logs(), secrets) == []


def test_no_join_token_made_through_the_api_reaches_the_hub_log(scenario: Scenario) -> None:
    secrets = {k: v for k, v in scenario.secrets().items() if k.startswith("join token")}
    assert _leaks(_without_first_start_banner(scenario.hub.logs()), secrets) == []


def test_the_first_start_join_token_is_not_written_to_the_log(scenario: Scenario) -> None:
    """Off a terminal the first join token goes to a 0600 file, not to stdout."""
    assert not re.search(r"gujt1_[A-Za-z0-9_-]{16,}", scenario.hub.logs())
    token_file = scenario.hub.state_dir / "join-token"
    assert token_file.read_text().startswith("gujt1_")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_no_error_answer_repeats_a_secret(scenario: Scenario) -> None:
    secrets = scenario.secrets()
    for body in scenario.errors:
        assert _leaks(body, secrets) == [], body


def test_no_secret_is_stored_at_rest_in_the_state_dir(scenario: Scenario) -> None:
    secrets = scenario.secrets()
    own = {"admin.key": "private key admin", "hub.key": "private key hub"}
    for path in scenario.hub.state_dir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes().decode("latin-1")
        allowed = own.get(path.name, "\0")
        leaks = [name for name in _leaks(data, secrets) if not name.startswith(allowed)]
        assert leaks == [], f"{path.relative_to(scenario.hub.state_dir)}: {leaks}"


def test_key_files_are_0600_and_the_state_dir_0700(scenario: Scenario) -> None:
    state = scenario.hub.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    keys = sorted(state.rglob("*.key"))
    assert {p.name for p in keys} >= {"admin.key", "hub.key"}
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # the client config names the admin key's path, never its bytes
    assert _leaks((state / "admin-config.yaml").read_text(), scenario.secrets()) == []
