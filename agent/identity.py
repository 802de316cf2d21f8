"""The agent's identity: state dir, Ed25519 key, enrolment with a hub.

Layout of the state dir (created 0700)::

    identity.key   the agent's Ed25519 private key (PKCS#8 PEM, 0600)
    agent.json     what it enrolled as: hub url, hub id and public key,
                   node id, name, labels (written atomically)
    images/        the image cache (agent.images)
    runtimes/NAME/ each runtime driver's records of its workloads

The flow (``ensure_enrolled``):

- First start: create the key, then enrol: ask the hub for a challenge with
  purpose ``enroll``, sign ``login_body(hubId, nonce, "enroll", expiry)`` and
  send it with the join token, name and labels to ``POST /v1/agents/enroll``.
  The hub creates the Provider named by our node id. ``agent.json`` records it.
- Later starts need no token: the key logs in by challenge–response (purpose
  ``api``) and the hub finds the agent by its Provider. A name or labels that
  differ from the record re-enrol only when a join token is given (enrolment
  is what writes them); otherwise a warning says they were not applied.
- No record and no token, or a hub that no longer knows our key: a clear
  error saying to get a token with ``gu hub token create``.

Why record the hub's public key: it is what the hub signs placement
admissions with, and the agent learns it once, at enrolment (trust on first
use, like SSH), so a later impostor cannot hand out admissions.

An unreachable hub is waited for (capped backoff) rather than fatal: an agent
started by the init system before the hub must simply come up later.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.client import ApiError, Client, HubUnreachable, hub_urls
from specs.fileio import write_atomic
from specs.identity import (
    LOGIN_PAYLOAD_TYPE,
    generate_key,
    load_private_key,
    login_body,
    node_id,
    public_key_str,
    save_private_key,
    sign,
)
from specs.logfmt import kv

log = logging.getLogger("gu.agent.identity")
T = TypeVar("T")

DEFAULT_STATE_DIR: Final = Path("~/.local/share/gu/agent")
KEY_FILE: Final = "identity.key"
RECORD_FILE: Final = "agent.json"
_HOW_TO_GET_A_TOKEN: Final = (
    "create a join token on the hub's machine with `gu hub token create`, then start the "
    "agent once with `gu agent --hub URL --join-token TOKEN`"
)


class EnrollmentError(Exception):
    """The agent could not enrol or log in; the message says what to do."""


class NotEnrolled(EnrollmentError):
    """The agent has no enrolment with this hub and no join token to make one."""


class Interrupted(Exception):
    """Stopped (SIGTERM/SIGINT) while waiting for the hub."""


@dataclass
class AgentRecord:
    """``agent.json``: what this agent enrolled as, and with which hub."""

    hub: str
    nodeId: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    hubId: str = ""
    hubPublicKey: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentRecord:
        return cls(
            hub=str(data["hub"]),
            nodeId=str(data["nodeId"]),
            name=str(data.get("name", "")),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            hubId=str(data.get("hubId", "")),
            hubPublicKey=str(data.get("hubPublicKey", "")),
        )


@dataclass
class Identity:
    """The agent's key and what it is enrolled as."""

    state_dir: Path
    key: Ed25519PrivateKey
    node_id: str
    record: AgentRecord

    @property
    def public_key(self) -> str:
        return public_key_str(self.key)


def default_name() -> str:
    """The name an agent enrols under when ``--name`` is not given: the host name."""
    return socket.gethostname().split(".")[0] or "agent"


def prepare_state_dir(state_dir: Path) -> Path:
    """Create the state dir (0700, owner only) if needed; return its absolute path."""
    path = Path(state_dir).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def load_or_create_key(state_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The agent's key from ``<state>/identity.key``, created (0600) on first use."""
    path = state_dir / KEY_FILE
    if path.exists():
        return load_private_key(path), False
    key = generate_key()
    save_private_key(key, path)
    log.info(kv("identity_created", node=node_id(public_key_str(key)), path=path))
    return key, True


def read_record(state_dir: Path) -> AgentRecord | None:
    """``agent.json``, or None when missing or unreadable."""
    path = state_dir / RECORD_FILE
    try:
        return AgentRecord.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning(kv("record_unreadable", path=path, error=exc))
        return None


def write_record(state_dir: Path, record: AgentRecord) -> None:
    """Write ``agent.json`` atomically (tmp + fsync + rename), 0600."""
    path = state_dir / RECORD_FILE
    write_atomic(path, json.dumps(asdict(record), indent=1, sort_keys=True).encode() + b"\n")


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        message = (body.get("error") or {}).get("message") or body.get("detail") or resp.text
    except (ValueError, AttributeError):
        message = resp.text or resp.reason_phrase
    return message if isinstance(message, str) else json.dumps(message)


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        resp = http.post(path, json=body)
    except httpx.TransportError as exc:
        raise HubUnreachable(0, f"cannot reach the hub at {http.base_url}: {exc}") from None
    if resp.status_code >= 400:
        raise ApiError(resp.status_code, _error_message(resp))
    return dict(resp.json())


def enroll(
    hub: str, key: Ed25519PrivateKey, join_token: str, name: str, labels: dict[str, str]
) -> AgentRecord:
    """Enrol ``key`` with the hub at ``hub`` using ``join_token``; return the new record.

    Raises EnrollmentError when the hub refuses (bad or expired token, invalid
    name or labels), HubUnreachable when there is no answer.
    """
    return _on_any_hub(hub, lambda url: _enroll_at(url, hub, key, join_token, name, labels))


def _on_any_hub(hub: str, attempt: Callable[[str], T]) -> T:
    """``attempt(url)`` on each of ``hub``'s URLs (several: a cluster) until one answers."""
    last: HubUnreachable | None = None
    for url in hub_urls(hub):
        try:
            return attempt(url)
        except HubUnreachable as exc:
            last = exc
    assert last is not None
    raise last


def _enroll_at(
    url: str,
    hub: str,
    key: Ed25519PrivateKey,
    join_token: str,
    name: str,
    labels: dict[str, str],
) -> AgentRecord:
    pub = public_key_str(key)
    with httpx.Client(base_url=url, timeout=30.0) as http:
        chal = _post(http, "/v1/auth/challenge", {"publicKey": pub, "purpose": "enroll"})
        expiry = int(time.time()) + 60
        body = login_body(chal["hubId"], chal["nonce"], "enroll", expiry)
        request = {
            "publicKey": pub,
            "nonce": chal["nonce"],
            "expiry": expiry,
            "signature": sign(key, LOGIN_PAYLOAD_TYPE, body),
            "joinToken": join_token,
            "name": name,
            "labels": labels,
        }
        try:
            answer = _post(http, "/v1/agents/enroll", request)
        except HubUnreachable:
            raise
        except ApiError as exc:
            hint = "" if "gu hub token create" in exc.message else f"; {_HOW_TO_GET_A_TOKEN}"
            raise EnrollmentError(
                f"the hub at {hub} refused to enrol this agent: {exc.message}{hint}"
            ) from None
    record = AgentRecord(
        hub=hub,
        nodeId=str(answer["nodeId"]),
        name=name,
        labels=dict(labels),
        hubId=str(chal["hubId"]),
        hubPublicKey=str(chal.get("hubPublicKey", "")),
    )
    log.info(kv("enrolled", hub=hub, node=record.nodeId, name=name, labels=len(labels)))
    return record


def _hub_public_key(hub: str, key: Ed25519PrivateKey) -> tuple[str, str]:
    """(hub id, hub public key) from a challenge (for records that lack them)."""

    def ask(url: str) -> tuple[str, str]:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            chal = _post(
                http, "/v1/auth/challenge", {"publicKey": public_key_str(key), "purpose": "api"}
            )
        return str(chal["hubId"]), str(chal.get("hubPublicKey", ""))

    return _on_any_hub(hub, ask)


def _until_reachable(what: str, stop: threading.Event | None, attempt: Callable[[], T]) -> T:
    """Call ``attempt()`` until the hub answers, backing off 1 s → 30 s; Interrupted on stop."""
    delay = 1.0
    while True:
        try:
            return attempt()
        except HubUnreachable as exc:
            log.warning(kv("hub_unreachable", during=what, retry_in=f"{delay:g}s", error=exc))
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            raise Interrupted(f"stopped while waiting for the hub ({what})")
        delay = min(delay * 2, 30.0)


def ensure_enrolled(
    hub: str,
    state_dir: Path,
    *,
    join_token: str | None = None,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    stop: threading.Event | None = None,
) -> Identity:
    """Load or create the key, enrol or log in, and return the agent's identity.

    ``name``/``labels`` None mean "as recorded" (the host name and no labels on
    a first start). Raises NotEnrolled or EnrollmentError with what to do, and
    Interrupted when ``stop`` is set while the hub is unreachable.
    """
    hub = hub.rstrip("/")
    state = prepare_state_dir(state_dir)
    key, _ = load_or_create_key(state)
    nid = node_id(public_key_str(key))
    record = read_record(state)
    if record is not None and record.nodeId != nid:
        log.warning(kv("record_stale", recorded=record.nodeId, node=nid, action="ignored"))
        record = None

    want_name = name or (record.name if record else default_name())
    want_labels = dict(labels) if labels is not None else (dict(record.labels) if record else {})

    def do_enroll() -> AgentRecord:
        assert join_token is not None
        new = _until_reachable(
            "enrolment", stop, lambda: enroll(hub, key, join_token, want_name, want_labels)
        )
        write_record(state, new)
        return new

    enrolled_now = False
    if record is None:
        if not join_token:
            raise NotEnrolled(
                f"this agent (node {nid}, state dir {state}) is not enrolled with any hub yet "
                f"and no join token was given: {_HOW_TO_GET_A_TOKEN}"
            )
        record, enrolled_now = do_enroll(), True
    else:
        changes = []
        if want_name != record.name:
            changes.append(f"name {record.name!r} → {want_name!r}")
        if want_labels != record.labels:
            changes.append(f"labels {record.labels} → {want_labels}")
        if changes and join_token:
            log.info(kv("reenroll", node=nid, changes="; ".join(changes)))
            record, enrolled_now = do_enroll(), True
        elif changes:
            log.warning(
                kv(
                    "enrolment_unchanged",
                    node=nid,
                    ignored="; ".join(changes),
                    hint="give --join-token to re-enrol with the new name or labels",
                )
            )

    # Prove the key works now, so a hub that forgot us is a clear error at start.
    client = Client(hub, key)
    try:
        try:
            _until_reachable("log-in", stop, client.login)
        except ApiError as exc:
            if exc.status != 401 or enrolled_now:
                raise EnrollmentError(f"log-in to the hub at {hub} failed: {exc.message}") from None
            if not join_token:
                raise NotEnrolled(
                    f"the hub at {hub} does not know this agent (node {nid}): {exc.message}; "
                    f"{_HOW_TO_GET_A_TOKEN} to enrol it again"
                ) from None
            log.info(kv("reenroll", node=nid, reason="hub does not know this key"))
            record = do_enroll()
            _until_reachable("log-in", stop, client.login)
    finally:
        client.close()

    if record.hub != hub or not record.hubPublicKey:
        hub_id, hub_key = _until_reachable("hub key", stop, lambda: _hub_public_key(hub, key))
        if record.hubId and hub_id != record.hubId:
            raise EnrollmentError(
                f"the hub at {hub} is hub {hub_id}, but this agent enrolled with hub "
                f"{record.hubId} at {record.hub}; start it with --join-token to enrol with the "
                "new hub, or point --hub at the old one"
            )
        record.hub, record.hubId = hub, hub_id
        record.hubPublicKey = record.hubPublicKey or hub_key
        write_record(state, record)
    log.info(kv("identity_ready", node=nid, name=record.name, hub=hub))
    return Identity(state_dir=state, key=key, node_id=nid, record=record)


__all__ = [
    "DEFAULT_STATE_DIR",
    "AgentRecord",
    "EnrollmentError",
    "Identity",
    "Interrupted",
    "NotEnrolled",
    "default_name",
    "enroll",
    "ensure_enrolled",
    "load_or_create_key",
    "prepare_state_dir",
    "read_record",
    "write_record",
]
