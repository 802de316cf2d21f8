"""Where a manifest is wrong, and how to say it: ``file:line:column: field: message``.

``Locator`` walks a pydantic error's ``loc`` back through the composed YAML node
tree to the node a user has to edit (its start mark is the line and column);
``pydantic_error`` and ``yaml_error`` turn pydantic's and ruamel's errors into
short messages ("must be > 0", "unknown field 'foo'; did you mean 'bar'?").
Only walked when a document has an error, so a clean load pays nothing here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

from pydantic import BaseModel
from pydantic_core import ErrorDetails
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

#: ``metadata`` fields the store fills in; a manifest that sets one is refused.
HUB_OWNED_METADATA: Final = (
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
)
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ManifestError:
    """One problem in a manifest, located at the node to fix.

    ``line`` and ``column`` are 1-based. A problem with the file as a whole (it
    does not exist, it cannot be read) has ``line == 0`` and prints as
    ``path: message``.
    """

    path: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line > 0 else self.path
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


# ---------------------------------------------------------------- locating


class Locator:
    """Finds the node of a pydantic ``loc`` in one document's node tree."""

    def __init__(self, path: str, root: Node, data: Any) -> None:
        self.path = path
        self.root = root
        self.data = data

    def at_node(self, node: Node, field_path: str, message: str) -> ManifestError:
        mark = node.start_mark
        return ManifestError(self.path, mark.line + 1, mark.column + 1, field_path, message)

    def at(self, loc: tuple[Any, ...], message: str, *, key: bool = False) -> ManifestError:
        """An error at the value (or with ``key``, the key) of ``loc``."""
        node, parts = self._walk(loc, key=key)
        return self.at_node(node, _dotted(parts), message)

    def missing(self, parent: tuple[Any, ...], name: Any, message: str) -> ManifestError:
        """An error for a field absent from the mapping at ``parent``."""
        node, parts = self._walk(parent, key=False)
        return self.at_node(node, _dotted([*parts, name]), message)

    def path_of(self, target: Node) -> str:
        """The dotted path of a key node (a depth-first search; only used on errors)."""
        stack: list[tuple[Node, list[Any]]] = [(self.root, [])]
        visited: set[int] = set()  # aliases can make the node graph cyclic
        while stack:
            node, parts = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, MappingNode):
                for key_node, value_node in node.value:
                    if key_node is target:
                        return _dotted([*parts, key_node.value])
                    stack.append((value_node, [*parts, key_node.value]))
            elif isinstance(node, SequenceNode):
                stack.extend((child, [*parts, i]) for i, child in enumerate(node.value))
        return ""

    def node_at(self, loc: tuple[Any, ...]) -> Node:
        return self._walk(loc, key=False)[0]

    def _walk(self, loc: Iterable[Any], *, key: bool) -> tuple[Node, list[Any]]:
        """The deepest node along ``loc`` and the ``loc`` parts that exist in the data.

        Parts that are not in the data (pydantic's union and validator tags,
        like ``function-after[...]``) are skipped, so the path shows only what
        the user wrote.
        """
        loc = list(loc)
        node, value, parts = self.root, self.data, []
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(value, dict) and _hashable(part) and part in value:
                pair = _find_pair(node, part)
                value = value[part]
                parts.append(part)
                if pair is None:
                    continue
                node = pair[0] if (last and key) else pair[1]
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
                parts.append(part)
                if isinstance(node, SequenceNode) and part < len(node.value):
                    node = node.value[part]
        return node, parts


def _hashable(part: Any) -> bool:
    try:
        hash(part)
    except TypeError:
        return False
    return True


def _find_pair(node: Node, key: Any) -> tuple[Node, Node] | None:
    """The (key node, value node) of ``key`` in a mapping node.

    Searched from the end: after a merge (``<<``) the mapping's own keys come
    last and win, as they do in the constructed dict.
    """
    if not isinstance(node, MappingNode):
        return None
    if key is None:
        texts = {"", "~", "null", "Null", "NULL"}
    elif isinstance(key, bool):
        texts = {"true", "True", "TRUE"} if key else {"false", "False", "FALSE"}
    else:
        texts = {str(key)}
    for key_node, value_node in reversed(node.value):
        if isinstance(key_node, ScalarNode) and key_node.value in texts:
            return key_node, value_node
    return None


def _dotted(parts: Sequence[Any]) -> str:
    """``spec.workload.args[2]``; keys that are not simple names are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _SIMPLE_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{show(part)}]"
    return out


# ---------------------------------------------------------------- messages


def pydantic_error(err: ErrorDetails, loc: Locator, model_cls: type[BaseModel]) -> ManifestError:
    """One pydantic error as a located, humane :class:`ManifestError`."""
    where = tuple(err["loc"])
    kind = err["type"]
    if kind == "missing":
        return loc.missing(where[:-1], where[-1], "required field is missing")
    if where and where[-1] == "[key]":  # a mapping key of the wrong type, e.g. env: {8080: x}
        message = f"keys must be strings (got {show(err.get('input'))}); put it in quotes"
        return loc.at(where[:-1], message, key=True)
    if kind == "extra_forbidden":
        name = where[-1]
        message = f"unknown field {show(name)}"
        fields = _fields_at(model_cls, where[:-1])
        close = difflib.get_close_matches(str(name), sorted(fields), n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
        return loc.at(where, message, key=True)
    return loc.at(where, _message(err))


_TYPE_WORDS: Final = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "datetime_parsing": "a date and time (RFC 3339)",
    "datetime_type": "a date and time (RFC 3339)",
}


def _message(err: ErrorDetails) -> str:
    """A short message for a pydantic error type; pydantic's own text otherwise."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {_num(limit)}"
    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        listed = ", ".join(choices) if choices else str(ctx.get("expected", ""))
        return f"must be one of: {listed} (got {show(got)})"
    if kind == "string_type" and got is not None and not isinstance(got, dict | list):
        # YAML read 8080, true or 2024-01-01 as a number, boolean or date
        return f"must be a string (got {show(got)}); put it in quotes"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]} (got {show(got)})"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "invalid_key":
        return "keys must be strings"
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"must have {word} {limit} item{'' if limit == 1 else 's'}"
    if kind in ("string_too_short", "string_too_long"):
        limit = ctx.get("min_length" if kind == "string_too_short" else "max_length")
        word = "at least" if kind == "string_too_short" else "at most"
        return f"must have {word} {limit} character{'' if limit == 1 else 's'}"
    return err["msg"].removeprefix("Value error, ")


def _fields_at(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """Field names a user may write at ``loc`` (for "did you mean")."""
    models: list[type[BaseModel]] = [model_cls]
    for part in loc:
        inner = [
            sub
            for m in models
            if isinstance(part, str) and part in m.model_fields
            for sub in _models_in(m.model_fields[part].annotation)
        ]
        if inner or any(isinstance(part, str) and part in m.model_fields for m in models):
            models = inner
        # else: a list index, a dict key or a pydantic tag: same models
    names = {name for m in models for name in m.model_fields}
    if len(loc) == 0:
        names.discard("status")
    if loc == ("metadata",):
        names.difference_update(HUB_OWNED_METADATA)
    return names


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The models inside an annotation: ``X | None``, ``list[X]``, ``dict[str, X]``…"""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in get_args(tp) for m in _models_in(arg)]


def yaml_error(exc: MarkedYAMLError, path: str) -> ManifestError:
    mark = exc.problem_mark or exc.context_mark
    problem = str(exc.problem or exc.context or "invalid YAML").strip()
    message = f"invalid YAML: {problem}"
    if exc.problem and exc.context:
        message += f" ({str(exc.context).strip()})"
    if mark is None:
        return ManifestError(path, 0, 0, "", message)
    return ManifestError(path, mark.line + 1, mark.column + 1, "", message)


def reader_message(exc: ReaderError) -> str:
    if isinstance(exc.character, int):
        return f"invalid YAML: character U+{exc.character:04X} is not allowed ({exc.reason})"
    return f"invalid YAML: {exc.reason}"


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, short: 'text', 5, true, null."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return a_or_an(value)
    return str(value)


def a_or_an(value: Any) -> str:
    """What kind of YAML value this is, with an article."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def _num(value: Any) -> str:
    """1.0 → 1, so bounds read as the user would write them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


__all__ = [
    "HUB_OWNED_METADATA",
    "Locator",
    "ManifestError",
    "a_or_an",
    "line_col",
    "pydantic_error",
    "reader_message",
    "show",
    "yaml_error",
]
