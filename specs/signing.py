"""Image signatures and hub-signed admissions: formats, signing and verification.

An image signature says "key K vouches for the image with this hash and size".
What is signed is the DSSE pre-authentication encoding (``specs.identity.pae``)
of the payload type ``application/vnd.gu.image.v1`` and the canonical JSON
``{"hash": "sha3-256:…", "size": N}``. Typed and length-prefixed, it can never
be confused with a log-in or any other signed gu payload.

The signature file (``FILE.sig``) is JSON::

    {"payloadType": "application/vnd.gu.image.v1", "hash": "sha3-256:…", "size": 123,
     "publicKey": "ed25519:…", "signature": "<base64>"}

``publicKey`` is only a hint naming the signer. A verifier checks the
signature under each key *it* trusts (an ImagePolicy's ``allowImagesSignedBy``),
with that key's own algorithm (Ed25519, fixed by the ``ed25519:`` prefix) —
never an algorithm or key taken from the signature file.

An admission is the hub's word to an agent: "this placement's image is
allowed, by hash or by these signatures under these keys". The hub signs it
(payload type ``application/vnd.gu.admission.v1``) so that the agent can check,
right before it runs anything, that the policy data it acts on came from its
hub unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from specs.identity import canonical_json, public_key_str, sign, verify

IMAGE_PAYLOAD_TYPE = "application/vnd.gu.image.v1"
ADMISSION_PAYLOAD_TYPE = "application/vnd.gu.admission.v1"
MAX_SIGNATURE_BYTES = 4096


class SignatureFormatError(ValueError):
    """A signature file that is not a gu image signature."""


def image_body(image_hash: str, size: int) -> bytes:
    """The body an image signature covers."""
    return canonical_json({"hash": image_hash, "size": int(size)})


def sign_image(key: Ed25519PrivateKey, image_hash: str, size: int) -> dict[str, Any]:
    """A signature document for the image ``image_hash`` of ``size`` bytes."""
    return {
        "payloadType": IMAGE_PAYLOAD_TYPE,
        "hash": image_hash,
        "size": int(size),
        "publicKey": public_key_str(key),
        "signature": sign(key, IMAGE_PAYLOAD_TYPE, image_body(image_hash, size)),
    }


def parse_signature(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Parse and shape-check a signature document; raises SignatureFormatError."""
    if isinstance(raw, bytes | str):
        if len(raw) > MAX_SIGNATURE_BYTES:
            raise SignatureFormatError("signature file is too large to be a gu image signature")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise SignatureFormatError("signature file is not JSON") from None
    else:
        doc = raw
    if not isinstance(doc, dict):
        raise SignatureFormatError("signature file must be a JSON object")
    if doc.get("payloadType") != IMAGE_PAYLOAD_TYPE:
        raise SignatureFormatError(f"payloadType must be {IMAGE_PAYLOAD_TYPE!r}")
    for field, typ in (("hash", str), ("size", int), ("publicKey", str), ("signature", str)):
        if not isinstance(doc.get(field), typ) or isinstance(doc.get(field), bool):
            raise SignatureFormatError(f"signature file lacks a valid {field!r}")
    return {k: doc[k] for k in ("payloadType", "hash", "size", "publicKey", "signature")}


def verify_image(
    signature: dict[str, Any], image_hash: str, size: int | None, trusted_keys: list[str]
) -> str | None:
    """The trusted key under which ``signature`` verifies for this image, or None.

    ``size`` None means "not known here": the signed size is then taken as
    claimed, and whoever holds the bytes must check it (the agent does).
    """
    try:
        doc = parse_signature(signature)
    except SignatureFormatError:
        return None
    if doc["hash"] != image_hash or (size is not None and doc["size"] != size):
        return None
    body = image_body(image_hash, doc["size"])
    for key in trusted_keys:
        if verify(key, IMAGE_PAYLOAD_TYPE, body, doc["signature"]):
            return key
    return None


def admission_body(admission: dict[str, Any]) -> bytes:
    """What the hub signs of an admission: every field but ``hubSignature``."""
    return canonical_json({k: v for k, v in admission.items() if k != "hubSignature"})


def sign_admission(hub_key: Ed25519PrivateKey, admission: dict[str, Any]) -> dict[str, Any]:
    """``admission`` with its ``hubSignature`` set."""
    signed = {k: v for k, v in admission.items() if k != "hubSignature"}
    signed["hubSignature"] = sign(hub_key, ADMISSION_PAYLOAD_TYPE, admission_body(signed))
    return signed


def verify_admission(hub_public_key: str, admission: dict[str, Any]) -> bool:
    """Did the hub with ``hub_public_key`` sign this admission, unchanged?"""
    sig = admission.get("hubSignature")
    if not isinstance(sig, str):
        return False
    return verify(hub_public_key, ADMISSION_PAYLOAD_TYPE, admission_body(admission), sig)
