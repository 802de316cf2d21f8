"""JSON Schema export: one schema per user kind and one for any of them.

The schemas come from the same models as the loader, so a manifest the loader
accepts must validate against them; that is checked with ``jsonschema`` where
it is installed (it is not a dependency of gu).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from specs.kinds import USER_KINDS, UnknownKindError
from specs.loader import load_paths
from specs.schema import DRAFT, all_kinds_schema, json_schema, write_schemas

GOOD = Path(__file__).parent / "fixtures" / "manifests" / "good"
SESSION = GOOD / "sessions" / "render.yaml"


def good_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(d.kind, d.data) for d in load_paths([GOOD])]


@pytest.mark.parametrize("kind", list(USER_KINDS))
def test_every_user_kind_has_a_json_schema_with_spec(kind: str) -> None:
    schema = json_schema(kind)
    assert json.loads(json.dumps(schema)) == schema  # plain JSON, nothing Python-only
    assert schema["$schema"] == DRAFT
    assert schema["$id"].endswith(f"{kind.lower()}.json")
    assert schema["title"] == f"gu/v1 {kind}"
    assert "spec" in schema["properties"]
    assert schema["properties"]["kind"]["const"] == kind
    assert schema["required"][:2] == ["apiVersion", "kind"]
    assert "spec" in schema["required"] and "metadata" in schema["required"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("kind", list(USER_KINDS))
def test_status_and_store_owned_metadata_are_not_required(kind: str) -> None:
    schema = json_schema(kind)
    assert "status" not in schema["required"]
    assert schema["properties"]["status"]["readOnly"] is True
    meta = schema["$defs"]["ObjectMeta"]
    assert meta["required"] == ["name"]
    for field in ("uid", "generation", "resourceVersion", "creationTimestamp"):
        assert meta["properties"][field]["readOnly"] is True


def test_kind_spellings_resolve_and_system_kinds_have_no_schema() -> None:
    assert json_schema("sessions")["title"] == "gu/v1 Session"
    with pytest.raises(UnknownKindError):
        json_schema("Provider")
    with pytest.raises(UnknownKindError):
        json_schema("Nonsense")


def test_regex_checked_strings_carry_their_pattern() -> None:
    defs = json_schema("Session")["$defs"]
    assert defs["ObjectMeta"]["properties"]["name"]["pattern"].startswith("^[a-z0-9]")
    assert defs["ImageRef"]["properties"]["hash"]["pattern"] == "^sha3-256:[0-9a-f]{64}$"


def test_all_kinds_schema_chooses_by_kind() -> None:
    schema = all_kinds_schema()
    assert schema["$schema"] == DRAFT
    assert [ref["$ref"] for ref in schema["oneOf"]] == [f"#/$defs/{k}" for k in USER_KINDS]
    for kind in USER_KINDS:
        assert schema["$defs"][kind]["properties"]["kind"]["const"] == kind


def test_write_schemas_writes_one_file_per_user_kind_and_all(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    paths = write_schemas(out)
    assert [p.name for p in paths] == [
        "app.json",
        "imagepolicy.json",
        "priority.json",
        "virtualnetwork.json",
        "session.json",
        "all.json",
    ]
    assert sorted(out.iterdir()) == sorted(paths)
    assert json.loads((out / "session.json").read_text()) == json_schema("Session")
    assert json.loads((out / "all.json").read_text()) == all_kinds_schema()


def test_write_schemas_is_deterministic(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in write_schemas(tmp_path / "a")]
    second = [p.read_bytes() for p in write_schemas(tmp_path / "b")]
    assert first == second


def test_good_manifests_validate_against_their_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for kind, data in good_documents():
        jsonschema.Draft202012Validator(json_schema(kind)).validate(data)
        jsonschema.Draft202012Validator(all_kinds_schema()).validate(data)


def test_schema_flags_what_the_loader_refuses() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema("Session"))
    data = dict(load_paths([SESSION])[0].data)
    data["spec"] = {**data["spec"], "restartpolicy": "Never"}
    assert not validator.is_valid(data)
    data = dict(load_paths([SESSION])[0].data)
    data["metadata"] = {"name": "Bad_Name"}
    assert not validator.is_valid(data)
