"""Log-in and tokens against a real hub: every way in without a valid token is a 401."""

from __future__ import annotations

import base64
import json
import signal
import time
from typing import Any

import httpx
import pytest

from controller.client import ApiError, Client, HubUnreachable
from specs.identity import LOGIN_PAYLOAD_TYPE, generate_key, login_body, public_key_str, sign
from specs.signing import sign_image
from tests.conftest import HubProcess
from tests.helpers import wait_for

PRIO = {"apiVersion": "gu/v1", "kind": "Priority", "metadata": {"name": "p"}, "spec": {"value": 1}}


def _signed_request(client: Client, hub_id: str | None = None) -> dict:
    chal = httpx.post(
        client.hub + "/v1/auth/challenge", json={"publicKey": client.public_key, "purpose": "api"}
    ).json()
    expiry = int(time.time()) + 60
    body = login_body(hub_id or chal["hubId"], chal["nonce"], "api", expiry)
    return {
        "publicKey": client.public_key,
        "nonce": chal["nonce"],
        "purpose": "api",
        "expiry": expiry,
        "signature": sign(client.key, LOGIN_PAYLOAD_TYPE, body),
    }


def test_healthz_is_open_and_everything_else_needs_a_token(hub: HubProcess) -> None:
    assert httpx.get(hub.url + "/healthz").status_code == 200
    for path in ("/v1/sessions", "/v1/watch", "/peers", "/v1/images", "/openapi.json"):
        resp = httpx.get(hub.url + path)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "token" in resp.json()["error"]["message"]


def test_a_valid_token_works(hub: HubProcess) -> None:
    token = hub.client().token()
    headers = {"Authorization": f"Bearer {token}"}
    resp = httpx.get(hub.url + "/v1/sessions", headers=headers)
    assert resp.status_code == 200 and resp.json()["items"] == []
    spec = httpx.get(hub.url + "/openapi.json", headers=headers).json()
    assert "/v1/apply" in spec["paths"] and "/peers/{nodeId}/inf/cpu" in spec["paths"]


def test_forged_token_is_refused(hub: HubProcess) -> None:
    token = hub.client().token()
    prefix, payload, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 3600
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in (f"{prefix}.{forged_payload}.{mac}", "garbage", token + "x"):
        resp = httpx.get(hub.url + "/v1/sessions", headers={"Authorization": f"Bearer {bad}"})
        assert resp.status_code == 401, bad


def test_expired_token_is_refused(hub: HubProcess) -> None:
    ctx_client = hub.client()
    short = Client(ctx_client.hub, ctx_client.key, token_ttl=1)
    token = short.login()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(hub.url + "/v1/sessions", headers=headers).status_code == 200
    time.sleep(1.3)
    resp = httpx.get(hub.url + "/v1/sessions", headers=headers)
    assert resp.status_code == 401
    assert "expired" in resp.json()["error"]["message"]


def test_replayed_nonce_is_refused(hub: HubProcess) -> None:
    client = hub.client()
    req = _signed_request(client)
    first = httpx.post(hub.url + "/v1/auth/token", json=req)
    assert first.status_code == 200
    again = httpx.post(hub.url + "/v1/auth/token", json=req)
    assert again.status_code == 401
    assert "already used" in again.json()["error"]["message"]


def test_signature_for_another_hub_is_refused(hub: HubProcess) -> None:
    req = _signed_request(hub.client(), hub_id="0x" + "ab" * 20)
    resp = httpx.post(hub.url + "/v1/auth/token", json=req)
    assert resp.status_code == 401


def test_unknown_key_cannot_log_in(hub: HubProcess) -> None:
    stranger = Client(hub.url, generate_key())
    try:
        stranger.login()
    except ApiError as exc:
        assert exc.status == 401
        assert "belongs to no admin" in exc.message
    else:
        raise AssertionError("a key the hub does not know logged in")


def test_tokens_and_keys_never_reach_the_log(hub: HubProcess) -> None:
    client = hub.client()
    token = client.token()
    client.apply([PRIO])
    httpx.get(hub.url + "/v1/sessions", headers={"Authorization": f"Bearer {token}x"})
    key_pem = (hub.state_dir / "admin.key").read_text().splitlines()[1]
    log = hub.logs()
    assert token not in log and token.split(".")[2] not in log
    assert key_pem not in log
    assert public_key_str(client.key)  # the public key may be logged; the private never


def test_apply_of_an_invalid_object_writes_nothing(hub: HubProcess) -> None:
    client = hub.client()
    bad = {**PRIO, "metadata": {"name": "q"}, "spec": {"value": "high"}}
    try:
        client.apply([PRIO, bad])
    except ApiError as exc:
        assert exc.status == 422
        assert exc.details[0]["index"] == 1 and exc.details[0]["path"] == "spec.value"
    else:
        raise AssertionError("invalid object accepted")
    assert client.list("Priority") == []


def test_system_kinds_cannot_be_applied(hub: HubProcess) -> None:
    obj = {"apiVersion": "gu/v1", "kind": "Placement", "metadata": {"name": "x"}, "spec": {}}
    try:
        hub.client().apply([obj])
    except ApiError as exc:
        assert exc.status == 422 and "written by the hub" in exc.details[0]["message"]
    else:
        raise AssertionError("system kind applied")


def test_stale_status_write_is_a_conflict(hub: HubProcess) -> None:
    client = hub.client()
    client.apply([PRIO])
    rv = client.get("Priority", "p")["metadata"]["resourceVersion"]
    client.apply([{**PRIO, "spec": {"value": 2}}])
    try:
        client.update_status("Priority", "p", {"observedGeneration": 1}, resource_version=rv)
    except ApiError as exc:
        assert exc.status == 409
    else:
        raise AssertionError("stale write accepted")


def reconciled(client: Client, kind: str, name: str) -> dict[str, Any]:
    """The object once the hub's reconciler has written its status for this generation."""
    return wait_for(
        lambda: (
            (o := client.get(kind, name))["status"].get("observedGeneration")
            == o["metadata"]["generation"]
            and o
        ),
        timeout=10,
        what=f"{kind}/{name} reconciled",
    )


def test_watch_streams_changes_after_a_resource_version(hub: HubProcess) -> None:
    client = hub.client()
    client.apply([PRIO])
    rv = reconciled(client, "Priority", "p")["metadata"]["resourceVersion"]
    client.apply([{**PRIO, "spec": {"value": 9}}])
    events = [e for e in client.watch(rv, kinds=["Priority"], timeout=1) if e["object"]]
    # the spec change first; status writes by the reconciler may follow it
    assert (events[0]["type"], events[0]["object"]["spec"]["value"]) == ("MODIFIED", 9)
    assert all(e["resourceVersion"] > rv for e in events)
    assert {e["object"]["metadata"]["generation"] for e in events} == {2}


def test_list_at_gives_the_rv_a_watch_continues_from(hub: HubProcess) -> None:
    client = hub.client()
    client.apply([PRIO])
    reconciled(client, "Priority", "p")  # its status write comes before the list
    items, rv = client.list_at("Priority")
    assert [o["metadata"]["name"] for o in items] == ["p"]
    assert rv >= items[0]["metadata"]["resourceVersion"]
    client.apply([{**PRIO, "spec": {"value": 7}}])
    events = [e for e in client.watch(rv, kinds=["Priority"], timeout=1) if e["object"]]
    assert events and all(e["resourceVersion"] > rv for e in events)
    assert events[0]["object"]["spec"]["value"] == 7


def test_a_watch_on_a_frozen_hub_gives_up_after_its_read_timeout(hub: HubProcess) -> None:
    client = hub.client()
    rv = client.list_at("Priority")[1]
    stream = client.watch(rv, read_timeout=1.0)
    assert hub.proc is not None
    hub.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent: no bookmark comes
    try:
        with pytest.raises(HubUnreachable, match="watch: lost the hub"):
            next(stream)
    finally:
        hub.proc.send_signal(signal.SIGCONT)
    assert client.list("Priority") == []  # the hub itself is fine again


def test_a_signature_that_cannot_verify_is_refused_at_upload(hub: HubProcess) -> None:
    """Whether a key is trusted is each policy's call, but a signature that does not verify
    even under the key it names, or is for another size, is refused when uploaded."""
    admin = hub.client()
    data = b"#!/bin/sh\necho signed\n"
    image = admin.call("POST", "/v1/images", content=data)["hash"]
    key = generate_key()
    good = sign_image(key, image, len(data))
    flipped = dict(good, signature=good["signature"][:10] + "AAAA" + good["signature"][14:])
    if flipped["signature"] == good["signature"]:
        flipped["signature"] = good["signature"][:10] + "BBBB" + good["signature"][14:]
    other_size = sign_image(key, image, len(data) + 1)
    url = f"/v1/images/{image}/signatures"
    for doc, words in (
        (flipped, "does not verify under the key it names"),
        (other_size, f"is for {len(data) + 1} bytes, but image {image} has {len(data)}"),
    ):
        with pytest.raises(ApiError) as err:
            admin.call("PUT", url, content=json.dumps(doc).encode())
        assert err.value.status == 422 and words in err.value.message, err.value.message
    assert admin.call("GET", url)["items"] == []  # nothing of them stored
    assert admin.call("PUT", url, content=json.dumps(good).encode())["signer"] == good["publicKey"]
    assert admin.call("GET", url)["items"] == [good]
