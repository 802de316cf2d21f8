"""Admission: the first of the three ImagePolicy checks, at ``gu apply`` time.

A Session is admitted only if some ImagePolicy naming its app allows its image
(by hash, or by a signature stored on the hub under a listed key) and, when it
names explicit ``providers.nodes``, allows each of those providers too. The
policies considered are the ones the hub will have once the apply is done: the
stored ones, overlaid with the ImagePolicies in the same batch, so a folder
holding both the policy and the session applies in one go.

A refusal writes nothing and names the policy rule that failed. The same
evaluation runs again at every reconcile (a policy may tighten later:
:func:`session_policy`, the Session reconciler's hook) and, in the form of a
hub-signed admission, on the agent right before start.

Everything this module needs comes in as arguments (the store, the image
store, the hub's signing key): it knows nothing of the ``Hub`` that wires them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.images import ImageNotFound, ImageStore
from controller.policy import ImageVerdict, PolicyCheck, check, check_image, provider_predicate
from controller.scheduler import NodeView
from controller.store import Store
from specs.identity import canonical_json, sign
from specs.kinds import ImagePolicy, Session
from specs.signing import ADMISSION_PAYLOAD_TYPE, SignatureFormatError, parse_signature


@dataclass(frozen=True)
class ImageFacts:
    """What the hub knows of an image: its size (if stored) and its signatures."""

    size: int | None
    signatures: list[dict[str, Any]]


def image_facts(images: ImageStore, image_hash: str) -> ImageFacts:
    """Size and parsed signatures of an image in the hub's store (unknown → None, [])."""
    try:
        size: int | None = images.info(image_hash).size
    except ImageNotFound:
        size = None
    sigs = []
    for raw in images.signatures(image_hash) if size is not None else []:
        try:
            sigs.append(parse_signature(json.loads(raw)))
        except (SignatureFormatError, ValueError):
            continue
    return ImageFacts(size, sigs)


class ImageFactsCache:
    """``image_facts`` kept while the image store stays as it was (``generation``): a
    Session pass asks for them every time, and each ask was a ``stat`` and a listing of
    the signature directory. With a replica (hubs sharing a store), where another hub
    may store an image or signature this store does not see, nothing is kept."""

    def __init__(self, images: ImageStore, capacity: int = 4096) -> None:
        self.images = images
        self.capacity = capacity
        self._generation: object = -1
        self._facts: dict[str, ImageFacts] = {}
        self._lock = threading.Lock()

    def __call__(self, image_hash: str) -> ImageFacts:
        if self.images.replica is not None:
            return image_facts(self.images, image_hash)
        generation = self.images.current_generation()  # (read before the facts: a write meanwhile
        with self._lock:  # moves it, and the next ask drops what this one keeps)
            if generation != self._generation:
                self._facts.clear()
                self._generation = generation
            facts = self._facts.get(image_hash)
        if facts is not None:
            return facts
        facts = image_facts(self.images, image_hash)
        with self._lock:
            if generation == self._generation:
                if len(self._facts) >= self.capacity:
                    self._facts.clear()
                self._facts[image_hash] = facts
        return facts


def effective_policies(store: Store, batch: list[dict[str, Any]]) -> list[ImagePolicy]:
    """Stored ImagePolicies overlaid with the ones in this apply batch."""
    by_name = {o["metadata"]["name"]: o for o in store.list("ImagePolicy")}
    for obj in batch:
        if obj["kind"] == "ImagePolicy":
            by_name[obj["metadata"]["name"]] = obj
    return [ImagePolicy.model_validate(o) for o in by_name.values()]


def admit(store: Store, images: ImageStore, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Policy errors for the Sessions of ``batch`` (``[{index, path, message}]``; empty = ok)."""
    sessions = [(i, o) for i, o in enumerate(batch) if o["kind"] == "Session"]
    if not sessions:
        return []
    policies = effective_policies(store, batch)
    errors: list[dict[str, Any]] = []
    known: dict[str, ImageFacts] = {}  # (a batch's Sessions mostly share an image)
    for index, obj in sessions:
        spec = obj["spec"]  # (validated before: ``POST /v1/apply`` refuses an invalid one)
        app = str(spec["app"])
        image = str(spec["workload"]["image"]["hash"])
        facts = known.get(image)
        if facts is None:
            facts = known[image] = image_facts(images, image)
        verdict = check_image(app, image, facts.size, facts.signatures, policies)
        if not verdict.allowed:
            errors.append(
                {
                    "index": index,
                    "path": "spec.workload.image.hash",
                    "message": f"refused by image policy: {verdict.reason}",
                }
            )
            continue
        for j, node in enumerate((spec.get("providers") or {}).get("nodes") or []):
            prov = store.try_get("Provider", node)
            labels = prov["metadata"]["labels"] if prov else {}
            node_verdict = check(app, image, facts.size, facts.signatures, policies, node, labels)
            if not node_verdict.allowed:
                errors.append(
                    {
                        "index": index,
                        "path": f"spec.providers.nodes[{j}]",
                        "message": f"refused by image policy: {node_verdict.reason}",
                    }
                )
    return errors


class AdmissionSigner:
    """Signs admissions with the hub's key, each distinct admission once.

    Every Session pass recomputes the admission of each bound placement (a
    policy may have changed) and compares it with the one the placement
    carries; signing it anew each time cost an Ed25519 signature per placement
    per pass. The signature covers only the admission's content, so the same
    content always has a valid signature already made: a bounded LRU of them,
    keyed by the canonical content, makes a converged pass sign nothing.
    """

    def __init__(self, key: Ed25519PrivateKey, capacity: int = 100_000) -> None:
        self.key = key
        self.capacity = capacity
        self.signed = 0  # signatures made, for tests and /metrics
        self._cache: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def sign(self, admission: dict[str, Any]) -> dict[str, Any]:
        """``admission`` with the hub's signature (made once per distinct content)."""
        content = {k: v for k, v in admission.items() if k != "hubSignature"}
        body = canonical_json(content)  # what is signed is the key too
        with self._lock:
            hit = self._cache.get(body)
            if hit is not None:
                self._cache.move_to_end(body)
                return _copy(hit)
        signed = {**content, "hubSignature": sign(self.key, ADMISSION_PAYLOAD_TYPE, body)}
        with self._lock:
            self.signed += 1
            self._cache[body] = signed
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return _copy(signed)


def _copy(admission: dict[str, Any]) -> dict[str, Any]:
    """A copy the caller may edit: its values are strings and lists of strings or of
    flat signature objects."""
    return {
        k: [dict(x) if isinstance(x, dict) else x for x in v] if isinstance(v, list) else v
        for k, v in admission.items()
    }


@dataclass
class _Judgement:
    """What the ImagePolicies said of one app and image (``session_policy``), for as long
    as the policies (``version``: names and resourceVersions) and the image's ``facts``
    (the same object while the image store is unchanged) stay the same."""

    app: str
    image: str
    version: tuple[tuple[str, int], ...]
    facts: ImageFacts
    policies: list[ImagePolicy]
    violation: str | None
    by_node: Callable[[str, Mapping[str, str]], str | None]
    nodes: dict[tuple[str, tuple[tuple[str, str], ...]], ImageVerdict] = field(default_factory=dict)

    def on(self, node: str, labels: Mapping[str, str]) -> ImageVerdict:
        """The one policy that allows the image on ``node`` (with ``labels``), if any."""
        key = (node, tuple(sorted(labels.items())))
        verdict = self.nodes.get(key)
        if verdict is None:
            if len(self.nodes) >= 65_536:  # (nodes × label sets seen)
                self.nodes.clear()
            facts = self.facts
            verdict = check(
                self.app, self.image, facts.size, facts.signatures, self.policies, node, labels
            )
            self.nodes[key] = verdict
        return verdict


def session_policy(
    images: ImageStore, signer: AdmissionSigner
) -> Callable[[Session, Store], PolicyCheck]:
    """The reconcile-time ImagePolicy check (the Session reconciler's hook).

    Per pass it reads the stored policies and what the hub knows of the image,
    and answers: the image is not allowed at all (``violation``: stop
    everything), or which providers are allowed (``allowed``), and how to sign
    the admission an agent checks before start (``admit``, signed by
    ``signer``, the hub's key through an ``AdmissionSigner``: each distinct admission once).
    The verdict on an app and image is kept until a policy or the image's facts change
    (``_Judgement``): a pass then reads the policies' names and versions only.
    """

    validated: dict[tuple[str, int], ImagePolicy] = {}  # (name, resourceVersion) → model
    facts_of = ImageFactsCache(images)
    judged: dict[tuple[str, str], _Judgement] = {}  # (app, image) → the last judgement

    def policy(obj: dict[str, Any]) -> ImagePolicy:
        """The stored policy as a model, validated once per version (not once a pass)."""
        key = (obj["metadata"]["name"], obj["metadata"]["resourceVersion"])
        model = validated.get(key)
        if model is None:
            if len(validated) >= 1024:  # (old versions: forgotten all at once, rarely)
                validated.clear()
            model = validated[key] = ImagePolicy.model_validate(obj)
        return model

    def judge(app: str, image: str, store: Store) -> _Judgement:
        """The policies' verdict on ``app`` running ``image``, made again only when a
        policy or what the hub knows of the image changed (each verdict verifies the
        image's signatures: three times a pass, before it was kept)."""
        stored = store.list("ImagePolicy")
        version = tuple((o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in stored)
        facts = facts_of(image)
        last = judged.get((app, image))
        if last is not None and last.version == version and last.facts is facts:
            return last
        policies = [policy(o) for o in stored]
        verdict = check_image(app, image, facts.size, facts.signatures, policies)
        made = _Judgement(
            app,
            image,
            version,
            facts,
            policies,
            None if verdict.allowed else verdict.reason,
            provider_predicate(app, image, facts.size, facts.signatures, policies),
        )
        if len(judged) >= 4096:  # (apps × images seen: forgotten all at once, rarely)
            judged.clear()
        judged[(app, image)] = made
        return made

    def hook(session: Session, store: Store) -> PolicyCheck:
        app = session.spec.app
        image = session.spec.workload.image.hash
        judgement = judge(app, image, store)
        if judgement.violation is not None:
            return PolicyCheck(violation=judgement.violation)
        by_node = judgement.by_node

        def allowed(view: NodeView) -> str | None:
            return by_node(view.node_id, view.labels)

        def admit(placement: str, node: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
            v = judgement.on(node, labels)
            if not v.allowed or v.policy is None or v.by is None:
                return None
            admission: dict[str, Any] = {
                "placement": placement,
                "node": node,
                "app": app,
                "imageHash": image,
                "allowedBy": v.by,
                "policy": v.policy,
                "signerKeys": [v.signer] if v.signer else [],
                "signatures": [v.signature] if v.signature else [],
            }
            return signer.sign(admission)

        return PolicyCheck(allowed=allowed, violation=None, admit=admit)

    return hook
