"""The keys of the virtual networks: derived, never stored, handed only to member agents.

Each VirtualNetwork has a random-looking 256-bit key that its agents encrypt and
authenticate their bridged frames with (ChaCha20-Poly1305). It is derived from the hub's
private key with HKDF (``info = "gu vnet key v1/<network>/<uid>/<generation>"``: a network
deleted and made again under its name gets other keys), so nothing
secret is kept besides ``hub.key`` itself: not in an object's spec or status, the change
log, a watch stream, an event or a log line, and hubs sharing the cluster's key file
derive the same keys. ``gu vnet rotate-key NAME`` moves the network to its next
generation; the previous key is still handed out for ``OVERLAP_SECONDS`` so that traffic
keeps flowing while every agent picks up the new one. The generation and the time of the
last rotation are in the store's meta table (``vnetkey:<network>``: no secret).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controller.store import Store

OVERLAP_SECONDS = 60.0
META_PREFIX = "vnetkey:"


class NetworkKeys:
    """The derivation of every network's keys from the hub's key (see the module doc)."""

    def __init__(self, hub_key: Ed25519PrivateKey, store: Store) -> None:
        raw = hub_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self._master = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"gu vnet master v1"
        ).derive(raw)
        self.store = store

    def _key(self, network: str, uid: str, generation: int) -> bytes:
        info = f"gu vnet key v1/{network}/{uid}/{generation}".encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._master)

    def _state(self, network: str) -> dict[str, Any]:
        raw = self.store.get_meta(META_PREFIX + network)
        try:
            state = json.loads(raw) if raw else {}
        except ValueError:
            state = {}
        return {"generation": int(state.get("generation") or 1),
                "rotatedAt": float(state.get("rotatedAt") or 0.0)}  # fmt: skip

    def keys(self, network: str, uid: str, now: float | None = None) -> list[dict[str, Any]]:
        """The keys agents accept now, newest first: ``[{id, key}]`` (``key`` in base64);
        the previous generation too while a rotation is younger than ``OVERLAP_SECONDS``.
        Agents send with the first."""
        state = self._state(network)
        gen = state["generation"]
        out = [{"id": gen, "key": _b64(self._key(network, uid, gen))}]
        if gen > 1 and (now or time.time()) - state["rotatedAt"] < OVERLAP_SECONDS:
            out.append({"id": gen - 1, "key": _b64(self._key(network, uid, gen - 1))})
        return out

    def rotate(self, network: str) -> int:
        """Move ``network`` to its next key; its new generation."""
        with self.store.transaction():
            gen = self._state(network)["generation"] + 1
            self.store.put_meta(
                META_PREFIX + network, json.dumps({"generation": gen, "rotatedAt": time.time()})
            )
        return gen

    def forget(self, network: str) -> None:
        self.store.delete_meta(META_PREFIX + network)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


__all__ = ["OVERLAP_SECONDS", "NetworkKeys"]
