"""Object metadata and status shapes shared by every kind.

Every gu object is ``apiVersion: gu/v1``, ``kind``, ``metadata``, ``spec`` and
``status``. The user writes ``metadata.name``/``labels``/``annotations`` and
``spec``; the store fills the rest of ``metadata`` and the controllers write
``status``. Conditions follow kstatus (``Ready``, ``Reconciling``, ``Stalled``)
so that a script can tell converged, working and stuck apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

API_VERSION: Final = "gu/v1"

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
_LABEL_KEY_RE = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1-63 lower-case letters, digits, '-' or '.', starting and ending "
            "with a letter or digit"
        )
    return value


def _check_label_key(key: str) -> str:
    if not _LABEL_KEY_RE.match(key):
        raise ValueError(f"label key {key!r} is not valid (letters, digits, '-', '_', '.')")
    return key


def _check_label_value(value: str) -> str:
    if not _LABEL_VALUE_RE.match(value):
        raise ValueError(
            f"label value {value!r} is not valid (up to 63 letters, digits, '-', '_', '.')"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Labels = dict[
    Annotated[str, AfterValidator(_check_label_key)],
    Annotated[str, AfterValidator(_check_label_value)],
]


def parse_labels(items: Iterable[str], option: str = "--label") -> dict[str, str]:
    """``("k=v", …)`` from a command line → a validated label dict; ValueError naming
    ``option`` and what is wrong (the agent's ``--label``, the CLI's token and provider
    labels)."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} zone=lab")
        labels[key.strip()] = value.strip()
    try:
        TypeAdapter(Labels).validate_python(labels)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"{option}: {problems}") from None
    return labels


class Model(BaseModel):
    """Base of every spec shape: unknown fields are errors, not silently dropped, and so
    is a number JSON has not (NaN, infinity)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, validate_default=True, allow_inf_nan=False
    )


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what every timestamp in gu is)."""
    return datetime.now(UTC)


class ObjectMeta(Model):
    """``metadata``: the user sets name, labels, annotations; the store the rest."""

    name: Name
    labels: Labels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resourceVersion: int | None = None
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None
    finalizers: list[str] = Field(default_factory=list)


ConditionType = Literal["Ready", "Reconciling", "Stalled"]
ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """One kstatus condition. ``lastTransitionTime`` moves only when ``status`` flips."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    lastTransitionTime: datetime | None = None


class Status(Model):
    """The part of ``status`` every kind has."""

    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str = "",
    message: str = "",
    now: datetime | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set; the transition time moves only on a flip.

    Level-triggered reconcilers call this every pass; keeping the old timestamp
    when nothing flipped is what makes a converged resync write nothing.
    """
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        when = cond.lastTransitionTime if cond.status == status else (now or utcnow())
        out.append(
            Condition(
                type=type_, status=status, reason=reason, message=message, lastTransitionTime=when
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                lastTransitionTime=now or utcnow(),
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of ``type_``, or None."""
    for cond in conditions:
        if cond.type == type_:
            return cond
    return None
