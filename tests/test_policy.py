"""ImagePolicy rules: default deny, by hash, by signature, providers, several policies."""

from __future__ import annotations

from controller.policy import check, check_image, provider_predicate
from specs.identity import generate_key, public_key_str
from specs.kinds import ImagePolicy
from specs.signing import sign_image

IMG = "sha3-256:" + "1" * 64
OTHER = "sha3-256:" + "2" * 64
NODE_A = "0x" + "a" * 40
NODE_B = "0x" + "b" * 40


def policy(name: str, **spec: object) -> ImagePolicy:
    return ImagePolicy.model_validate(
        {"kind": "ImagePolicy", "metadata": {"name": name}, "spec": {"apps": ["a"], **spec}}
    )


def test_an_app_without_policy_may_run_nothing() -> None:
    verdict = check_image("a", IMG, 10, [], [])
    assert not verdict.allowed and "default deny" in verdict.reason
    other_app = policy("p", apps=["b"], allowImages=[IMG])
    assert not check_image("a", IMG, 10, [], [other_app]).allowed


def test_listed_hash_is_allowed_and_others_are_not() -> None:
    p = policy("p", allowImages=[IMG])
    assert check_image("a", IMG, 10, [], [p]).by == "hash"
    denied = check_image("a", OTHER, 10, [], [p])
    assert (
        not denied.allowed and 'ImagePolicy "p"' in denied.reason and "allowImages" in denied.reason
    )


def test_signature_by_listed_key_allows_and_unlisted_key_does_not() -> None:
    signer, stranger = generate_key(), generate_key()
    p = policy("p", allowImagesSignedBy=[public_key_str(signer)])
    good = check_image("a", IMG, 10, [sign_image(signer, IMG, 10)], [p])
    assert good.allowed and good.by == "signature" and good.signer == public_key_str(signer)
    assert not check_image("a", IMG, 10, [sign_image(stranger, IMG, 10)], [p]).allowed


def test_providers_by_node_or_selector() -> None:
    p = policy(
        "p", allowImages=[IMG], allowProviders={"nodes": [NODE_A], "selector": {"pool": "a"}}
    )
    assert check("a", IMG, 1, [], [p], NODE_A, {}).allowed
    assert check("a", IMG, 1, [], [p], NODE_B, {"pool": "a"}).allowed
    denied = check("a", IMG, 1, [], [p], NODE_B, {"pool": "b"})
    assert not denied.allowed and "allowProviders" in denied.reason


def test_one_policy_must_allow_both_image_and_provider() -> None:
    only_image = policy("img", allowImages=[IMG], allowProviders={"nodes": [NODE_A]})
    only_node = policy("node", allowImages=[OTHER], allowProviders={"nodes": [NODE_B]})
    assert not check("a", IMG, 1, [], [only_image, only_node], NODE_B, {}).allowed
    assert check("a", IMG, 1, [], [only_image, only_node], NODE_A, {}).allowed


def test_provider_predicate_for_the_scheduler() -> None:
    p = policy("p", allowImages=[IMG], allowProviders={"selector": {"pool": "a"}})
    allowed = provider_predicate("a", IMG, 1, [], [p])
    assert allowed(NODE_A, {"pool": "a"}) is None
    assert "allowProviders" in (allowed(NODE_A, {}) or "")
    assert provider_predicate("a", OTHER, 1, [], [p])(NODE_A, {"pool": "a"})
