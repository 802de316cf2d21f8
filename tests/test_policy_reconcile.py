"""ImagePolicy at reconcile time, with the hub's real policy hook and signing key.

A real ``Hub`` object (store, image store, key, reconcilers) in-process; passes
are run synchronously so each test reads like the rule it checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.hub import Hub, HubSettings
from specs.identity import generate_key, public_key_str
from specs.signing import sign_image, verify_admission

GIB = 1 << 30


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    monkeypatch.setenv("GU_CONFIG", str(tmp_path / "config.yaml"))
    h = Hub(HubSettings(state_dir=tmp_path / "hub"))
    yield h
    h.store.close()


def provider(hub: Hub, i: int, **labels: str) -> str:
    key = generate_key()
    node = "0x" + f"{i:02x}" * 20
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    hub.store.create(
        {
            "kind": "Provider",
            "metadata": {"name": node, "labels": labels},
            "spec": {"nodeId": node, "publicKey": public_key_str(key), "labels": labels},
            "status": {
                "inventory": {
                    "os": {"name": "Linux", "version": "6.1"},
                    "cpu": {"architecture": "x86", "bit": [64], "cores": 4, "threads": 4},
                    "memoryBytes": 8 * GIB,
                    "storageBytes": 100 * GIB,
                    "runtimes": ["native"],
                },
                "usage": {"memoryAvailableBytes": 8 * GIB},
                "lastHeartbeat": now,
            },
        }
    )
    hub.controller.reconcile("Provider", node)
    return node


def push(hub: Hub, data: bytes) -> str:
    return hub.images.put_stream([data]).hash


def apply(hub: Hub, *objs: dict[str, Any]) -> None:
    hub.store.apply(list(objs), finalizers=lambda k: ["gu/placements"] if k == "Session" else [])


def app(name: str = "a") -> dict[str, Any]:
    return {"kind": "App", "metadata": {"name": name}, "spec": {}}


def policy(**spec: Any) -> dict[str, Any]:
    return {"kind": "ImagePolicy", "metadata": {"name": "p"}, "spec": {"apps": ["a"], **spec}}


def session(image: str, count: int = 1) -> dict[str, Any]:
    return {
        "kind": "Session",
        "metadata": {"name": "s"},
        "spec": {
            "app": "a",
            "providers": {"count": count},
            "workload": {"runtime": "native", "image": {"hash": image}, "command": ["./run"]},
        },
    }


def placements(hub: Hub) -> list[dict[str, Any]]:
    return hub.store.list_where("Placement", "$.session", "s")


def stalled(hub: Hub) -> dict[str, Any] | None:
    for c in hub.store.get("Session", "s")["status"].get("conditions", []):
        if c["type"] == "Stalled":
            return dict(c)
    return None


def test_placements_go_only_to_providers_the_policy_allows(hub: Hub) -> None:
    image = push(hub, b"program")
    allowed = provider(hub, 1, pool="a")
    provider(hub, 2, pool="b")
    provider(hub, 3)
    apply(hub, app(), policy(allowImages=[image], allowProviders={"selector": {"pool": "a"}}))
    apply(hub, session(image, count=1))
    hub.controller.reconcile("Session", "s")
    assert [p["spec"]["node"] for p in placements(hub)] == [allowed]

    apply(hub, session(image, count=2))
    hub.controller.reconcile("Session", "s")
    unbound = [p for p in placements(hub) if p["spec"]["node"] is None]
    assert len(unbound) == 1
    assert "allowProviders" in unbound[0]["status"]["message"]


def test_every_bound_placement_carries_an_admission_signed_by_the_hub(hub: Hub) -> None:
    image = push(hub, b"program")
    node = provider(hub, 1)
    apply(hub, app(), policy(allowImages=[image]), session(image))
    hub.controller.reconcile("Session", "s")
    (p,) = placements(hub)
    adm = p["spec"]["admission"]
    assert verify_admission(public_key_str(hub.key), adm)
    assert (adm["placement"], adm["node"], adm["imageHash"]) == (p["metadata"]["name"], node, image)
    assert (adm["allowedBy"], adm["policy"]) == ("hash", "p")


def test_converged_passes_sign_no_admission_again(hub: Hub) -> None:
    image = push(hub, b"program")
    provider(hub, 1)
    provider(hub, 2)
    apply(hub, app(), policy(allowImages=[image]), session(image, count=2))
    hub.controller.reconcile("Session", "s")
    assert hub.admissions.signed == 2  # one per bound placement
    first = {p["metadata"]["name"]: p["spec"]["admission"] for p in placements(hub)}
    for _ in range(3):
        hub.controller.reconcile("Session", "s")
    assert hub.admissions.signed == 2
    assert {p["metadata"]["name"]: p["spec"]["admission"] for p in placements(hub)} == first
    apply(hub, policy(allowImages=[image, "sha3-256:" + "1" * 64]))  # same verdict: same admission
    hub.controller.reconcile("Session", "s")
    assert hub.admissions.signed == 2


def test_a_stored_policy_is_validated_once_per_version_not_once_a_pass(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specs.kinds import ImagePolicy

    image = push(hub, b"program")
    provider(hub, 1)
    apply(hub, app(), policy(allowImages=[image]), session(image))
    validated: list[str] = []
    real = ImagePolicy.model_validate

    def counting(obj: Any, **kw: Any) -> ImagePolicy:
        validated.append(obj["metadata"]["name"])
        return real(obj, **kw)

    monkeypatch.setattr(ImagePolicy, "model_validate", counting)
    for _ in range(3):
        hub.controller.reconcile("Session", "s")
    assert validated == ["p"]
    apply(hub, policy(allowImages=["sha3-256:" + "0" * 64]))  # a new version: read anew
    hub.controller.reconcile("Session", "s")
    assert validated == ["p", "p"]
    assert placements(hub)[0]["spec"]["desiredState"] == "Stopped"


def test_an_image_allowed_by_signature_is_admitted_with_the_signature(hub: Hub) -> None:
    image = push(hub, b"signed program")
    signer = generate_key()
    sig = sign_image(signer, image, len(b"signed program"))
    from specs.identity import canonical_json

    hub.images.put_signature(image, canonical_json(sig))
    provider(hub, 1)
    apply(hub, app(), policy(allowImagesSignedBy=[public_key_str(signer)]), session(image))
    hub.controller.reconcile("Session", "s")
    (p,) = placements(hub)
    adm = p["spec"]["admission"]
    assert adm["allowedBy"] == "signature"
    assert adm["signerKeys"] == [public_key_str(signer)]
    assert adm["signatures"][0]["signature"] == sig["signature"]


def test_image_facts_are_read_once_until_the_image_store_changes(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass does not stat the image and list its signatures again while the image
    store is as it was; a signature stored since is seen by the next pass."""
    image = push(hub, b"signed later")
    signer = generate_key()
    provider(hub, 1)
    apply(hub, app(), policy(allowImagesSignedBy=[public_key_str(signer)]), session(image))
    reads: list[str] = []
    real = hub.images.info

    def counting(h: str) -> Any:
        reads.append(h)
        return real(h)

    monkeypatch.setattr(hub.images, "info", counting)
    for _ in range(3):
        hub.controller.reconcile("Session", "s")
    assert reads == [image]
    assert [p["spec"]["node"] for p in placements(hub)] in ([], [None])  # not admitted

    from specs.identity import canonical_json

    sig = sign_image(signer, image, len(b"signed later"))
    hub.images.put_signature(image, canonical_json(sig))
    hub.controller.reconcile("Session", "s")
    assert reads == [image, image]
    (p,) = placements(hub)
    assert p["spec"]["node"] and p["spec"]["admission"]["allowedBy"] == "signature"


def test_signatures_are_verified_again_only_when_a_policy_or_the_image_changes(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policies' verdict on an app and image is kept while they and the image store
    stay as they were: passes do not verify the image's signatures again (it was three
    times a pass), a changed policy or a new signature is judged at the next pass."""
    import controller.policy

    data = b"signed"
    image = push(hub, data)
    signer, other = generate_key(), generate_key()
    provider(hub, 1)
    provider(hub, 2)
    from specs.identity import canonical_json

    hub.images.put_signature(image, canonical_json(sign_image(signer, image, len(data))))
    apply(hub, app(), policy(allowImagesSignedBy=[public_key_str(signer)]), session(image, 2))
    verified: list[str] = []
    real = controller.policy.verify_image

    def counting(*args: Any, **kwargs: Any) -> Any:
        verified.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(controller.policy, "verify_image", counting)
    hub.controller.reconcile("Session", "s")  # binds two placements, each admitted
    assert all(p["spec"]["admission"]["allowedBy"] == "signature" for p in placements(hub))
    first = len(verified)
    assert first >= 1
    for _ in range(3):
        hub.controller.reconcile("Session", "s")
    assert len(verified) == first  # kept

    keys = [public_key_str(other), public_key_str(signer)]
    apply(hub, policy(allowImagesSignedBy=keys))  # a changed policy: judged again
    hub.controller.reconcile("Session", "s")
    assert len(verified) > first
    second = len(verified)

    hub.images.put_signature(image, canonical_json(sign_image(other, image, len(data))))
    hub.controller.reconcile("Session", "s")  # a new signature: judged again
    assert len(verified) > second
    assert all(p["spec"]["admission"]["allowedBy"] == "signature" for p in placements(hub))


def test_removing_the_image_from_the_policy_stops_its_placements(hub: Hub) -> None:
    image = push(hub, b"program")
    provider(hub, 1)
    apply(hub, app(), policy(allowImages=[image]), session(image))
    hub.controller.reconcile("Session", "s")
    (before,) = placements(hub)
    assert before["spec"]["desiredState"] == "Running"

    apply(hub, policy(allowImages=["sha3-256:" + "0" * 64]))
    hub.controller.reconcile("Session", "s")
    (after,) = placements(hub)
    assert after["spec"]["desiredState"] == "Stopped"
    assert after["status"]["reason"] == "PolicyViolation"
    cond = stalled(hub)
    assert cond is not None and cond["reason"] == "PolicyViolation"
    assert 'ImagePolicy "p"' in cond["message"] and "allowImages" in cond["message"]
    reasons = [e.reason for e in hub.store.events("Session", "s")]
    assert "PolicyViolation" in reasons


def test_a_policy_change_wakes_the_sessions_of_the_apps_it_names_and_named(hub: Hub) -> None:
    from controller.reconcilers.session import policy_apps_mapper

    mapper = policy_apps_mapper()
    image = push(hub, b"program")
    apply(hub, app(), policy(allowImages=[image]), session(image))
    changed = hub.store.get("ImagePolicy", "p")
    assert mapper(changed, hub.store) == ["s"]
    # the policy stops naming the app: its Sessions are woken all the same
    dropped = {**changed, "spec": {**changed["spec"], "apps": ["someone-else"]}}
    assert mapper(dropped, hub.store) == ["s"]
    assert mapper(dropped, hub.store) == []  # (and no longer once that was seen)


def test_a_change_of_the_default_priority_wakes_the_sessions_that_name_none(
    hub: Hub,
) -> None:
    from controller.reconcilers.session import priority_mapper

    mapper = priority_mapper()
    image = push(hub, b"program")
    apply(hub, app(), policy(allowImages=[image]), session(image))
    prio = {"kind": "Priority", "metadata": {"name": "batch"}, "spec": {"value": 5}}
    assert mapper(prio, hub.store) == []  # nobody names it, and it is no default
    default = {**prio, "spec": {"value": 5, "default": True}}
    assert mapper(default, hub.store) == ["s"]  # "s" names no priority
    assert mapper(prio, hub.store) == ["s"]  # no longer the default: "s" again
