"""The kinds of gu: user kinds written in YAML, system kinds written by the hub.

These pydantic models are the single source of truth for shapes: YAML
validation, API payloads, JSON Schema and the UI all come from them. Field
names are the wire names (camelCase), so no alias can be forgotten.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from specs.meta import API_VERSION, Condition, Labels, Model, Name, ObjectMeta, Status

_HASH_RE = re.compile(r"^sha3-256:[0-9a-f]{64}$")
_NODE_RE = re.compile(r"^0x[0-9a-f]{40}$")


def _check_hash(value: str) -> str:
    if not _HASH_RE.match(value):
        raise ValueError("must be 'sha3-256:' followed by 64 lower-case hex digits")
    return value


def _check_pubkey(value: str) -> str:
    prefix, _, body = value.partition(":")
    if prefix != "ed25519" or not body:
        raise ValueError("must be 'ed25519:<base64 of the 32-byte public key>'")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'ed25519:' is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return value


def _check_node(value: str) -> str:
    if not _NODE_RE.match(value):
        raise ValueError("a node id is '0x' followed by 40 lower-case hex digits")
    return value


def _check_node_list(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("give at least one node id, or leave nodes out")
    if len(set(value)) != len(value):
        raise ValueError("a node id is listed twice")
    return value


ImageHash = Annotated[str, AfterValidator(_check_hash)]
PublicKey = Annotated[str, AfterValidator(_check_pubkey)]
NodeId = Annotated[str, AfterValidator(_check_node)]


# --------------------------------------------------------------------- App


class Quota(Model):
    """What one App's Sessions may ask for in all (None: no limit), checked at apply."""

    sessions: int | None = Field(default=None, ge=0)
    placements: int | None = Field(default=None, ge=0)
    cpu: float | None = Field(default=None, ge=0)
    memoryMiB: int | None = Field(default=None, ge=0)
    #: bytes of the images this app pushed, kept on the hub (checked at each push)
    imageBytes: int | None = Field(default=None, ge=0)


class AppSpec(Model):
    """An application identity: the Ed25519 public keys it logs in with, and its quota."""

    publicKeys: list[PublicKey] = Field(default_factory=list)
    description: str = ""
    quota: Quota | None = None


class App(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["App"] = "App"
    metadata: ObjectMeta
    spec: AppSpec
    status: Status = Field(default_factory=Status)


# ------------------------------------------------------------- ImagePolicy


#: Labels an agent reports about itself (``gu agent --label``) reach schedulers under
#: this prefix; they are claims, so no ImagePolicy may select on them.
SELF_LABEL_PREFIX = "self."


def _trusted_selector(selector: dict[str, str]) -> dict[str, str]:
    claimed = sorted(k for k in selector if k.startswith(SELF_LABEL_PREFIX))
    if claimed:
        raise ValueError(
            f"{', '.join(claimed)}: labels under {SELF_LABEL_PREFIX!r} are what agents say "
            "of themselves and cannot be trusted; select on labels the admin sets "
            "(`gu hub token create --label K=V`, `gu label provider NODE K=V`)"
        )
    return selector


class ProviderAllow(Model):
    """Providers an app may use: listed node ids, or providers whose (trusted) labels match."""

    nodes: list[NodeId] = Field(default_factory=list)
    selector: Annotated[Labels, AfterValidator(_trusted_selector)] = Field(default_factory=dict)


class ImagePolicySpec(Model):
    """What the listed apps may run, and where. No policy means nothing is allowed."""

    apps: list[Name] = Field(min_length=1)
    allowProviders: ProviderAllow | None = None
    allowImages: list[ImageHash] = Field(default_factory=list)
    allowImagesSignedBy: list[PublicKey] = Field(default_factory=list)


class ImagePolicy(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["ImagePolicy"] = "ImagePolicy"
    metadata: ObjectMeta
    spec: ImagePolicySpec
    status: Status = Field(default_factory=Status)


# ---------------------------------------------------------------- Priority


OnPreempted = Literal["Suspend", "Stop"]


class PrioritySpec(Model):
    """A priority class. Higher ``value`` wins providers from lower ones."""

    value: int = Field(ge=-1_000_000, le=1_000_000_000)
    preemptionPolicy: Literal["PreemptLowerPriority", "Never"] = "PreemptLowerPriority"
    onPreempted: OnPreempted = "Suspend"
    default: bool = False
    description: str = ""


class Priority(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["Priority"] = "Priority"
    metadata: ObjectMeta
    spec: PrioritySpec
    status: Status = Field(default_factory=Status)


# ---------------------------------------------------------- VirtualNetwork


def _check_multicast(value: str) -> str:
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None
    if not addr.is_multicast:
        raise ValueError(f"{value} is not a multicast address (224.0.0.0/4)")
    return value


class Multicast(Model):
    """The per-host QEMU multicast bus of the network (bound to 127.0.0.1)."""

    group: Annotated[str, AfterValidator(_check_multicast)]
    port: int = Field(ge=1024, le=65535)


def default_bus(network: str) -> str:
    """The bus (``GROUP:PORT``) of a network that names none: from its name, in the
    administratively scoped 239.255.0.0/16, ports 20000–59999 (each network's bus lives in
    a network namespace of its own where the agent may make one)."""
    digest = hashlib.sha256(network.encode()).digest()
    port = 20000 + int.from_bytes(digest[2:4], "big") % 40000
    return f"239.255.{digest[0]}.{digest[1]}:{port}"


def _check_cidr(value: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"not an IPv4 network in CIDR form (e.g. 10.77.0.0/24): {exc}") from None
    if net.prefixlen > 30:
        raise ValueError("the network must have room for members: a prefix of /30 or shorter")
    return value


class VirtualNetworkSpec(Model):
    """A network joining the VMs of every session that names it."""

    cidr: Annotated[str, AfterValidator(_check_cidr)]
    mtu: int = Field(default=1400, ge=576, le=9000)
    multicast: Multicast | None = None


class NetworkMember(Model):
    """One member placement of a network, as the hub sees it."""

    placement: str
    node: str | None = None
    ip: str | None = None
    mac: str | None = None
    reason: str = ""


class VirtualNetworkStatus(Status):
    members: list[NetworkMember] = Field(default_factory=list)


class VirtualNetwork(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["VirtualNetwork"] = "VirtualNetwork"
    metadata: ObjectMeta
    spec: VirtualNetworkSpec
    status: VirtualNetworkStatus = Field(default_factory=VirtualNetworkStatus)


# ----------------------------------------------------------------- Session


class ProviderSelector(Model):
    """Filters on a provider's inventory and labels; every given field must match."""

    os: str | None = None
    minCores: int | None = Field(default=None, ge=1)
    minMemoryMiB: int | None = Field(default=None, ge=1)
    labels: Labels = Field(default_factory=dict)
    idle: bool | None = None


class Providers(Model):
    """Where a session runs: ``count`` distinct providers, or the explicit ``nodes``."""

    count: int = Field(default=1, ge=1, le=10_000)
    selector: ProviderSelector | None = None
    nodes: Annotated[list[NodeId], AfterValidator(_check_node_list)] | None = None


class ImageRef(Model):
    """The image a workload runs, named by the sha3-256 of its bytes."""

    hash: ImageHash
    url: str | None = None


class Resources(Model):
    cpu: float = Field(default=1.0, gt=0, le=1024)
    memoryMiB: int = Field(default=256, gt=0, le=16 * 1024 * 1024)


def _check_data_path(value: str) -> str:
    parts = PurePosixPath(value).parts
    if not value or value.startswith("/") or ".." in parts or not parts or "\\" in value:
        raise ValueError(
            f"{value!r}: a path relative to the workload's working directory, without "
            "'..' (e.g. in/data.bin or out)"
        )
    return str(PurePosixPath(*parts))


DataPath = Annotated[str, Field(max_length=200), AfterValidator(_check_data_path)]


class Input(Model):
    """A blob (``gu blob push``) the workload reads, verified by its hash and read-only."""

    hash: ImageHash
    path: DataPath
    extract: bool = Field(
        default=False, description="the blob is a tar (a pushed folder): unpack it at path"
    )


class Outputs(Model):
    """What the workload leaves under ``path`` is packed, hashed and sent to the hub."""

    path: DataPath
    maxMiB: int = Field(default=100, ge=1, le=1024 * 1024)


MAX_INPUTS = 16


class Workload(Model):
    """What runs: the image, its command and environment, and its size."""

    runtime: Literal["native", "docker", "vm"]
    image: ImageRef
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    inputs: list[Input] = Field(default_factory=list, max_length=MAX_INPUTS)
    outputs: Outputs | None = None

    @model_validator(mode="after")
    def _data_paths_apart(self) -> Workload:
        paths = [i.path for i in self.inputs] + ([self.outputs.path] if self.outputs else [])
        for i, a in enumerate(paths):
            for b in paths[i + 1 :]:
                if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
                    raise ValueError(
                        f"inputs and outputs must not overlap: {a!r} and {b!r}; give each "
                        "its own path"
                    )
        return self


class SessionSpec(Model):
    app: Name
    priority: Name | None = None
    providers: Providers = Field(default_factory=Providers)
    workload: Workload
    network: Name | None = None
    restartPolicy: Literal["Never", "OnFailure", "Always"] = "Never"
    suspend: bool = False

    @field_validator("network")
    @classmethod
    def _network_needs_a_vm(cls, network: str | None, info: ValidationInfo) -> str | None:
        workload = info.data.get("workload")  # (validated before: declared before network)
        if network is not None and workload is not None and workload.runtime != "vm":
            raise ValueError(
                f"only runtime: vm workloads may join a VirtualNetwork (runtime "
                f"{workload.runtime} has no network device yet); remove spec.network or run "
                "the workload as a VM"
            )
        return network


SessionPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class PlacementSummary(Model):
    name: str
    node: str | None = None
    state: str = "Pending"
    exitCode: int | None = None
    reason: str = ""


class SessionStatus(Status):
    phase: SessionPhase = "Pending"
    #: the priority the Session is scheduled at: its class (None: no Priority) and value
    priorityClass: str | None = None
    priority: int = 0
    placements: list[PlacementSummary] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)


class Session(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["Session"] = "Session"
    metadata: ObjectMeta
    spec: SessionSpec
    status: SessionStatus = Field(default_factory=SessionStatus)


# ---------------------------------------------------------------- Provider


class OsInfo(Model):
    name: str
    version: str


class CpuInfo(Model):
    architecture: str
    bit: list[int]
    cores: int
    threads: int


class RuntimeInfo(Model):
    """One runtime driver of a provider, as its fingerprint found it."""

    name: str = Field(max_length=40)
    version: str = Field(default="", max_length=200)
    accel: str | None = Field(
        default=None, max_length=20, description="the VM accelerator in use: kvm, tcg, hvf, whpx"
    )
    suspendKeepsMemory: bool = Field(
        default=True, description="a suspended workload still holds its memory"
    )
    details: dict[str, str] = Field(default_factory=dict, max_length=32)


class Inventory(Model):
    """What a provider has, reported by its agent at every heartbeat."""

    os: OsInfo
    cpu: CpuInfo
    memoryBytes: int
    storageBytes: int
    runtimes: list[str] = Field(default_factory=list)
    runtimeInfo: list[RuntimeInfo] = Field(default_factory=list, max_length=16)


class PeerPath(Model):
    """How this provider reaches another member node of a network."""

    path: Literal["direct", "relayed", "unknown"] = "unknown"
    endpoint: str | None = Field(default=None, max_length=100)


class NetworkCounters(Model):
    """What this provider's bridge carried on one VirtualNetwork since the agent started."""

    framesOut: int = 0
    bytesOut: int = 0
    framesIn: int = 0
    bytesIn: int = 0
    dropped: dict[str, int] = Field(default_factory=dict, max_length=16)
    peers: dict[str, PeerPath] = Field(default_factory=dict, max_length=1024)


class Usage(Model):
    """What a provider is using right now."""

    cpuPercent: float = 0.0
    memoryAvailableBytes: int = 0
    storageFreeBytes: int = 0
    workloads: int = 0
    #: per VirtualNetwork it hosts a member of: frames and bytes bridged, drops, paths
    networks: dict[str, NetworkCounters] = Field(default_factory=dict, max_length=256)


class ProviderSpec(Model):
    nodeId: NodeId
    displayName: str = ""
    publicKey: PublicKey
    labels: Labels = Field(default_factory=dict)


class ProviderStatus(Status):
    inventory: Inventory | None = None
    usage: Usage = Field(default_factory=Usage)
    lastHeartbeat: datetime | None = None
    heartbeatSeconds: float | None = None
    endpoints: list[str] = Field(default_factory=list)


class Provider(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["Provider"] = "Provider"
    metadata: ObjectMeta
    spec: ProviderSpec
    status: ProviderStatus = Field(default_factory=ProviderStatus)


# --------------------------------------------------------------- Placement

PlacementState = Literal[
    "Pending", "Pulling", "Starting", "Running", "Suspended", "Succeeded", "Failed", "Stopped"
]
DesiredState = Literal["Running", "Suspended", "Stopped"]


class Preemption(Model):
    """Set by the hub on a placement it preempted: by which Session, how, and when.

    While set, the placement's desiredState is ``Suspended`` (``action: Suspend``: it
    keeps its memory and resumes on the same provider) or ``Stopped`` (``Stop``: its
    slot is filled again by a new placement, queued at its priority).
    """

    session: Name
    priority: int
    action: OnPreempted
    at: datetime


class Admission(Model):
    """The hub's signed word that this placement's image is allowed (checked by the agent).

    ``allowedBy`` says which rule of ImagePolicy ``policy`` admitted the image:
    its hash is listed, or one of ``signatures`` verifies under one of
    ``signerKeys``. ``hubSignature`` (see ``specs.signing.sign_admission``)
    covers every other field, so an agent can tell hub data from tampering.
    """

    placement: Name
    node: NodeId
    app: Name
    imageHash: ImageHash
    allowedBy: Literal["hash", "signature"]
    policy: Name
    signerKeys: list[PublicKey] = Field(default_factory=list)
    signatures: list[dict[str, Any]] = Field(default_factory=list)
    hubSignature: str = ""


class NetworkInterface(Model):
    """A member's interface on its VirtualNetwork, given by the hub once, kept for life."""

    address: str  # "10.77.0.2/24"
    mac: str = Field(pattern=r"^02(:[0-9a-f]{2}){5}$")
    mtu: int = Field(ge=576, le=9000)
    #: the network's per-host bus, ``GROUP:PORT`` (its ``multicast``, or ``default_bus``)
    bus: str | None = Field(default=None, pattern=r"^\d+\.\d+\.\d+\.\d+:\d+$")


class PlacementSpec(Model):
    session: Name
    app: Name
    node: NodeId | None = None
    desiredState: DesiredState = "Running"
    workload: Workload
    restartPolicy: Literal["Never", "OnFailure", "Always"] = "Never"
    network: Name | None = None
    networkInterface: NetworkInterface | None = None
    admission: Admission | None = None
    #: the Session's priority value and what preemption does to it (from its Priority)
    priority: int = 0
    onPreempted: OnPreempted = "Suspend"
    preemption: Preemption | None = None


class OutputsRecord(Model):
    """The outputs a finished placement left: a blob on the hub (``gu outputs``)."""

    hash: ImageHash
    size: int
    files: int


class PlacementStatus(Status):
    state: PlacementState = "Pending"
    exitCode: int | None = None
    reason: str = ""
    message: str = ""
    address: str | None = None
    restarts: int = 0
    startedAt: datetime | None = None
    finishedAt: datetime | None = None
    outputs: OutputsRecord | None = None


class Placement(Model):
    apiVersion: Literal["gu/v1"] = API_VERSION
    kind: Literal["Placement"] = "Placement"
    metadata: ObjectMeta
    spec: PlacementSpec
    status: PlacementStatus = Field(default_factory=PlacementStatus)


# ---------------------------------------------------------------- registry

Object = App | ImagePolicy | Priority | VirtualNetwork | Session | Provider | Placement

USER_KINDS: dict[str, type[Model]] = {
    "App": App,
    "ImagePolicy": ImagePolicy,
    "Priority": Priority,
    "VirtualNetwork": VirtualNetwork,
    "Session": Session,
}
SYSTEM_KINDS: dict[str, type[Model]] = {"Provider": Provider, "Placement": Placement}
KINDS: dict[str, type[Model]] = {**USER_KINDS, **SYSTEM_KINDS}

_PLURALS = {k: k + "s" for k in KINDS} | {"ImagePolicy": "ImagePolicies", "Priority": "Priorities"}
_ALIASES: dict[str, str] = {}
for _kind, _plural in _PLURALS.items():
    for _alias in (_kind, _plural):
        _ALIASES[_alias.lower()] = _kind
_ALIASES.update({"vnet": "VirtualNetwork", "vnets": "VirtualNetwork", "peers": "Provider"})


class UnknownKindError(LookupError):
    """A kind name that gu does not know."""


def resolve_kind(name: str) -> str:
    """Map a singular, plural or lower-case kind name to its canonical kind."""
    kind = _ALIASES.get(name.lower())
    if kind is None:
        raise UnknownKindError(f"unknown kind {name!r}; known kinds: {', '.join(sorted(KINDS))}")
    return kind


def plural(kind: str) -> str:
    """The plural of a canonical kind name ("ImagePolicy" → "ImagePolicies")."""
    return _PLURALS[kind]


def parse_object(data: dict[str, Any]) -> Model:
    """Validate one object (a dict with ``kind``) into its model."""
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UnknownKindError(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return KINDS[kind].model_validate(data)


__all__ = [
    "KINDS",
    "SYSTEM_KINDS",
    "USER_KINDS",
    "App",
    "Condition",
    "ImagePolicy",
    "Placement",
    "Priority",
    "Provider",
    "Session",
    "UnknownKindError",
    "VirtualNetwork",
    "parse_object",
    "plural",
    "resolve_kind",
]
