"""Provider trust against a real hub: join tokens bind labels and are spent or revoked;
an agent cannot write its Provider's status, claim an impossible inventory, or name a
time; policies cannot select on labels agents give themselves.

Agents are enrolled by hand (the signed challenge the agent makes), so each test sees
exactly the requests it makes.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from controller.client import ApiError, Client
from specs.identity import generate_key
from tests.conftest import HubProcess
from tests.helpers import run_gu, wait_for
from tests.test_security_matrix import HEARTBEAT, app_object, enroll_request


def enroll(
    hub: HubProcess, token: str, name: str, labels: dict[str, str] | None = None
) -> httpx.Response:
    body = enroll_request(hub.url, generate_key(), token, name)
    if labels:
        body["labels"] = labels
    return httpx.post(hub.url + "/v1/agents/enroll", json=body, timeout=10)


def new_token(admin: Client, **body: Any) -> dict[str, Any]:
    return dict(admin.call("POST", "/v1/jointokens", json={"ttl": 600, **body}))


def test_a_token_binds_trusted_labels_and_what_an_agent_says_of_itself_stays_apart(
    hub: HubProcess,
) -> None:
    admin = hub.client()
    made = new_token(admin, labels={"pool": "a"})
    got = enroll(hub, made["token"], "labelled", labels={"pool": "b", "gpu": "yes"})
    assert got.status_code == 200, got.text
    prov = admin.get("Provider", got.json()["nodeId"])
    assert prov["metadata"]["labels"] == {"pool": "a"}  # the admin's, from the token
    assert prov["spec"]["labels"] == {"pool": "b", "gpu": "yes"}  # the agent's claim

    # relabelled by the admin; a re-enrolment keeps the admin's labels
    relabel = run_gu("label", "provider", got.json()["nodeId"], "zone=lab", "pool-", env=hub.env)
    assert relabel.returncode == 0, relabel.stderr
    assert admin.get("Provider", got.json()["nodeId"])["metadata"]["labels"] == {"zone": "lab"}


def test_a_policy_may_not_select_on_labels_agents_give_themselves(hub: HubProcess) -> None:
    admin = hub.client()
    with pytest.raises(ApiError) as refused:
        admin.apply(
            [
                {
                    "apiVersion": "gu/v1",
                    "kind": "ImagePolicy",
                    "metadata": {"name": "trusting"},
                    "spec": {
                        "apps": ["a"],
                        "allowProviders": {"selector": {"self.pool": "a"}},
                        "allowImages": ["sha3-256:" + "ab" * 32],
                    },
                }
            ]
        )
    assert refused.value.status == 422
    said = str(refused.value.details)
    assert "self.pool" in said and "gu label provider" in said, said
    assert admin.list("ImagePolicy") == []


def test_a_token_with_uses_enrols_that_many_and_a_revoked_one_none(hub: HubProcess) -> None:
    admin = hub.client()
    once = new_token(admin, uses=1)
    assert enroll(hub, once["token"], "first").status_code == 200
    second = enroll(hub, once["token"], "second")
    assert second.status_code == 401 and "used up" in second.text

    kept = new_token(admin, labels={"pool": "x"}, uses=5)
    listed = run_gu("hub", "token", "ls", env=hub.env)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith(kept["id"]))
    assert "pool=x" in line and " 5 " in f" {line} "
    assert kept["token"] not in listed.stdout and once["id"] not in listed.stdout  # spent: gone
    revoked = run_gu("hub", "token", "revoke", kept["id"], env=hub.env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    after = enroll(hub, kept["token"], "late")
    assert after.status_code == 401 and "revoked" in after.text
    again = run_gu("hub", "token", "revoke", kept["id"], env=hub.env)
    assert again.returncode != 0 and "gu hub token ls" in again.stderr


def test_an_agent_cannot_write_its_providers_status_nor_claim_the_impossible(
    hub: HubProcess,
) -> None:
    admin = hub.client()
    got = enroll(hub, new_token(admin)["token"], "liar")
    node, token = got.json()["nodeId"], got.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    beat = httpx.post(hub.url + "/v1/agents/heartbeat", json=HEARTBEAT, headers=headers, timeout=10)
    assert beat.status_code == 200, beat.text
    ready = wait_for(
        lambda: any(p["ready"] for p in admin.call("GET", "/peers") if p["nodeId"] == node),
        timeout=10,
        what="the provider Ready",
    )
    assert ready

    # its own status: refused, whatever it says (Ready forever, a far-future beat)
    current = admin.get("Provider", node)
    forged = {**current["status"], "lastHeartbeat": "2999-01-01T00:00:00Z"}
    put = httpx.put(
        f"{hub.url}/v1/providers/{node}/status",
        json={"status": forged, "resourceVersion": current["metadata"]["resourceVersion"]},
        headers=headers,
        timeout=10,
    )
    assert put.status_code == 403 and "lacks permission" in put.text
    assert admin.get("Provider", node)["status"].get("lastHeartbeat") != "2999-01-01T00:00:00Z"

    # 4,096 cores on a 2-core claim of threads: refused, with an event saying why
    lie = copy.deepcopy(HEARTBEAT)
    lie["inventory"]["cpu"]["cores"] = 4096
    lie["inventory"]["cpu"]["threads"] = 4096
    refused = httpx.post(hub.url + "/v1/agents/heartbeat", json=lie, headers=headers, timeout=10)
    assert refused.status_code == 422 and "cpu.cores 4096" in refused.text, refused.text
    events = admin.call("GET", f"/v1/providers/{node}/events")["items"]
    assert events[-1]["reason"] == "InventoryRefused" and "cpu.cores 4096" in events[-1]["message"]
    assert admin.get("Provider", node)["status"]["inventory"]["cpu"]["cores"] != 4096

    # the time is the hub's: a time the agent sends is ignored, and silence makes it NotReady
    future = {**HEARTBEAT, "period": 0.5, "lastHeartbeat": "2999-01-01T00:00:00Z"}
    sent = httpx.post(hub.url + "/v1/agents/heartbeat", json=future, headers=headers, timeout=10)
    assert sent.status_code in (200, 422), sent.text
    (peer,) = [p for p in admin.call("GET", "/peers") if p["nodeId"] == node]
    assert not peer["lastSeen"].startswith("2999")
    wait_for(
        lambda: not any(p["ready"] for p in admin.call("GET", "/peers") if p["nodeId"] == node),
        timeout=15,
        what="the silent provider NotReady",
    )


def test_a_removed_app_key_or_a_deleted_provider_loses_its_token_at_once(
    hub: HubProcess,
) -> None:
    admin = hub.client()
    key, other = generate_key(), generate_key()
    admin.apply([app_object("rev", key, other)])
    app = Client(hub.url, key)
    token = app.token()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(hub.url + "/v1/whoami", headers=headers, timeout=10).status_code == 200

    admin.apply([app_object("rev", other)])  # the key is taken off the App
    gone = httpx.get(hub.url + "/v1/whoami", headers=headers, timeout=10)
    assert gone.status_code == 401 and "revoked" in gone.text, gone.text
    hub.stop()
    hub.start()  # the token is still signed by this hub: the revocation outlives a restart
    assert httpx.get(hub.url + "/v1/whoami", headers=headers, timeout=10).status_code == 401
    kept = Client(hub.url, other)
    assert kept.call("GET", "/v1/whoami")["name"] == "rev"  # the other key works on

    admin = hub.client()
    got = enroll(hub, new_token(admin)["token"], "doomed")
    node, agent_token = got.json()["nodeId"], got.json()["token"]
    agent = {"Authorization": f"Bearer {agent_token}"}
    assert httpx.get(hub.url + "/v1/whoami", headers=agent, timeout=10).status_code == 200
    admin.delete("Provider", node)
    refused = httpx.get(hub.url + "/v1/whoami", headers=agent, timeout=10)
    assert refused.status_code == 401 and "revoked" in refused.text, refused.text
