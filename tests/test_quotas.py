"""Quotas and hub-wide caps against a real hub: an App's quota bounds what its Sessions
ask for (403 naming the limit and the use), and one apply or request body is bounded."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.api.common import ApiProblem
from controller.client import ApiError
from tests.conftest import HubProcess

IMAGE = "sha3-256:" + "ab" * 32


def session(name: str, cpu: float = 1, count: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": "q",
            "providers": {"count": count},
            "workload": {
                "runtime": "native",
                "image": {"hash": IMAGE},
                "resources": {"cpu": cpu, "memoryMiB": 64},
            },
        },
    }


def app(**quota: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gu/v1",
        "kind": "App",
        "metadata": {"name": "q"},
        "spec": {"quota": quota},
    }


def test_an_app_over_its_quota_gets_403_naming_the_limit_and_the_use(hub: HubProcess) -> None:
    admin = hub.client()
    policy = {
        "apiVersion": "gu/v1",
        "kind": "ImagePolicy",
        "metadata": {"name": "q"},
        "spec": {"apps": ["q"], "allowImages": [IMAGE]},
    }
    admin.apply([app(sessions=2, cpu=3), policy, session("s1"), session("s2")])
    with pytest.raises(ApiError) as third:
        admin.apply([session("s3")])
    assert third.value.status == 403
    said = third.value.details[0]["message"]
    assert "App q's quota allows 2 Sessions in all" in said
    assert "ask for 2 now and would ask for 3 with this apply" in said, said
    with pytest.raises(ApiError) as big:
        admin.apply([session("s2", cpu=2.5)])  # replacing s2: 1 + 2.5 > 3
    assert "allows 3 cpu" in big.value.details[0]["message"]
    assert "would ask for 3.5" in big.value.details[0]["message"]
    assert [s["metadata"]["name"] for s in admin.list("Session")] == ["s1", "s2"]
    admin.apply([session("s2", cpu=2)])  # 1 + 2 = 3: within
    admin.apply([app(sessions=3, cpu=10), session("s3", count=2)])  # raised in the same apply
    assert len(admin.list("Session")) == 3


@pytest.fixture
def token(hub: HubProcess) -> Iterator[dict[str, str]]:
    yield {"Authorization": f"Bearer {hub.client().token()}", "Content-Type": "application/json"}


def test_one_apply_and_one_request_body_are_bounded(hub: HubProcess, token: dict[str, str]) -> None:
    many = [
        {"apiVersion": "gu/v1", "kind": "App", "metadata": {"name": f"a{i}"}, "spec": {}}
        for i in range(10_001)
    ]
    r = httpx.post(hub.url + "/v1/apply", json={"objects": many}, headers=token, timeout=60)
    assert r.status_code == 413 and "at most 10,000 per apply" in r.text
    blob = (
        b'{"objects": [{"kind": "App", "metadata": {"name": "x"}, "spec": {"description": "'
        + b"a" * (33 << 20)
        + b'"}}]}'
    )
    r = httpx.post(hub.url + "/v1/apply", content=blob, headers=token, timeout=60)
    assert r.status_code == 413 and "over 32 MiB" in r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(blob), 1 << 16):
            yield blob[i : i + (1 << 16)]

    r = httpx.post(hub.url + "/v1/apply", content=chunks(), headers=token, timeout=60)
    assert r.status_code == 413 and "over 32 MiB" in r.text
    assert hub.client().list("App") == []
    # a status write is bounded too (only a placement's log upload streams past it)
    r = httpx.put(hub.url + "/v1/placements/p/status", content=blob, headers=token, timeout=60)
    assert r.status_code == 413, r.text


def test_an_apps_images_are_bounded_by_its_image_bytes_quota(hub: HubProcess) -> None:
    from controller.client import Client
    from specs.identity import generate_key, public_key_str

    admin = hub.client()
    key = generate_key()
    admin.apply(
        [
            {
                "apiVersion": "gu/v1",
                "kind": "App",
                "metadata": {"name": "imgs"},
                "spec": {"publicKeys": [public_key_str(key)], "quota": {"imageBytes": 1000}},
            }
        ]
    )
    app = Client(hub.url, key)
    first = app.request("POST", "/v1/images", content=b"a" * 600).json()["hash"]
    with pytest.raises(ApiError) as over:
        app.request("POST", "/v1/images", content=b"b" * 600)
    assert over.value.status == 403
    assert "allows 1000 bytes of images" in str(over.value) and "take 600" in str(over.value)
    stored = [i["hash"] for i in admin.call("GET", "/v1/images")["items"]]
    assert stored == [first]  # the refused one was not kept
    again = app.request("POST", "/v1/images", content=b"a" * 600).json()["hash"]
    assert again == first  # its own image again: no new bytes


def test_two_applies_checked_at_once_cannot_both_take_the_last_of_a_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two applies of one App, each within its quota alone but not together, reach the
    quota check at the same moment (the test holds each there until the other arrives,
    or a second passes). The check runs inside the apply's transaction, so the second
    waits for the first to commit, sees its Session, and is refused."""
    from controller.api import objects
    from controller.auth import Principal
    from controller.hub import Hub, HubSettings
    from controller.quota import quota_errors

    monkeypatch.setenv("GU_CONFIG", str(tmp_path / "config.yaml"))
    hub = Hub(HubSettings(state_dir=tmp_path / "hub"))
    admin = Principal("admin", "admin")
    try:
        d = hub.api_deps()
        policy = {
            "apiVersion": "gu/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "q"},
            "spec": {"apps": ["q"], "allowImages": [IMAGE]},
        }
        objects.apply(objects.ApplyRequest(objects=[app(sessions=2), policy, session("s1")]),
                      admin, d)  # fmt: skip
        both_there = threading.Barrier(2)

        def checked_together(store: Any, batch: list[dict[str, Any]]) -> Any:
            with contextlib.suppress(threading.BrokenBarrierError):
                both_there.wait(timeout=1.0)
            return quota_errors(store, batch)

        monkeypatch.setattr(objects, "quota_errors", checked_together)
        outcomes: list[str] = []

        def apply_one(name: str) -> None:
            try:
                objects.apply(objects.ApplyRequest(objects=[session(name)]), admin, d)
                outcomes.append("applied")
            except ApiProblem as exc:
                outcomes.append(f"{exc.status}")

        threads = [threading.Thread(target=apply_one, args=(n,)) for n in ("s2", "s3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes) == ["403", "applied"]
        assert len(hub.store.list("Session")) == 2
    finally:
        hub.store.close()
