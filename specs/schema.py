"""JSON Schema (draft 2020-12) of the user kinds, generated from the pydantic models.

The models in :mod:`specs.kinds` are the single source of truth; this module
only turns them into files an editor understands. ``gu schema -o DIR`` calls
:func:`write_schemas`, which writes ``<kind>.json`` per user kind and
``all.json``, one schema for any of them chosen by ``kind``; a manifest that
starts with the modeline ``# yaml-language-server: $schema=./schemas/session.json``
then gets completion, hover docs and red squiggles in any editor running the
YAML language server.

pydantic's output is adjusted where a manifest differs from a stored object:

- ``apiVersion`` and ``kind`` are required (the loader refuses a manifest
  without them, even though the models default them);
- ``status`` and the store-owned ``metadata`` fields (``uid``,
  ``resourceVersion``…) are never required and are marked ``readOnly``: the
  hub writes them, and ``gu apply`` refuses a manifest that sets them;
- strings checked by a validator with a regular expression (names, image
  hashes, node ids) carry that expression as ``pattern``, so an editor flags a
  bad one before ``gu apply`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final, Union

from pydantic import Field, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from specs.kinds import (
    _HASH_RE,
    _NODE_RE,
    USER_KINDS,
    UnknownKindError,
    _check_hash,
    _check_node,
    resolve_kind,
)
from specs.loader import HUB_OWNED_METADATA
from specs.meta import _NAME_RE, API_VERSION, _check_name

__all__ = [
    "DRAFT",
    "SCHEMA_ID_PREFIX",
    "all_kinds_schema",
    "json_schema",
    "schema_file_name",
    "write_schemas",
]

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
#: ``$id`` of a kind's schema is this prefix and the file name. A URN: the
#: schemas are identified, not fetched from anywhere.
SCHEMA_ID_PREFIX: Final = "urn:gu:schema:v1:"
ALL_FILE: Final = "all.json"

_HUB_OWNED_NOTE: Final = "Written by the hub; leave it out of manifests."

# The validators whose whole check is one regular expression.
_PATTERNS: Final[dict[Callable[[str], str], str]] = {
    _check_name: _NAME_RE.pattern,
    _check_hash: _HASH_RE.pattern,
    _check_node: _NODE_RE.pattern,
}


class _GuJsonSchema(GenerateJsonSchema):
    """pydantic's generator, plus ``pattern`` for regex-only validators."""

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        out = super().function_after_schema(schema)
        pattern = _PATTERNS.get(schema["function"]["function"])  # type: ignore[arg-type]
        if pattern is not None and out.get("type") == "string":
            out = {**out, "pattern": pattern}
        return out


def schema_file_name(kind: str) -> str:
    """``Session`` → ``session.json``."""
    return f"{kind.lower()}.json"


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one user kind (any spelling ``resolve_kind`` accepts).

    Raises :class:`~specs.kinds.UnknownKindError` for an unknown kind and for a
    system kind (Provider, Placement), which is never written in a manifest.
    """
    canonical = resolve_kind(kind)
    if canonical not in USER_KINDS:
        raise UnknownKindError(f"{canonical} is written by the hub; it has no manifest schema")
    schema = USER_KINDS[canonical].model_json_schema(schema_generator=_GuJsonSchema)
    defs = schema.get("$defs", {})
    _adjust_kind(schema, defs, canonical)
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID_PREFIX + schema_file_name(canonical),
        **schema,
        "title": f"{API_VERSION} {canonical}",
    }


def all_kinds_schema() -> dict[str, Any]:
    """One schema for a document of any user kind, chosen by its ``kind``."""
    # Built at run time from the registry, so a new user kind needs no edit here.
    union: Any = Union[tuple(USER_KINDS.values())]  # noqa: UP007
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[union, Field(discriminator="kind")])
    schema = adapter.json_schema(schema_generator=_GuJsonSchema)
    defs = schema["$defs"]
    for kind in USER_KINDS:
        _adjust_kind(defs[kind], defs, kind)
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID_PREFIX + ALL_FILE,
        "title": f"{API_VERSION} manifest (any user kind)",
        "description": "One gu manifest document: " + ", ".join(USER_KINDS) + ".",
        **schema,
    }


def write_schemas(out_dir: Path) -> list[Path]:
    """Write ``<kind>.json`` for every user kind and ``all.json``; return the paths.

    The output is deterministic (same models, same bytes), so the files can be
    committed next to the manifests and diffed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    targets = [(schema_file_name(kind), json_schema(kind)) for kind in USER_KINDS]
    targets.append((ALL_FILE, all_kinds_schema()))
    for name, schema in targets:
        path = out_dir / name
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _adjust_kind(schema: dict[str, Any], defs: dict[str, Any], kind: str) -> None:
    """Make one kind's object schema describe a manifest (see the module docstring)."""
    props = schema["properties"]
    props["apiVersion"] = {"const": API_VERSION, "type": "string", "title": "API version"}
    props["kind"] = {"const": kind, "type": "string", "title": "Kind"}
    required = [r for r in schema.get("required", []) if r != "status"]
    schema["required"] = [
        "apiVersion",
        "kind",
        *[r for r in required if r not in ("apiVersion", "kind")],
    ]
    schema["description"] = f"A {kind} manifest ({API_VERSION})."
    if "status" in props:
        props["status"] = {**props["status"], "readOnly": True, "description": _HUB_OWNED_NOTE}
    meta = defs.get("ObjectMeta")
    if meta is not None:
        meta_props = meta["properties"]
        for name in HUB_OWNED_METADATA:
            if name in meta_props:
                meta_props[name] = {
                    **meta_props[name],
                    "readOnly": True,
                    "description": _HUB_OWNED_NOTE,
                }
        meta["required"] = [r for r in meta.get("required", []) if r not in HUB_OWNED_METADATA]
