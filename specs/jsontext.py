"""Canonical JSON text, made and read fast (orjson), byte for byte what ``json`` makes.

The store keeps every field as canonical JSON (sorted keys, no spaces) and the hub
signs canonical JSON: a Session pass encodes a few objects and decodes a few more, and
the standard library's encoder was a tenth of it. orjson does the same ten times
faster. Where its text would differ from ``json.dumps(value, sort_keys=True,
separators=(",", ":"))`` — a character past ASCII, or DEL (``json`` escapes them), a
key that is not a string, an integer past 64 bits — the standard library makes it, so
the text (and so every stored row and every signature) is the same as ever. A subclass
of a JSON type, a datetime or a dataclass goes to the standard library too, which
refuses the last two as it always did. Two exceptions: a tiny float's exponent (orjson
``1e-7``, ``json`` ``1e-07``: the same number), and a float NaN or infinity, which
JSON has not, written ``null`` (``json`` wrote ``NaN``, which no other JSON reader
takes, PostgreSQL's included); the models refuse those at the door
(``specs.meta.Model``: ``allow_inf_nan=False``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def dumps(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))``, faster."""
    try:
        text = orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # (orjson.JSONEncodeError: a non-str key, a huge int, a subclass…)
        return _ENCODER.encode(value)
    # (json escapes every character past ASCII and DEL, orjson writes them as they are)
    return text if text.isascii() and "\x7f" not in text else _ENCODER.encode(value)


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, faster (text orjson refuses, e.g. ``NaN``, goes to ``json``)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
