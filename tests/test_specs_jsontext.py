"""Canonical JSON made by orjson, the same text as the standard library's (specs/jsontext.py)."""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from specs import jsontext
from specs.kinds import Usage


class Color(enum.StrEnum):
    RED = "red"


VALUES: list[Any] = [
    {},
    [],
    {"b": 1, "a": [True, False, None], "c": {"z": 0.5, "y": -3, "x": ""}},
    {"name": "Zürich ☃", "emoji": "🙂", "quote": 'a "b" \\ c\n\t'},
    {"ctl": "\x00\x1f\x7f", "slash": "a/b", "html": "<&>"},
    {1: "int key", 2: "another"},
    {"big": 2**70, "neg": -(2**63), "max": 2**64 - 1},
    {"floats": [0.1, 1e16, 1.5e300, 2.0, -0.0, 123456789.0, 5e-324]},
    OrderedDict([("b", 1), ("a", 2)]),
    {"enum": Color.RED},
    ("tuple", 1),
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_the_text_is_the_standard_librarys(value: Any) -> None:
    want = json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert jsontext.dumps(value) == want
    assert jsontext.loads(want) == json.loads(want)


def test_what_the_standard_library_refuses_is_refused() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({"when": datetime.now(UTC)})
    with pytest.raises(TypeError):
        jsontext.dumps({"set": {1, 2}})


def test_nan_is_refused_by_the_models_and_read_back_from_old_text() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        Usage.model_validate({"cpuPercent": float("nan")})
    assert math.isnan(jsontext.loads('{"x":NaN}')["x"])  # (text an older hub wrote)
    assert jsontext.dumps({"x": float("inf")}) == '{"x":null}'
