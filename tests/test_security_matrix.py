"""Route × principal matrix: every route of the hub, called as every kind of caller.

The table ``ROWS`` below is the reviewed answer to "who may call what": one
row per (route, object), one expected status per principal, in the order of
``PRINCIPALS``:

    none       no Authorization header
    garbage    ``Bearer garbage``
    expired    an admin token whose (1 s) lifetime is over
    other_app  app ``b``, touching app ``a``'s objects
    agent      an enrolled agent (its own Provider, its own Placements)
    app        app ``a`` (its own Session)
    admin      the hub's admin

The rules the table encodes (DESIGN.md, controller/authz.py): the admin may do
everything; an app may get/list/watch/apply/delete only Sessions whose
``spec.app`` is itself, push and list images and signatures, and read
Providers (``/peers``); an agent may read and write the status of its own
Provider and its Placements, heartbeat, upload the logs of its Placements and
pull the images they run. ``/healthz`` is open, and so are the log-in steps
(``/v1/auth/*``) and enrolment (the join token is the credential) by nature.
Every other call is refused: 401 without a valid token, 403 with a message
naming the missing permission, or 404 where the route hides what exists
(``/peers/{nodeId}`` of another agent's node).

Path parameters are real objects made by the ``world`` fixture. A Placement
exists only once the scheduler has placed a Session on the agent, so the
Placement rows (``needs="placement"``) need that Placement: the world waits
for it, and fails rather than skip a row when the scheduler did not place it.

A route served in ``/openapi.json`` that has no row here fails
``test_every_route_has_an_entry_in_the_table``: a new route cannot slip in
unreviewed.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.client import Client
from specs.identity import LOGIN_PAYLOAD_TYPE, generate_key, login_body, public_key_str, sign
from specs.signing import sign_image
from tests.conftest import HubProcess, make_hub
from tests.helpers import wait_for

PRINCIPALS = ("none", "garbage", "expired", "other_app", "agent", "app", "admin")
WITH_TOKEN = PRINCIPALS[3:]

IMAGE = b"#!/bin/sh\necho matrix\n"
STRAY_IMAGE = b"an image no placement runs\n"

HEARTBEAT: dict[str, Any] = {
    "inventory": {
        "os": {"name": "linux", "version": "6.1"},
        "cpu": {"architecture": "x86_64", "bit": [64], "cores": 4, "threads": 8},
        "memoryBytes": 8 << 30,
        "storageBytes": 100 << 30,
        "runtimes": ["native"],
    },
    "usage": {
        "cpuPercent": 1.0,
        "memoryAvailableBytes": 6 << 30,
        "storageFreeBytes": 50 << 30,
        "workloads": 0,
    },
}


# ------------------------------------------------------------ principals


def app_object(name: str, *keys: Ed25519PrivateKey) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {"publicKeys": [public_key_str(k) for k in keys]},
    }


def policy_object(name: str, apps: list[str], images: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"apps": apps, "allowImages": images},
    }


def session_object(
    name: str, app: str, image: str, nodes: list[str] | None = None
) -> dict[str, Any]:
    providers: dict[str, Any] = {"nodes": nodes} if nodes else {"count": 1}
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": app,
            "providers": providers,
            "workload": {"runtime": "native", "image": {"hash": image}, "command": ["./run"]},
        },
    }


def signed_challenge(
    url: str, key: Ed25519PrivateKey, purpose: str = "api", *, nonce_key: Any = None
) -> dict[str, Any]:
    """A log-in request: a fresh nonce (asked for ``nonce_key``'s public key), signed by ``key``."""
    asked_for = public_key_str(nonce_key or key)
    chal = httpx.post(
        url + "/v1/auth/challenge", json={"publicKey": asked_for, "purpose": purpose}, timeout=10
    ).json()
    expiry = int(time.time()) + 60
    body = login_body(chal["hubId"], chal["nonce"], purpose, expiry)
    return {
        "publicKey": public_key_str(key),
        "nonce": chal["nonce"],
        "purpose": purpose,
        "expiry": expiry,
        "signature": sign(key, LOGIN_PAYLOAD_TYPE, body),
    }


def enroll_request(url: str, key: Ed25519PrivateKey, join_token: str, name: str) -> dict[str, Any]:
    """The body of ``POST /v1/agents/enroll`` for ``key``, signed for purpose ``enroll``."""
    req = signed_challenge(url, key, "enroll")
    del req["purpose"]
    return {**req, "joinToken": join_token, "name": name, "labels": {"role": "matrix"}}


def enroll_agent(url: str, key: Ed25519PrivateKey, join_token: str, name: str) -> dict[str, Any]:
    """Enrol ``key`` as an agent by hand; returns ``{nodeId, token, expiresIn}``."""
    resp = httpx.post(
        url + "/v1/agents/enroll", json=enroll_request(url, key, join_token, name), timeout=10
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


# ------------------------------------------------------------------ world


@dataclass
class World:
    """The hub and the objects every row's path parameters name."""

    hub: HubProcess
    admin: Client
    app_key: Ed25519PrivateKey
    join_token: str
    image: str
    stray_image: str
    agent_node: str
    other_node: str
    doomed_nodes: dict[str, str]
    placement: str
    blob: str
    tokens: dict[str, str | None] = field(default_factory=dict)
    spare_agent_key: Ed25519PrivateKey = field(default_factory=generate_key)
    signer: Ed25519PrivateKey = field(default_factory=generate_key)

    def names(self, principal: str) -> dict[str, str]:
        """Path parameters; ``doomed*`` are objects of the principal's own to delete."""
        return {
            "session": "a-session",
            "doomed": f"doomed-{principal.replace('_', '-')}",
            "doomed_node": self.doomed_nodes[principal],
            "own_node": self.agent_node,
            "other_node": self.other_node,
            "image": self.image,
            "stray_image": self.stray_image,
            "placement": self.placement,
            "missing_placement": "no-such-placement",
            "blob": self.blob,
        }

    def headers(self, principal: str) -> dict[str, str]:
        token = self.tokens[principal]
        return {"Authorization": f"Bearer {token}"} if token else {}


def _heartbeat_forever(url: str, token: str, stop: threading.Event) -> None:
    """Keep the agent's Provider Ready (and its Placements alive) while the module runs."""
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):  # the hub is stopping
                http.post(
                    "/v1/agents/heartbeat",
                    json=HEARTBEAT,
                    headers={"Authorization": f"Bearer {token}"},
                )
            stop.wait(2.0)


def placement_on(admin: Client, node: str, session: str) -> str | None:
    for p in admin.list("Placement"):
        if p["spec"].get("node") == node and p["spec"].get("session") == session:
            return str(p["metadata"]["name"])
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    hub = make_hub(Path(tmp_path_factory.mktemp("matrix")))
    hub.start()
    stop = threading.Event()
    beat: threading.Thread | None = None
    try:
        admin = hub.client()
        app_key, other_key = generate_key(), generate_key()
        admin.apply([app_object("a", app_key), app_object("b", other_key)])
        image = admin.call("POST", "/v1/images", content=IMAGE)["hash"]
        stray = admin.call("POST", "/v1/images", content=STRAY_IMAGE)["hash"]

        join = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        agent_key = generate_key()
        agent_node = enroll_agent(hub.url, agent_key, join, "matrix-agent")["nodeId"]
        other_node = enroll_agent(hub.url, generate_key(), join, "other-agent")["nodeId"]
        doomed_nodes = {
            p: enroll_agent(hub.url, generate_key(), join, f"doomed-{p}")["nodeId"]
            for p in PRINCIPALS
        }
        agent = Client(hub.url, agent_key)
        beat = threading.Thread(
            target=_heartbeat_forever, args=(hub.url, agent.token(), stop), daemon=True
        )
        beat.start()

        # Sessions last, once everything else has settled (the world is easier to read so)
        admin.apply([policy_object("a-may-run", ["a"], [image]), *_doomed_objects()])
        wait_for(lambda: settled(admin), timeout=20, what="objects reconciled")
        admin.apply(
            [
                session_object("a-session", "a", image, [agent_node]),
                # pinned to a node that never beats: they take none of the agent's capacity
                # (unpinned, a slow hub could fill the agent with them before a-session)
                *[
                    session_object(f"doomed-{p.replace('_', '-')}", "a", image, [other_node])
                    for p in PRINCIPALS
                ],
            ]
        )
        # a Placement exists once the scheduler places a-session on the agent
        try:
            placement = wait_for(
                lambda: placement_on(admin, agent_node, "a-session"), timeout=30, what="placement"
            )
        except AssertionError as exc:  # say why: the Session, the Provider and the hub's log
            raise AssertionError(
                f"{exc}\nSession status: {json.dumps(admin.get('Session', 'a-session')['status'])}"
                f"\nProvider status: {json.dumps(admin.get('Provider', agent_node)['status'])}"
                f"\nhub log (tail):\n{hub.logs()[-6000:]}"
            ) from None

        blob = Client(hub.url, app_key).call("POST", "/v1/blobs", content=b"a's data\n")["hash"]
        expired = Client(hub.url, admin.key, token_ttl=1).login()
        expired_at = time.monotonic() + 1.2
        w = World(
            hub=hub,
            admin=admin,
            app_key=app_key,
            join_token=join,
            image=image,
            stray_image=stray,
            agent_node=agent_node,
            other_node=other_node,
            doomed_nodes=doomed_nodes,
            placement=placement,
            blob=blob,
        )
        w.tokens = {
            "none": None,
            "garbage": "garbage",
            "expired": expired,
            "other_app": Client(hub.url, other_key).token(),
            "agent": agent.token(),
            "app": Client(hub.url, app_key).token(),
            "admin": admin.token(),
        }
        time.sleep(max(0.0, expired_at - time.monotonic()))  # its one second runs out
        yield w
    finally:
        stop.set()
        if beat is not None:
            beat.join(timeout=5)
        hub.stop()


def settled(admin: Client) -> bool:
    """Has the hub reconciled every object (each status has seen its generation)?"""
    kinds = ("App", "ImagePolicy", "Priority", "VirtualNetwork", "Provider")
    return all(
        o["status"].get("observedGeneration") == o["metadata"]["generation"]
        for kind in kinds
        for o in admin.list(kind)
    )


def _doomed_objects() -> list[dict[str, Any]]:
    """One object of each deletable user kind but Session per principal, to delete."""
    out: list[dict[str, Any]] = []
    for i, p in enumerate(PRINCIPALS):
        name = f"doomed-{p.replace('_', '-')}"
        out += [
            app_object(name),
            policy_object(name, ["nobody"], []),
            {
                "apiVersion": "gu/v1",
                "kind": "Priority",
                "metadata": {"name": name},
                "spec": {"value": 100 + i},
            },
            {
                "apiVersion": "gu/v1",
                "kind": "VirtualNetwork",
                "metadata": {"name": name},
                "spec": {"cidr": f"10.77.{i}.0/24"},
            },
        ]
    return out


# ------------------------------------------------------------------ bodies

Body = Callable[[World, str], dict[str, Any]]


def challenge_body(w: World, p: str) -> dict[str, Any]:
    return {"json": {"publicKey": public_key_str(w.app_key), "purpose": "api"}}


def token_body(w: World, p: str) -> dict[str, Any]:
    return {"json": signed_challenge(w.hub.url, w.app_key)}


def enroll_body(w: World, p: str) -> dict[str, Any]:
    return {"json": enroll_request(w.hub.url, w.spare_agent_key, w.join_token, "spare")}


def heartbeat_body(w: World, p: str) -> dict[str, Any]:
    return {"json": HEARTBEAT}


def jointoken_body(w: World, p: str) -> dict[str, Any]:
    return {"json": {"ttl": 600}}


def labels_body(w: World, p: str) -> dict[str, Any]:
    return {"json": {"labels": {"zone": "matrix"}}}


def logs_body(w: World, p: str) -> dict[str, Any]:
    return {"content": b"hello from the workload\n"}


def relay_body(w: World, p: str) -> dict[str, Any]:
    return {"json": {"to": w.other_node, "datagrams": []}}


def resume_body(w: World, p: str) -> dict[str, Any]:
    return {"json": {"suspend": False}}  # a-session is not suspended: changes nothing


def image_body(w: World, p: str) -> dict[str, Any]:
    return {"content": IMAGE}


def signature_body(w: World, p: str) -> dict[str, Any]:
    return {"content": json.dumps(sign_image(w.signer, w.image, len(IMAGE))).encode()}


def current_status(kind: str, name_key: str) -> Body:
    """A status write that changes nothing: the object's status as it is now."""

    def body(w: World, p: str) -> dict[str, Any]:
        name = w.names(p)[name_key]
        try:
            status = w.admin.get(kind, name)["status"]
        except Exception:  # the object is a made-up one: any valid status will do
            status = {}
        return {"json": {"status": status}}

    return body


def apply_body(make: Callable[[World], dict[str, Any]]) -> Body:
    return lambda w, p: {"json": {"objects": [make(w)]}}


apply_session = apply_body(lambda w: session_object("a-session", "a", w.image, [w.agent_node]))
# Escalations an app or an agent might try: grant itself images, add a key, make a class.
apply_self_grant = apply_body(lambda w: policy_object("grant-a", ["a"], [w.stray_image]))
apply_new_app = apply_body(lambda w: app_object("c", generate_key()))
apply_priority = apply_body(
    lambda w: {
        "apiVersion": "gu/v1",
        "kind": "Priority",
        "metadata": {"name": "matrix"},
        "spec": {"value": 5},
    }
)


# ------------------------------------------------------------------- table


@dataclass(frozen=True)
class Row:
    method: str
    route: str
    """The path template as the OpenAPI document names it."""
    path: str
    """The concrete path; ``{names}`` come from ``World.names(principal)``."""
    expect: str
    """One status per principal, in the order of PRINCIPALS."""
    body: Body | None = None
    needs: str | None = None
    """"placement": the row's path names the world's Placement."""

    def status(self, principal: str) -> int:
        return int(self.expect.split()[PRINCIPALS.index(principal)])

    @property
    def id(self) -> str:
        tail = f" [{self.needs}]" if self.needs else ""
        return f"{self.method} {self.path}{tail}"


#            none gar exp oth agt app adm
OPEN = "200 200 200 200 200 200 200"
SIGNED_IN = "401 401 401 200 200 200 200"
ADMIN_ONLY = "401 401 401 403 403 403 200"
APPS_AND_ADMIN = "401 401 401 200 403 200 200"  # images: every app, not agents
OWN_SESSION = "401 401 401 403 403 200 200"  # app a's Session: a and the admin
# reading or deleting app a's Session: another app learns nothing (404, like a missing
# one); an agent may not touch Sessions at all (403, checked before any lookup)
HIDDEN_SESSION = "401 401 401 404 403 200 200"
AGENT_AND_ADMIN = "401 401 401 403 200 403 200"  # the agent's own Provider / Placement
UNKNOWN = "401 401 401 404 404 404 404"

OBJS = "/v1/{kind}"
ON = "/v1/{kind}/{name}"
ONS = "/v1/{kind}/{name}/status"
ONE = "/v1/{kind}/{name}/events"
A = "/v1/apply"
W = "/v1/watch"
WT = "timeout=0.3"

# Row(method, OpenAPI route, concrete path, statuses for: none garbage expired other_app agent
# app admin, [body], [needs])
ROWS: tuple[Row, ...] = (
    # open by nature
    Row("GET", "/healthz", "/healthz", OPEN),
    Row("POST", "/v1/auth/challenge", "/v1/auth/challenge", OPEN, challenge_body),
    Row("POST", "/v1/auth/token", "/v1/auth/token", OPEN, token_body),
    Row("POST", "/v1/agents/enroll", "/v1/agents/enroll", OPEN, enroll_body),
    # any valid token
    Row("GET", "/v1/whoami", "/v1/whoami", SIGNED_IN),
    Row("GET", "/openapi.json", "/openapi.json", SIGNED_IN),
    # agents
    Row("POST", "/v1/jointokens", "/v1/jointokens", ADMIN_ONLY, jointoken_body),
    Row("GET", "/v1/jointokens", "/v1/jointokens", ADMIN_ONLY),
    Row("DELETE", "/v1/jointokens/{token_id}", "/v1/jointokens/000000000000",
        "401 401 401 403 403 403 404"),
    # trusted labels: the admin's alone (an agent may not relabel itself)
    Row("PUT", "/v1/providers/{name}/labels", "/v1/providers/{own_node}/labels", ADMIN_ONLY,
        labels_body),
    # the admin has no Provider to heartbeat for: 403 like everyone who is not an agent
    Row("POST", "/v1/agents/heartbeat", "/v1/agents/heartbeat", "401 401 401 403 200 403 403",
        heartbeat_body),
    Row("PUT", "/v1/placements/{name}/logs", "/v1/placements/{placement}/logs", AGENT_AND_ADMIN,
        logs_body, "placement"),
    # permission on the kind first: an app cannot probe which placements exist
    Row("PUT", "/v1/placements/{name}/logs", "/v1/placements/{missing_placement}/logs",
        "401 401 401 403 404 403 404", logs_body),
    Row("GET", "/v1/sessions/{name}/logs", "/v1/sessions/{session}/logs", HIDDEN_SESSION,
        needs="placement"),
    # Provider Information API: every app reads it; an agent sees only its own node
    Row("GET", "/peers", "/peers", SIGNED_IN),
    Row("GET", "/peers/{nodeId}", "/peers/{own_node}", SIGNED_IN),
    Row("GET", "/peers/{nodeId}", "/peers/{other_node}", "401 401 401 200 404 200 200"),
    Row("GET", "/peers/{nodeId}/inf/storage", "/peers/{own_node}/inf/storage", SIGNED_IN),
    Row("GET", "/peers/{nodeId}/inf/cpu", "/peers/{own_node}/inf/cpu", SIGNED_IN),
    Row("GET", "/peers/{nodeId}/inf/mem", "/peers/{own_node}/inf/mem", SIGNED_IN),
    Row("GET", "/peers/{nodeId}/inf/os", "/peers/{own_node}/inf/os", SIGNED_IN),
    # the other agent has sent no heartbeat: no inventory to show anyone
    Row("GET", "/peers/{nodeId}/inf/os", "/peers/{other_node}/inf/os", UNKNOWN),
    # the web UI: a log-in link and its provider rows for apps and the admin (an agent has
    # no UI); another app has no ImagePolicy here, so no provider it may use
    Row("POST", "/v1/ui/links", "/v1/ui/links", APPS_AND_ADMIN),
    Row("GET", "/v1/ui/providers", "/v1/ui/providers", APPS_AND_ADMIN),
    Row("GET", "/v1/ui/providers/{nodeId}", "/v1/ui/providers/{own_node}",
        "401 401 401 404 403 200 200"),
    # metrics: the admin (or the scrape token, tests/test_ui.py); a new scrape token: admin
    Row("GET", "/metrics", "/metrics", ADMIN_ONLY),
    Row("POST", "/v1/metrics/token", "/v1/metrics/token", ADMIN_ONLY),
    # suspend/resume: as applying the Session would
    Row("PUT", "/v1/sessions/{name}/suspend", "/v1/sessions/{session}/suspend", HIDDEN_SESSION,
        resume_body),
    # blobs: an app reads its own (another's: 404 as if missing); an agent only its
    # placements' inputs (a-session has none); outputs only where a placement declares them
    Row("POST", "/v1/blobs", "/v1/blobs", APPS_AND_ADMIN, image_body),
    Row("GET", "/v1/blobs", "/v1/blobs", APPS_AND_ADMIN),
    Row("GET", "/v1/blobs/{hash}", "/v1/blobs/{blob}", "401 401 401 404 403 200 200"),
    Row("PUT", "/v1/blobs/{hash}/pin", "/v1/blobs/{blob}/pin", "401 401 401 404 403 200 200"),
    Row("PUT", "/v1/placements/{name}/outputs", "/v1/placements/{placement}/outputs?files=1",
        "401 401 401 403 422 403 422", logs_body, "placement"),
    Row("GET", "/v1/sessions/{name}/outputs", "/v1/sessions/{session}/outputs", HIDDEN_SESSION),
    # virtual networks: a network's keys and members only to an agent hosting a member
    # (this one hosts none) and the admin; its key rotation: the admin's
    Row("GET", "/v1/vnet/{name}/membership", "/v1/vnet/doomed-none/membership",
        "401 401 401 403 403 403 200"),
    Row("POST", "/v1/vnet/{name}/rotate-key", "/v1/vnet/doomed-none/rotate-key", ADMIN_ONLY),
    # the relay: agents only (what they send is checked per datagram: none here)
    Row("POST", "/v1/vnet/relay", "/v1/vnet/relay", "401 401 401 403 200 403 403", relay_body),
    Row("GET", "/v1/vnet/relay", "/v1/vnet/relay?timeout=0", "401 401 401 403 200 403 403"),
    # images
    Row("POST", "/v1/images", "/v1/images", APPS_AND_ADMIN, image_body),
    Row("GET", "/v1/images", "/v1/images", APPS_AND_ADMIN),
    Row("PUT", "/v1/images/{hash}/signatures", "/v1/images/{image}/signatures", APPS_AND_ADMIN,
        signature_body),
    Row("GET", "/v1/images/{hash}/signatures", "/v1/images/{stray_image}/signatures",
        APPS_AND_ADMIN),
    Row("GET", "/v1/images/{hash}/signatures", "/v1/images/{image}/signatures", SIGNED_IN,
        needs="placement"),
    Row("GET", "/v1/images/{hash}", "/v1/images/{stray_image}", APPS_AND_ADMIN),
    Row("GET", "/v1/images/{hash}", "/v1/images/{image}", SIGNED_IN, needs="placement"),
    # watch: without a kind everyone gets a stream filtered to what it may see
    Row("GET", W, f"{W}?{WT}", SIGNED_IN),
    Row("GET", W, f"{W}?kind=Session&{WT}", "401 401 401 200 403 200 200"),
    Row("GET", W, f"{W}?kind=Provider&{WT}", SIGNED_IN),
    Row("GET", W, f"{W}?kind=Placement&{WT}", AGENT_AND_ADMIN),
    Row("GET", W, f"{W}?kind=Priority&{WT}", ADMIN_ONLY),
    Row("GET", W, f"{W}?kind=App&{WT}", ADMIN_ONLY),
    # lists (filtered to what the caller may see)
    Row("GET", OBJS, "/v1/sessions", "401 401 401 200 403 200 200"),
    Row("GET", OBJS, "/v1/providers", SIGNED_IN),
    Row("GET", OBJS, "/v1/placements", AGENT_AND_ADMIN),
    Row("GET", OBJS, "/v1/apps", ADMIN_ONLY),
    Row("GET", OBJS, "/v1/imagepolicies", ADMIN_ONLY),
    Row("GET", OBJS, "/v1/priorities", ADMIN_ONLY),
    Row("GET", OBJS, "/v1/virtualnetworks", ADMIN_ONLY),
    # one object
    Row("GET", ON, "/v1/sessions/{session}", HIDDEN_SESSION),
    Row("GET", ON, "/v1/providers/{own_node}", SIGNED_IN),
    Row("GET", ON, "/v1/providers/{other_node}", "401 401 401 200 404 200 200"),
    Row("GET", ON, "/v1/placements/{placement}", AGENT_AND_ADMIN, needs="placement"),
    Row("GET", ON, "/v1/apps/a", ADMIN_ONLY),
    Row("GET", ON, "/v1/imagepolicies/a-may-run", ADMIN_ONLY),
    Row("GET", ON, "/v1/priorities/{doomed}", ADMIN_ONLY),
    Row("GET", ON, "/v1/virtualnetworks/{doomed}", ADMIN_ONLY),
    Row("GET", ON, "/v1/sessions/no-such-session", "401 401 401 404 403 404 404"),
    # events of one object: the same rule as reading it
    Row("GET", ONE, "/v1/sessions/{session}/events", HIDDEN_SESSION),
    Row("GET", ONE, "/v1/providers/{own_node}/events", SIGNED_IN),
    Row("GET", ONE, "/v1/providers/{other_node}/events", "401 401 401 200 404 200 200"),
    Row("GET", ONE, "/v1/placements/{placement}/events", AGENT_AND_ADMIN, needs="placement"),
    Row("GET", ONE, "/v1/apps/a/events", ADMIN_ONLY),
    Row("GET", ONE, "/v1/imagepolicies/a-may-run/events", ADMIN_ONLY),
    # status writes: the admin (controllers), and an agent for its own Placements; never a
    # Provider's (the hub writes it from heartbeats: no agent declares itself Ready)
    Row("PUT", ONS, "/v1/sessions/{session}/status", ADMIN_ONLY,
        current_status("Session", "session")),
    Row("PUT", ONS, "/v1/providers/{own_node}/status", ADMIN_ONLY,
        current_status("Provider", "own_node")),
    Row("PUT", ONS, "/v1/providers/{other_node}/status", ADMIN_ONLY,
        current_status("Provider", "other_node")),
    Row("PUT", ONS, "/v1/placements/{placement}/status", AGENT_AND_ADMIN,
        current_status("Placement", "placement"), "placement"),
    Row("PUT", ONS, "/v1/priorities/{doomed}/status", ADMIN_ONLY,
        current_status("Priority", "doomed")),
    # deletes: each principal aims at an object of its own (see World.names)
    Row("DELETE", ON, "/v1/sessions/{doomed}", HIDDEN_SESSION),
    Row("DELETE", ON, "/v1/providers/{doomed_node}", ADMIN_ONLY),
    Row("DELETE", ON, "/v1/apps/{doomed}", ADMIN_ONLY),
    Row("DELETE", ON, "/v1/imagepolicies/{doomed}", ADMIN_ONLY),
    Row("DELETE", ON, "/v1/priorities/{doomed}", ADMIN_ONLY),
    Row("DELETE", ON, "/v1/virtualnetworks/{doomed}", ADMIN_ONLY),
    # the agent may not delete its own Placement (only the hub ends one)
    Row("DELETE", ON, "/v1/placements/{placement}", "401 401 401 403 403 403 404",
        needs="placement"),
    # apply: an app only its own Sessions; no one but the admin anything else
    Row("POST", A, A, OWN_SESSION, apply_session),
    Row("POST", A, A, ADMIN_ONLY, apply_self_grant),
    Row("POST", A, A, ADMIN_ONLY, apply_new_app),
    Row("POST", A, A, ADMIN_ONLY, apply_priority),
)  # fmt: skip


def _row_path(row: Row, w: World, principal: str) -> str:
    path = row.path.format(**w.names(principal))
    if row.method == "DELETE" and "{placement}" in row.path and principal == "admin":
        # the admin could delete the one Placement the other rows use: aim it at none
        path = "/v1/placements/no-such-placement"
    return path


# ------------------------------------------------------------------- tests


def openapi_routes(w: World) -> set[tuple[str, str]]:
    doc = w.admin.call("GET", "/openapi.json")
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}


def test_every_route_has_an_entry_in_the_table(world: World) -> None:
    served = openapi_routes(world)
    table = {(r.method, r.route) for r in ROWS}
    missing = sorted(served - table)
    assert not missing, f"routes with no entry in the security matrix: {missing}"
    stale = sorted(table - served - {("GET", "/openapi.json")})
    assert not stale, f"matrix rows for routes the hub no longer serves: {stale}"


def test_every_row_has_one_status_per_principal() -> None:
    for row in ROWS:
        assert len(row.expect.split()) == len(PRINCIPALS), row.id


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_route_answers_each_principal_as_the_table_says(
    world: World, row: Row, principal: str
) -> None:
    if row.needs == "placement":
        assert world.placement, "the world's Placement is gone"
    path = _row_path(row, world, principal)
    kwargs = row.body(world, principal) if row.body else {}
    resp = httpx.request(
        row.method, world.hub.url + path, headers=world.headers(principal), timeout=15, **kwargs
    )
    want = row.status(principal)
    assert resp.status_code == want, (
        f"{row.method} {path} as {principal}: want {want}, got {resp.status_code}: {resp.text[:300]}"
    )
    if want == 401:
        assert resp.headers.get("www-authenticate") == "Bearer"
        assert "token" in resp.json()["error"]["message"]
    if want == 403:
        message = resp.json()["error"]["message"]
        assert re.search(r"lacks permission to \w+", message), message


def test_an_app_lists_only_its_own_sessions(world: World) -> None:
    def sessions(principal: str) -> set[str]:
        resp = httpx.get(world.hub.url + "/v1/sessions", headers=world.headers(principal))
        return {o["spec"]["app"] for o in resp.json()["items"]}

    assert sessions("app") == {"a"}
    assert sessions("other_app") == set()


def test_an_agent_sees_only_its_own_provider(world: World) -> None:
    headers = world.headers("agent")
    listed = httpx.get(world.hub.url + "/v1/providers", headers=headers).json()["items"]
    assert [o["metadata"]["name"] for o in listed] == [world.agent_node]
    peers = httpx.get(world.hub.url + "/peers", headers=headers).json()
    assert [p["nodeId"] for p in peers] == [world.agent_node]


def test_a_watch_without_kind_shows_another_app_none_of_a_s_sessions(world: World) -> None:
    resp = httpx.get(
        world.hub.url + "/v1/watch?timeout=0.5", headers=world.headers("other_app"), timeout=10
    )
    events = [json.loads(line) for line in resp.text.splitlines() if line]
    kinds = {e["object"]["kind"] for e in events if e["object"]}
    assert kinds <= {"Provider"}, kinds
    assert events, "the watch replays the Providers an app may read"


# ------------------------------------------------------- log-in edge cases


def _token_works(url: str, token: str) -> bool:
    resp = httpx.get(url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code in (200, 401), resp.text
    return resp.status_code == 200


def test_a_key_removed_from_its_app_can_no_longer_log_in(hub: HubProcess) -> None:
    admin, key = hub.client(), generate_key()
    admin.apply([app_object("c", key)])
    Client(hub.url, key).login()
    admin.apply([app_object("c", generate_key())])  # the key is rotated out
    resp = httpx.post(hub.url + "/v1/auth/token", json=signed_challenge(hub.url, key), timeout=10)
    assert resp.status_code == 401
    assert "belongs to no admin, App or enrolled agent" in resp.json()["error"]["message"]


def test_a_token_of_a_removed_key_dies_within_one_token_lifetime(hub: HubProcess) -> None:
    admin, key = hub.client(), generate_key()
    admin.apply([app_object("c", key)])
    ttl = 2
    token = Client(hub.url, key, token_ttl=ttl).login()
    issued = time.monotonic()
    assert _token_works(hub.url, token)
    admin.apply([app_object("c", generate_key())])
    wait_for(lambda: not _token_works(hub.url, token), timeout=ttl + 1, what="the token to die")
    assert time.monotonic() - issued <= ttl + 1


def test_a_nonce_issued_for_one_key_is_refused_with_another(hub: HubProcess) -> None:
    admin, mallory = hub.client(), generate_key()
    admin.apply([app_object("m", mallory)])
    # mallory (a known app) signs a nonce the hub issued to the admin's key
    stolen = signed_challenge(hub.url, mallory, nonce_key=admin.key)
    resp = httpx.post(hub.url + "/v1/auth/token", json=stolen, timeout=10)
    assert resp.status_code == 401
    assert "issued for another key" in resp.json()["error"]["message"]


def test_a_nonce_signed_by_another_key_is_refused(hub: HubProcess) -> None:
    admin, mallory = hub.client(), generate_key()
    forged = signed_challenge(hub.url, mallory, nonce_key=admin.key)
    forged["publicKey"] = public_key_str(admin.key)  # claim to be the admin
    resp = httpx.post(hub.url + "/v1/auth/token", json=forged, timeout=10)
    assert resp.status_code == 401
    assert "signature does not verify" in resp.json()["error"]["message"]


def test_an_enroll_nonce_cannot_buy_an_api_token(hub: HubProcess) -> None:
    admin = hub.client()
    req = signed_challenge(hub.url, admin.key, "enroll")
    # signed as "api" over a nonce issued for "enroll"
    body = login_body(admin.call("GET", "/healthz")["hubId"], req["nonce"], "api", req["expiry"])
    as_api = {**req, "purpose": "api", "signature": sign(admin.key, LOGIN_PAYLOAD_TYPE, body)}
    resp = httpx.post(hub.url + "/v1/auth/token", json=as_api, timeout=10)
    assert resp.status_code == 401
    assert "another key or purpose" in resp.json()["error"]["message"]


def test_an_enroll_challenge_is_not_a_log_in(hub: HubProcess) -> None:
    admin = hub.client()
    as_enroll = signed_challenge(hub.url, admin.key, "enroll")  # purpose "enroll" throughout
    resp = httpx.post(hub.url + "/v1/auth/token", json=as_enroll, timeout=10)
    assert resp.status_code == 401
    assert "purpose" in resp.json()["error"]["message"]
