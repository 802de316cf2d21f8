"""Keys, node ids and the signed payloads of gu.

- A key is Ed25519. Public keys travel as ``ed25519:<base64 of 32 bytes>``; the
  algorithm is fixed by that prefix, never read from a signature.
- A node id is ``0x`` + the last 20 bytes, in hex, of sha3-256 of the raw public
  key (Golem-style addresses; stable across IP changes).
- Everything signed is a DSSE-style pre-authentication encoding (PAE) of a type
  and a body, so a signature made for one purpose can never be replayed as
  another: ``DSSEv1 <len(type)> <type> <len(body)> <body>``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from specs import jsontext
from specs.fileio import write_atomic

LOGIN_PAYLOAD_TYPE = "application/vnd.gu.login.v1"


class KeyFileError(Exception):
    """A key file that cannot be read or is not an Ed25519 private key."""


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` as PKCS#8 PEM, created 0600 (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, data, 0o600)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM/PKCS#8 or OpenSSH format)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    loaders = (
        lambda d: serialization.load_pem_private_key(d, password=None),
        lambda d: serialization.load_ssh_private_key(d, password=None),
    )
    for load in loaders:
        try:
            key = load(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        if isinstance(key, Ed25519PrivateKey):
            return key
        raise KeyFileError(f"{path} holds a {type(key).__name__}; gu keys are Ed25519")
    raise KeyFileError(
        f"{path} is not an unencrypted Ed25519 private key (PEM or OpenSSH); "
        "make one with `gu keys new --out FILE`"
    )


def public_key_str(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``ed25519:<base64>`` of a public key (or of a private key's public half)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>``; raises ValueError with what is wrong."""
    prefix, _, body = text.partition(":")
    if prefix != "ed25519":
        raise ValueError("a public key is 'ed25519:<base64>'")
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raise ValueError("the public key's base64 is not valid") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def node_id(public_key: str | Ed25519PublicKey) -> str:
    """``0x`` + last 20 bytes (hex) of sha3-256 of the raw public key."""
    pub = parse_public_key(public_key) if isinstance(public_key, str) else public_key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "0x" + hashlib.sha3_256(raw).digest()[-20:].hex()


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that gu signs (sorted keys, no spaces)."""
    return jsontext.dumps(value).encode()


def sign(key: Ed25519PrivateKey, payload_type: str, body: bytes) -> str:
    """Base64 signature over ``pae(payload_type, body)``."""
    return base64.b64encode(key.sign(pae(payload_type, body))).decode()


def verify(public_key: str, payload_type: str, body: bytes, signature: str) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of the PAE."""
    try:
        pub = parse_public_key(public_key)
        sig = base64.b64decode(signature, validate=True)
        pub.verify(sig, pae(payload_type, body))
    except (ValueError, InvalidSignature):
        return False
    return True


def login_body(hub_id: str, nonce: str, purpose: str, expiry: int) -> bytes:
    """The body a client signs to log in: (hub id, nonce, purpose, expiry)."""
    return canonical_json({"hubId": hub_id, "nonce": nonce, "purpose": purpose, "expiry": expiry})
