"""Load YAML manifests into validated objects, with errors that name file:line:column.

``gu apply -f PATH…`` must be atomic: one bad document and nothing is written.
So loading is two-phase. First every file is read and every document parsed and
validated, and *every* problem is collected, across all files; only then, if
anything was wrong, one :class:`ManifestErrors` carrying all of them is raised.
The caller writes nothing unless it got a list of :class:`Document` back.

The flow for one file:

1. ruamel.yaml (YAML 1.2 rules) *composes* each document into a node tree.
   Every node keeps its start mark (line, column), which is what lets an
   error point at the exact value a user has to fix.
2. The node tree is *constructed* into plain Python (dict, list, str, int…).
   Duplicate keys are recorded rather than raised, so one duplicate does not
   hide the other errors of the file.
3. Checks pydantic cannot do well come first: a mapping, ``apiVersion: gu/v1``,
   a ``kind`` that a user may apply, and no hub-owned fields (``status``,
   ``metadata.uid`` …).
4. The model of the kind validates the document. Each pydantic error's ``loc``
   is walked back through the node tree to the offending node, and its type is
   turned into a short message ("must be > 0", "unknown field 'foo'; did you
   mean 'bar'?").
5. Across all files of one load, ``kind/name`` must be unique.

Why the safe composer and not ruamel's round-trip loader: the round-trip loader
keeps positions on ``CommentedMap`` but also gathers every comment, which takes
half again as long and needs a conversion pass to plain types afterwards. The
composed node tree has the same positions; it is only walked when a document
has an error, so a clean load pays nothing for error reporting. And unlike the
round-trip loader, the safe one runs on libyaml when ``ruamel.yaml.clib`` is
installed: the same nodes and marks, about four times faster (pure Python
parses roughly 1,000-2,500 small documents a second; the C parser 4,500-8,000).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from specs.kinds import SYSTEM_KINDS, USER_KINDS
from specs.meta import API_VERSION, Model

__all__ = [
    "HUB_OWNED_METADATA",
    "Document",
    "ManifestError",
    "ManifestErrors",
    "load_paths",
    "load_text",
]

#: ``metadata`` fields the store fills in; a manifest that sets one is refused.
HUB_OWNED_METADATA: Final = (
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
)
_HUB_OWNED_MESSAGE: Final = "is set by the hub; remove it"
_YAML_SUFFIXES: Final = (".yaml", ".yml")
_STDIN: Final = "-"
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Document:
    """One validated document of a manifest file."""

    path: str
    """The file, as the caller named it (relative stays relative); ``<stdin>`` for ``-``."""
    index: int
    """Position of the document in its file, 0-based, counting empty documents too."""
    line: int
    """1-based line of the document's first node."""
    data: dict[str, Any]
    """The document as written, in plain Python types (no defaults filled in)."""
    obj: Model
    """The validated model instance (``App``, ``Session``, …)."""
    kind: str
    name: str

    @property
    def key(self) -> str:
        """``kind/name``, the identity of the object within one load."""
        return f"{self.kind}/{self.name}"


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


class ManifestErrors(Exception):
    """Everything wrong with one load; raised only after all files were checked."""

    def __init__(self, errors: Sequence[ManifestError]) -> None:
        self.errors: list[ManifestError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


# ---------------------------------------------------------------- public API


def load_text(text: str, path: str = "<stdin>") -> list[Document]:
    """Parse and validate every document of ``text``, named ``path`` in errors.

    Raises :class:`ManifestErrors` with all problems found, including a
    ``kind/name`` given twice.
    """
    collector = _Collector()
    collector.add_text(text, path)
    return collector.finish()


def load_paths(paths: Sequence[str | Path]) -> list[Document]:
    """Load files and folders of manifests; all of them valid, or nothing.

    A folder is searched recursively for ``*.yaml`` and ``*.yml`` in sorted
    order, skipping hidden files and folders (``.git``); a file named
    explicitly is read whatever its suffix; ``-`` reads standard input. A file
    reached twice is loaded once. Every document of every file is validated
    before anything is returned; if any is wrong, :class:`ManifestErrors`
    lists every problem of every file.
    """
    if isinstance(paths, str | Path):  # a lone path is a Sequence[str] too
        paths = [paths]
    collector = _Collector()
    seen: set[str] = set()
    for given in paths:
        for file_path in _expand(given, collector):
            real = file_path if file_path == _STDIN else os.path.realpath(file_path)
            if real in seen:
                continue
            seen.add(real)
            if file_path == _STDIN:
                collector.add_text(sys.stdin.read(), "<stdin>")
            else:
                text = _read(file_path, collector)
                if text is not None:
                    collector.add_text(text, file_path)
    return collector.finish()


# ---------------------------------------------------------------- files


def _expand(given: str | Path, collector: _Collector) -> Iterator[str]:
    """The manifest files named by ``given``, as path strings in the caller's form."""
    if str(given) == _STDIN:
        yield _STDIN
        return
    base = Path(given)
    if base.is_file():
        yield str(base)
        return
    if not base.is_dir():
        collector.errors.append(ManifestError(str(base), 0, 0, "", "no such file or folder"))
        return
    found: list[tuple[tuple[str, ...], str]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(base)
        for name in filenames:
            if name.startswith(".") or not name.endswith(_YAML_SUFFIXES):
                continue
            found.append(((*rel.parts, name), str(base / rel / name)))
    found.sort()
    for _, file_path in found:
        yield file_path


def _read(file_path: str, collector: _Collector) -> str | None:
    try:
        raw = Path(file_path).read_bytes()
    except OSError as exc:
        collector.errors.append(ManifestError(file_path, 0, 0, "", exc.strerror or str(exc)))
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _line_col(raw.decode("utf-8", errors="replace"), exc.start)
        collector.errors.append(
            ManifestError(file_path, line, column, "", "not UTF-8 text: " + exc.reason)
        )
        return None


# ---------------------------------------------------------------- parsing


class _Constructor(SafeConstructor):
    """ruamel's safe constructor, recording duplicate keys instead of raising.

    Raising would abort the rest of the file's stream; recording lets the load
    report the duplicate together with everything else.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.duplicates: list[tuple[Node, Any]] = []

    def reset(self) -> None:
        """Forget a document whose construction failed half-way."""
        self.constructed_objects = {}
        self.recursive_objects = {}
        self.state_generators = []
        self.deep_construct = False

    def find_unconstructable(self, root: Node) -> Node:
        """The first scalar under ``root`` that fails to construct (only used on errors)."""
        stack, visited = [root], set()
        while stack:
            node = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, ScalarNode):
                try:
                    self.construct_non_recursive_object(node)
                except Exception:
                    return node
            elif isinstance(node, SequenceNode):
                stack.extend(reversed(node.value))
            elif isinstance(node, MappingNode):
                stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
        return root

    def check_mapping_key(
        self, node: Any, key_node: Any, mapping: Any, key: Any, value: Any
    ) -> bool:
        if key in mapping:
            self.duplicates.append((key_node, key))
            return False
        return True


@dataclass
class _Seen:
    """Where a ``kind/name`` was first defined in this load."""

    path: str
    line: int
    column: int


@dataclass
class _Collector:
    """Accumulates documents and errors over one load, then decides."""

    documents: list[Document] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    names: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    file_order: dict[str, int] = field(default_factory=dict)

    def finish(self) -> list[Document]:
        if self.errors:
            order = self.file_order
            self.errors.sort(key=lambda e: (order.get(e.path, -1), e.line, e.column))
            raise ManifestErrors(self.errors)
        return self.documents

    def add_text(self, text: str, path: str) -> None:
        self.file_order.setdefault(path, len(self.file_order))
        # typ="safe" composes with libyaml when ruamel.yaml.clib is installed (same
        # nodes and marks, several times faster) and with pure Python otherwise.
        # yaml.constructor turns each node into plain data and records duplicates.
        yaml = YAML(typ="safe")
        yaml.Constructor = _Constructor
        index = 0
        try:
            for node in yaml.compose_all(text):
                self._add_node(yaml.constructor, node, path, index)
                index += 1
        except MarkedYAMLError as exc:
            self.errors.append(_yaml_error(exc, path))
        except ReaderError as exc:
            line, column = _line_col(text, exc.position)
            self.errors.append(ManifestError(path, line, column, "", _reader_message(exc)))
        except YAMLError as exc:  # no position known; still name the file
            self.errors.append(ManifestError(path, 0, 0, "", f"invalid YAML: {exc}"))

    def _add_node(self, constructor: _Constructor, node: Node, path: str, index: int) -> None:
        constructor.duplicates.clear()
        try:
            data = constructor.construct_document(node)
        except MarkedYAMLError as exc:  # unknown tag, unhashable key, bad merge…
            constructor.reset()
            self.errors.append(_yaml_error(exc, path))
            return
        except (ValueError, TypeError, OverflowError) as exc:  # 2024-13-45, !!int x
            constructor.reset()
            bad = constructor.find_unconstructable(node)
            mark = bad.start_mark
            self.errors.append(
                ManifestError(path, mark.line + 1, mark.column + 1, "", f"invalid value: {exc}")
            )
            return
        if data is None:  # an empty document, or only comments
            return
        loc = _Locator(path, node, data)
        errors: list[ManifestError] = []
        for key_node, key in constructor.duplicates:
            errors.append(
                loc.at_node(key_node, loc.path_of(key_node), f"duplicate key {_show(key)}")
            )
        if not isinstance(data, dict):
            errors.append(loc.at_node(node, "", f"a manifest must be a mapping, not {_a(data)}"))
            self.errors.extend(errors)
            return
        model_cls, payload = _precheck(data, loc, errors)
        kind, name = data.get("kind"), _name_of(data)
        if model_cls is not None and isinstance(kind, str) and isinstance(name, str):
            self._check_unique(kind, name, loc, errors)
        obj: Model | None = None
        if model_cls is not None:
            try:
                obj = model_cls.model_validate(payload)
            except ValidationError as exc:
                errors.extend(_pydantic_error(err, loc, model_cls) for err in exc.errors())
        if errors or obj is None:
            self.errors.extend(errors)
            return
        self.documents.append(
            Document(
                path=path,
                index=index,
                line=node.start_mark.line + 1,
                data=data,
                obj=obj,
                kind=str(kind),
                name=str(name),
            )
        )

    def _check_unique(
        self, kind: str, name: str, loc: _Locator, errors: list[ManifestError]
    ) -> None:
        node = loc.node_at(("metadata", "name"))
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        first = self.names.get((kind, name))
        if first is None:
            self.names[(kind, name)] = _Seen(loc.path, line, column)
            return
        errors.append(
            ManifestError(
                loc.path,
                line,
                column,
                "metadata.name",
                f"{kind}/{name} is defined twice; "
                f"the first is at {first.path}:{first.line}:{first.column}",
            )
        )


def _precheck(
    data: dict[Any, Any], loc: _Locator, errors: list[ManifestError]
) -> tuple[type[Model] | None, dict[Any, Any]]:
    """Check what pydantic can't say well; return the model and what it should validate.

    The returned payload has the fields already reported here stripped or
    fixed, so pydantic does not report them a second time.
    """
    payload = dict(data)
    api_version = data.get("apiVersion")
    if "apiVersion" not in data:
        errors.append(loc.missing((), "apiVersion", f"required field is missing ({API_VERSION})"))
    elif api_version != API_VERSION:
        errors.append(loc.at(("apiVersion",), f"must be {API_VERSION} (got {_show(api_version)})"))
    payload["apiVersion"] = API_VERSION

    model_cls: type[Model] | None = None
    kind = data.get("kind")
    known = ", ".join(sorted(USER_KINDS))
    if "kind" not in data:
        errors.append(loc.missing((), "kind", f"required field is missing; one of: {known}"))
    elif not isinstance(kind, str):
        errors.append(loc.at(("kind",), f"must be a string (got {_show(kind)})"))
    elif kind in SYSTEM_KINDS:
        errors.append(loc.at(("kind",), f"{kind} is written by the hub and cannot be applied"))
    elif kind not in USER_KINDS:
        errors.append(
            loc.at(("kind",), f"unknown kind {_show(kind)}; known kinds: {known}{_hint_kind(kind)}")
        )
    else:
        model_cls = USER_KINDS[kind]

    if "status" in data:
        errors.append(loc.at(("status",), _HUB_OWNED_MESSAGE, key=True))
        del payload["status"]
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        owned = [k for k in HUB_OWNED_METADATA if k in metadata]
        for k in owned:
            errors.append(loc.at(("metadata", k), _HUB_OWNED_MESSAGE, key=True))
        if owned:
            payload["metadata"] = {k: v for k, v in metadata.items() if k not in owned}
    return model_cls, payload


def _hint_kind(kind: str) -> str:
    lowered = {k.lower(): k for k in USER_KINDS}
    lowered |= {k.lower() + "s": k for k in USER_KINDS} | {"imagepolicies": "ImagePolicy"}
    guess = lowered.get(kind.lower())
    if guess is None:
        close = difflib.get_close_matches(kind, list(USER_KINDS), n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f"; did you mean {guess!r}?" if guess else ""


def _name_of(data: dict[Any, Any]) -> Any:
    metadata = data.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


# ---------------------------------------------------------------- locating


class _Locator:
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
            out += f"[{_show(part)}]"
    return out


# ---------------------------------------------------------------- messages


def _pydantic_error(err: ErrorDetails, loc: _Locator, model_cls: type[BaseModel]) -> ManifestError:
    """One pydantic error as a located, humane :class:`ManifestError`."""
    where = tuple(err["loc"])
    kind = err["type"]
    if kind == "missing":
        return loc.missing(where[:-1], where[-1], "required field is missing")
    if where and where[-1] == "[key]":  # a mapping key of the wrong type, e.g. env: {8080: x}
        message = f"keys must be strings (got {_show(err.get('input'))}); put it in quotes"
        return loc.at(where[:-1], message, key=True)
    if kind == "extra_forbidden":
        name = where[-1]
        message = f"unknown field {_show(name)}"
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
        return f"must be one of: {listed} (got {_show(got)})"
    if kind == "string_type" and got is not None and not isinstance(got, dict | list):
        # YAML read 8080, true or 2024-01-01 as a number, boolean or date
        return f"must be a string (got {_show(got)}); put it in quotes"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]} (got {_show(got)})"
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


def _yaml_error(exc: MarkedYAMLError, path: str) -> ManifestError:
    mark = exc.problem_mark or exc.context_mark
    problem = str(exc.problem or exc.context or "invalid YAML").strip()
    message = f"invalid YAML: {problem}"
    if exc.problem and exc.context:
        message += f" ({str(exc.context).strip()})"
    if mark is None:
        return ManifestError(path, 0, 0, "", message)
    return ManifestError(path, mark.line + 1, mark.column + 1, "", message)


def _reader_message(exc: ReaderError) -> str:
    if isinstance(exc.character, int):
        return f"invalid YAML: character U+{exc.character:04X} is not allowed ({exc.reason})"
    return f"invalid YAML: {exc.reason}"


def _line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, short: 'text', 5, true, null."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return _a(value)
    return str(value)


def _a(value: Any) -> str:
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
