"""The agent's last ImagePolicy check: a start must be covered by a hub-signed admission.

Default deny. The hub signs, per bound placement, what its ImagePolicy allowed
(placement, node, app, image hash, and how: by hash or by a trusted
signature). Right before anything is pulled or run, the agent checks that
admission under the key of the hub it enrolled with and against exactly this
start (:func:`check_admission`); where the image was admitted by signature,
the signature must verify over the exact bytes about to run
(:func:`check_signature`). A refusal is :class:`Refused`, whose ``reason``
goes into the placement's status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specs.signing import verify_admission, verify_image

Obj = dict[str, Any]


class Refused(Exception):
    """The workload must not start: ``reason`` for the status, message for a human."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_admission(
    placement: Obj, name: str, node_id: str, hub_public_key: str, image: str
) -> Obj:
    """The placement's hub-signed admission, checked to cover exactly this start.

    Raises ``Refused`` (nothing is pulled or run) when there is none, when
    it is not signed by the hub this agent enrolled with, or when it names
    another placement, node, app or image.
    """
    spec = placement.get("spec") or {}
    adm = spec.get("admission")
    if not isinstance(adm, dict) or not adm:
        raise Refused(
            "AdmissionRejected",
            "the placement carries no hub-signed admission (spec.admission); this agent "
            "runs only what the hub's ImagePolicy check admitted: nothing was run",
        )
    if not hub_public_key or not verify_admission(hub_public_key, adm):
        raise Refused(
            "AdmissionRejected",
            "the placement's admission is not signed by the hub this agent enrolled with "
            "(or was changed since): nothing was run",
        )
    expected = {
        "placement": name,
        "node": node_id,
        "imageHash": image,
        "app": spec.get("app"),
    }
    wrong = [f"{k}={adm.get(k)!r} (expected {v!r})" for k, v in expected.items() if adm.get(k) != v]
    if wrong:
        raise Refused(
            "AdmissionRejected",
            "the admission does not cover this placement: " + ", ".join(wrong),
        )
    return adm


def check_signature(adm: Obj, image: str, path: Path) -> None:
    """Where the image is admitted by signature: verify it over these exact bytes."""
    if adm.get("allowedBy") != "signature":
        return
    size = path.stat().st_size
    keys = list(adm.get("signerKeys") or [])
    if not any(verify_image(sig, image, size, keys) for sig in adm.get("signatures") or []):
        raise Refused(
            "SignatureInvalid",
            f"no signature of image {image} ({size} bytes) verifies under the keys "
            f"policy {adm.get('policy')!r} trusts: nothing was run",
        )


__all__ = ["Refused", "check_admission", "check_signature"]
