"""ImagePolicy evaluation: may app A run image I on provider P?

Pure functions over the policies that name the app (no I/O), used three ways:
at admission (the API refuses a Session, naming the rule that failed), at every
reconcile (the scheduler's ``allowed`` predicate, and stopping what a tightened
policy no longer allows) and, through the hub-signed admission it produces, on
the agent right before start.

Rules (default deny):

- An app no policy names may run nothing.
- An image is allowed by a policy if its hash is in ``allowImages`` OR one of
  its signatures verifies under a key in ``allowImagesSignedBy``. Omitted
  lists allow no image.
- A provider is allowed by a policy if ``allowProviders`` is omitted (any
  provider), or the node id is listed in ``nodes``, or its labels match
  ``selector`` (a non-empty selector; every key equal).
- Several policies naming one app: the placement is allowed if any ONE policy
  allows both the image and the provider.

The reconcile-time seam lives here too: a ``PolicyHook`` answers a
``PolicyCheck`` per Session pass (``controller.admission.session_policy``
builds the hub's), so the Session reconciler and the admission code both
depend on this module and not on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from specs.kinds import ImagePolicy, Session
from specs.selectors import format_selector, match_labels

if TYPE_CHECKING:
    from controller.scheduler import Allowed
    from controller.store import Store
from specs.signing import verify_image


@dataclass(frozen=True)
class ImageVerdict:
    """Whether (and how) the policies allow an image for an app."""

    allowed: bool
    policy: str | None = None
    by: Literal["hash", "signature"] | None = None
    signer: str | None = None
    signature: dict[str, Any] | None = None
    reason: str = ""


def policies_for(app: str, policies: Sequence[ImagePolicy]) -> list[ImagePolicy]:
    """The policies that name ``app``, by name for determinism."""
    return sorted((p for p in policies if app in p.spec.apps), key=lambda p: p.metadata.name)


def no_policy_reason(app: str) -> str:
    return (
        f'app "{app}" has no ImagePolicy (default deny): create an ImagePolicy listing it in '
        "spec.apps"
    )


def _image_by(
    policy: ImagePolicy, image_hash: str, size: int | None, signatures: Sequence[dict[str, Any]]
) -> ImageVerdict:
    name = policy.metadata.name
    if image_hash in policy.spec.allowImages:
        return ImageVerdict(True, name, "hash")
    keys = list(policy.spec.allowImagesSignedBy)
    if keys:
        for sig in signatures:
            signer = verify_image(sig, image_hash, size, keys)
            if signer is not None:
                return ImageVerdict(True, name, "signature", signer, dict(sig))
    why = f'ImagePolicy "{name}": image {image_hash} is not in allowImages'
    if keys:
        why += (
            f" and has no valid signature by a key in allowImagesSignedBy "
            f"({len(signatures)} signature(s) checked)"
        )
    else:
        why += " and allowImagesSignedBy is empty"
    return ImageVerdict(False, reason=why)


def provider_reason(policy: ImagePolicy, node_id: str, labels: Mapping[str, str]) -> str | None:
    """None if ``policy`` allows the provider, else why not."""
    allow = policy.spec.allowProviders
    if allow is None:
        return None
    if node_id in allow.nodes:
        return None
    if allow.selector and match_labels(labels, allow.selector):
        return None
    sel = format_selector(allow.selector)
    return (
        f'ImagePolicy "{policy.metadata.name}": provider {node_id} is not in '
        f"allowProviders (nodes: {len(allow.nodes)} listed, selector: {sel})"
    )


def check_image(
    app: str,
    image_hash: str,
    size: int | None,
    signatures: Sequence[dict[str, Any]],
    policies: Sequence[ImagePolicy],
) -> ImageVerdict:
    """Is the image allowed for ``app`` by any policy (providers aside)?"""
    mine = policies_for(app, policies)
    if not mine:
        return ImageVerdict(False, reason=no_policy_reason(app))
    reasons = []
    for policy in mine:
        verdict = _image_by(policy, image_hash, size, signatures)
        if verdict.allowed:
            return verdict
        reasons.append(verdict.reason)
    return ImageVerdict(False, reason="; ".join(reasons))


def check(
    app: str,
    image_hash: str,
    size: int | None,
    signatures: Sequence[dict[str, Any]],
    policies: Sequence[ImagePolicy],
    node_id: str,
    labels: Mapping[str, str],
) -> ImageVerdict:
    """Is there ONE policy that allows both the image and the provider?"""
    mine = policies_for(app, policies)
    if not mine:
        return ImageVerdict(False, reason=no_policy_reason(app))
    reasons = []
    for policy in mine:
        verdict = _image_by(policy, image_hash, size, signatures)
        if not verdict.allowed:
            reasons.append(verdict.reason)
            continue
        why = provider_reason(policy, node_id, labels)
        if why is None:
            return verdict
        reasons.append(why)
    return ImageVerdict(False, reason="; ".join(reasons))


def provider_predicate(
    app: str,
    image_hash: str,
    size: int | None,
    signatures: Sequence[dict[str, Any]],
    policies: Sequence[ImagePolicy],
) -> Callable[[str, Mapping[str, str]], str | None]:
    """A scheduler predicate: ``(node_id, labels) -> None`` if allowed, else the reason.

    The image verdicts are computed once; only the provider rules run per node.
    """
    mine = policies_for(app, policies)
    image_ok = [p for p in mine if _image_by(p, image_hash, size, signatures).allowed]

    def allowed(node_id: str, labels: Mapping[str, str]) -> str | None:
        if not mine:
            return no_policy_reason(app)
        if not image_ok:
            return "image not allowed by any ImagePolicy of the app"
        reasons = []
        for policy in image_ok:
            why = provider_reason(policy, node_id, labels)
            if why is None:
                return None
            reasons.append(why)
        return "; ".join(reasons)

    return allowed


# ------------------------------------------------------ the reconcile-time seam

Admit = Callable[[str, str, Mapping[str, str]], dict[str, Any] | None]
"""``admit(placement_name, node, labels)``: the hub-signed ``spec.admission`` of a placement
bound to ``node`` whose labels are ``labels`` (the scheduler's view of them, so admission
and scheduling judge the same labels). None when no policy allows that node: the
placement is then being stopped anyway."""


@dataclass(frozen=True)
class PolicyCheck:
    """What the ImagePolicy says about one Session right now.

    ``violation``: why its image is not allowed at all (every placement must
    stop, nothing is scheduled); ``allowed``: the per-provider predicate for
    the scheduler and for placements already bound; ``admit``: signs the
    admission an agent checks before it runs anything.
    """

    allowed: Allowed | None = None
    violation: str | None = None
    admit: Admit | None = None


PolicyHook = Callable[[Session, "Store"], PolicyCheck | None]
"""``hook(session, store)``: the ImagePolicy verdict for this session (None: no policy checks)."""
