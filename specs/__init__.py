"""specs: the contract of gu — every kind's shape, YAML loading, schemas and formats.

``specs`` imports nothing else of gu; everything else imports it.
"""

from specs.kinds import (
    KINDS,
    SYSTEM_KINDS,
    USER_KINDS,
    App,
    ImagePolicy,
    Placement,
    Priority,
    Provider,
    Session,
    UnknownKindError,
    VirtualNetwork,
    parse_object,
    plural,
    resolve_kind,
)
from specs.meta import API_VERSION, Condition, ObjectMeta, Status, get_condition, set_condition

__all__ = [
    "API_VERSION",
    "KINDS",
    "SYSTEM_KINDS",
    "USER_KINDS",
    "App",
    "Condition",
    "ImagePolicy",
    "ObjectMeta",
    "Placement",
    "Priority",
    "Provider",
    "Session",
    "Status",
    "UnknownKindError",
    "VirtualNetwork",
    "get_condition",
    "parse_object",
    "plural",
    "resolve_kind",
    "set_condition",
]
