"""Property-based checks of the live hub API against its own OpenAPI document.

schemathesis reads ``/openapi.json`` from a real hub (the document itself needs
a token) and, for every operation, sends generated requests — valid ones
(positive mode) and requests that break the schema (negative mode) — once with
the admin's token and once with an app's. Every answer must:

- not be a server error (``not_a_server_error``): bad input is a 4xx with a
  message, never a 500;
- conform to the schema the document declares for its status
  (``response_schema_conformance``), error bodies included.

Random path parameters almost always name nothing (404), so the operations
whose paths take a kind, a name, a node id or an image hash also run with
those parameters fixed to real objects made by the fixture, which reaches the
code behind the lookup (status validation, label selectors, logs, signatures).

``/v1/watch`` is a stream that ends only when its ``timeout`` does, so that
query parameter is fixed to a fraction of a second. Its NDJSON body and the
binary body of ``GET /v1/images/{hash}`` are not JSON; the document declares
no schema for them (``{}``), so the schema check passes them through and the
server-error check still applies. Nothing needs excluding.

Bounds: ``MAX_EXAMPLES`` per operation (and per fixed-parameter variant), a
per-request deadline, and a time budget per principal: once it is spent the
remaining operations still run, with ``FEW_EXAMPLES`` each, so every
operation is always exercised and the file stays well under three minutes on
two cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from controller.client import Client
from specs.identity import generate_key
from tests.conftest import HubProcess, make_hub
from tests.helpers import wait_for
from tests.test_security_matrix import (
    HEARTBEAT,
    app_object,
    enroll_agent,
    placement_on,
    policy_object,
    session_object,
)

MAX_EXAMPLES = 25
FEW_EXAMPLES = 3
DEADLINE_MS = 5000
BUDGET_S = 30.0
"""Per principal and generation mode (four runs); a run takes 5–15 s on two cores."""
CHECKS = [not_a_server_error, response_schema_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class Target:
    hub: HubProcess
    schema: Any
    tokens: dict[str, str]
    fixed: dict[str, list[dict[str, str]]]
    """Path template → path parameters naming real objects, one run each."""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    hub = make_hub(Path(tmp_path_factory.mktemp("schemathesis")))
    hub.start()
    try:
        admin = hub.client()
        app_key, agent_key = generate_key(), generate_key()
        admin.apply([app_object("fuzz", app_key)])
        image = admin.call("POST", "/v1/images", content=b"fuzzed image")["hash"]
        join = admin.call("POST", "/v1/jointokens", json={"ttl": 600})["token"]
        node = enroll_agent(hub.url, agent_key, join, "fuzz-agent")["nodeId"]
        Client(hub.url, agent_key).call("POST", "/v1/agents/heartbeat", json=HEARTBEAT)
        admin.apply(
            [
                policy_object("fuzz", ["fuzz"], [image]),
                {
                    "apiVersion": "gu/v1",
                    "kind": "Priority",
                    "metadata": {"name": "p"},
                    "spec": {"value": 1},
                },
                {
                    "apiVersion": "gu/v1",
                    "kind": "VirtualNetwork",
                    "metadata": {"name": "vn"},
                    "spec": {"cidr": "10.9.0.0/24"},
                },
            ]
        )
        admin.apply([session_object("s1", "fuzz", image, [node])])
        try:
            placement = wait_for(lambda: placement_on(admin, node, "s1"), timeout=20)
        except AssertionError:
            placement = "no-such-placement"  # no scheduler: the 404 path is fuzzed instead
        objects = {
            "sessions": "s1",
            "providers": node,
            "placements": placement,
            "apps": "fuzz",
            "imagepolicies": "fuzz",
            "priorities": "p",
            "virtualnetworks": "vn",
        }
        by_kind = [{"kind": k, "name": n} for k, n in objects.items()]
        fixed = {
            "/v1/{kind}": [{"kind": k} for k in objects],
            # DELETE is fuzzed with random names only: deleting the fixture's objects
            # would turn every later run into a 404
            "/v1/{kind}/{name}": by_kind,
            "/v1/{kind}/{name}/status": by_kind,
            "/v1/{kind}/{name}/events": by_kind,
            "/v1/sessions/{name}/logs": [{"name": "s1"}],
            "/v1/placements/{name}/logs": [{"name": placement}],
            "/v1/images/{hash}": [{"hash": image}],
            "/v1/images/{hash}/signatures": [{"hash": image}],
            **{
                path: [{"nodeId": node}]
                for path in (
                    "/peers/{nodeId}",
                    "/peers/{nodeId}/inf/storage",
                    "/peers/{nodeId}/inf/cpu",
                    "/peers/{nodeId}/inf/mem",
                    "/peers/{nodeId}/inf/os",
                )
            },
        }
        admin_token = admin.token()
        schema = schemathesis.openapi.from_url(
            hub.url + "/openapi.json",
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=10,
        )
        tokens = {"admin": admin_token, "app": Client(hub.url, app_key).token()}
        yield Target(hub=hub, schema=schema, tokens=tokens, fixed=fixed)
    finally:
        hub.stop()


def _fuzz(target: Target, principal: str, mode: schemathesis.GenerationMode) -> list[str]:
    """Run every operation (and fixed-parameter variant); the failures, one text each."""
    headers = {"Authorization": f"Bearer {target.tokens[principal]}"}
    failures: list[str] = []
    budget_end = time.monotonic() + BUDGET_S
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert operations, "the OpenAPI document lists no operation"
    for op in operations:
        # the watch stream ends only with its timeout: keep it short
        query = {"timeout": 0.2} if op.path == "/v1/watch" else None
        variants: list[dict[str, str] | None] = [None]
        if op.method.upper() != "DELETE":
            variants += target.fixed.get(op.path, [])
        for path_parameters in variants:
            examples = MAX_EXAMPLES if time.monotonic() < budget_end else FEW_EXAMPLES
            strategy = op.as_strategy(mode, path_parameters=path_parameters, query=query)

            @given(case=strategy)
            @settings(
                max_examples=examples,
                deadline=DEADLINE_MS,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Any) -> None:
                response = case.call(base_url=target.hub.url, headers=headers, timeout=15)
                case.validate_response(response, checks=CHECKS, headers=headers)

            label = op.label + (f" {path_parameters}" if path_parameters else "")
            try:
                call()
            except Unsatisfiable:
                # negative mode: nothing in this operation can break the schema
                # (no parameters, or free-form strings only)
                continue
            except Exception as exc:
                failures.append(f"{label} ({principal}, {mode.value}):\n{exc}")
    return failures


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_admin_requests_get_no_server_error_and_schema_conformant_answers(
    target: Target, mode: schemathesis.GenerationMode
) -> None:
    failures = _fuzz(target, "admin", mode)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_app_requests_get_no_server_error_and_schema_conformant_answers(
    target: Target, mode: schemathesis.GenerationMode
) -> None:
    failures = _fuzz(target, "app", mode)
    assert not failures, "\n\n".join(failures)


def test_the_document_declares_the_error_body_the_api_sends(target: Target) -> None:
    doc = target.schema.raw_schema
    apply_422 = doc["paths"]["/v1/apply"]["post"]["responses"]["422"]
    ref = apply_422["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ErrorResponse")
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_a_resource_version_beyond_the_store_is_a_422_not_a_500(target: Target) -> None:
    resp = httpx.get(
        target.hub.url + f"/v1/watch?timeout=0.1&resourceVersion={2**63}",
        headers={"Authorization": f"Bearer {target.tokens['admin']}"},
        timeout=10,
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0]["path"] == "query.resourceVersion"


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({"kind": {"a": 1}}, "kind"),
        ({"kind": ["App"]}, "kind"),
        ({"kind": "App", "metadata": "x"}, "metadata"),
    ],
)
def test_an_apply_of_a_shapeless_object_is_a_422_not_a_500(
    target: Target, obj: dict[str, Any], path: str
) -> None:
    resp = httpx.post(
        target.hub.url + "/v1/apply",
        json={"objects": [obj]},
        headers={"Authorization": f"Bearer {target.tokens['admin']}"},
        timeout=10,
    )
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["message"] == "1 invalid object(s); nothing was applied"
    assert [(d["index"], d["path"]) for d in error["details"]] == [(0, path)]
