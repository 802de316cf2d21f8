"""Image signature format: published test vectors, and what must not verify.

The vectors pin the exact bytes signed (DSSE PAE of the payload type and the
canonical JSON body) so another implementation can check itself against gu.
Key: Ed25519 private key whose 32 seed bytes are 00 01 02 … 1f.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from specs.identity import generate_key, pae, public_key_str, sign
from specs.signing import (
    IMAGE_PAYLOAD_TYPE,
    SignatureFormatError,
    image_body,
    parse_signature,
    sign_admission,
    sign_image,
    verify_admission,
    verify_image,
)

SEED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SEED_PUB = "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="

VECTORS = [
    {
        "data": b"",
        "size": 0,
        "hash": "sha3-256:a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a",
        "pae": b'DSSEv1 27 application/vnd.gu.image.v1 93 {"hash":"sha3-256:a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a","size":0}',
        "signature": "rA/VyI/Awe0dl77HYvkxVBhS5gvR3KefSjewjUcGgN9xWH/hRP09EpXwjOzEC9X4AhYz0RmT/6YLDy5CJYlLDg==",
    },
    {
        "data": b"hello gu\n",
        "size": 9,
        "hash": "sha3-256:a0bba16b8cb42c85344fc97eb7d5183c7b06b6f17af4996a476c7727328fd934",
        "pae": None,
        "signature": "Dzhro0X9nEl2dBW6V6RR24uuj69EEmyPE3BKm2RupZmeylMFkhLCpcyAlyVgZyMlHU51Hml1j0C3FTWbjOc+Ag==",
    },
]


@pytest.mark.parametrize("vector", VECTORS, ids=["empty", "hello"])
def test_published_vectors(vector: dict) -> None:
    assert "sha3-256:" + hashlib.sha3_256(vector["data"]).hexdigest() == vector["hash"]
    assert public_key_str(SEED_KEY) == SEED_PUB
    if vector["pae"] is not None:
        assert pae(IMAGE_PAYLOAD_TYPE, image_body(vector["hash"], vector["size"])) == vector["pae"]
    doc = sign_image(SEED_KEY, vector["hash"], vector["size"])
    assert doc["signature"] == vector["signature"]  # Ed25519 is deterministic
    assert verify_image(doc, vector["hash"], vector["size"], [SEED_PUB]) == SEED_PUB


def _doc() -> dict:
    return sign_image(SEED_KEY, VECTORS[1]["hash"], 9)


def test_unlisted_key_does_not_verify() -> None:
    assert verify_image(_doc(), VECTORS[1]["hash"], 9, [public_key_str(generate_key())]) is None


def test_one_flipped_signature_byte_does_not_verify() -> None:
    doc = _doc()
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[10] ^= 0x01
    doc["signature"] = base64.b64encode(raw).decode()
    assert verify_image(doc, VECTORS[1]["hash"], 9, [SEED_PUB]) is None


def test_wrong_hash_or_size_does_not_verify() -> None:
    assert verify_image(_doc(), VECTORS[0]["hash"], 9, [SEED_PUB]) is None
    assert verify_image(_doc(), VECTORS[1]["hash"], 10, [SEED_PUB]) is None


def test_signer_named_in_the_file_is_only_a_hint() -> None:
    """A forger naming a trusted key in publicKey gains nothing: we verify under our keys."""
    forger = generate_key()
    doc = sign_image(forger, VECTORS[1]["hash"], 9)
    doc["publicKey"] = SEED_PUB
    assert verify_image(doc, VECTORS[1]["hash"], 9, [SEED_PUB]) is None


def test_a_login_signature_is_not_an_image_signature() -> None:
    body = image_body(VECTORS[1]["hash"], 9)
    doc = _doc()
    doc["signature"] = sign(SEED_KEY, "application/vnd.gu.login.v1", body)
    assert verify_image(doc, VECTORS[1]["hash"], 9, [SEED_PUB]) is None


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"payloadType": "x"}', b"{" + b" " * 5000 + b"}"],
)
def test_malformed_signature_files_are_refused(raw: bytes) -> None:
    with pytest.raises(SignatureFormatError):
        parse_signature(raw)


def test_admission_signed_by_the_hub_verifies_and_tampering_breaks_it() -> None:
    hub = generate_key()
    adm = sign_admission(hub, {"placement": "s-abcde", "imageHash": VECTORS[0]["hash"]})
    assert verify_admission(public_key_str(hub), adm)
    assert not verify_admission(public_key_str(hub), {**adm, "imageHash": VECTORS[1]["hash"]})
    assert not verify_admission(public_key_str(generate_key()), adm)
