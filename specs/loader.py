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
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from specs.kinds import SYSTEM_KINDS, USER_KINDS
from specs.manifest_errors import (
    HUB_OWNED_METADATA,
    Locator,
    ManifestError,
    a_or_an,
    line_col,
    pydantic_error,
    reader_message,
    show,
    yaml_error,
)
from specs.meta import API_VERSION, Model

__all__ = [
    "HUB_OWNED_METADATA",
    "Document",
    "ManifestError",
    "ManifestErrors",
    "load_paths",
    "load_text",
]

_HUB_OWNED_MESSAGE: Final = "is set by the hub; remove it"
_YAML_SUFFIXES: Final = (".yaml", ".yml")
_STDIN: Final = "-"


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
        line, column = line_col(raw.decode("utf-8", errors="replace"), exc.start)
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
            self.errors.append(yaml_error(exc, path))
        except ReaderError as exc:
            line, column = line_col(text, exc.position)
            self.errors.append(ManifestError(path, line, column, "", reader_message(exc)))
        except YAMLError as exc:  # no position known; still name the file
            self.errors.append(ManifestError(path, 0, 0, "", f"invalid YAML: {exc}"))

    def _add_node(self, constructor: _Constructor, node: Node, path: str, index: int) -> None:
        constructor.duplicates.clear()
        try:
            data = constructor.construct_document(node)
        except MarkedYAMLError as exc:  # unknown tag, unhashable key, bad merge…
            constructor.reset()
            self.errors.append(yaml_error(exc, path))
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
        loc = Locator(path, node, data)
        errors: list[ManifestError] = []
        for key_node, key in constructor.duplicates:
            errors.append(
                loc.at_node(key_node, loc.path_of(key_node), f"duplicate key {show(key)}")
            )
        if not isinstance(data, dict):
            errors.append(
                loc.at_node(node, "", f"a manifest must be a mapping, not {a_or_an(data)}")
            )
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
                errors.extend(pydantic_error(err, loc, model_cls) for err in exc.errors())
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
        self, kind: str, name: str, loc: Locator, errors: list[ManifestError]
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
    data: dict[Any, Any], loc: Locator, errors: list[ManifestError]
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
        errors.append(loc.at(("apiVersion",), f"must be {API_VERSION} (got {show(api_version)})"))
    payload["apiVersion"] = API_VERSION

    model_cls: type[Model] | None = None
    kind = data.get("kind")
    known = ", ".join(sorted(USER_KINDS))
    if "kind" not in data:
        errors.append(loc.missing((), "kind", f"required field is missing; one of: {known}"))
    elif not isinstance(kind, str):
        errors.append(loc.at(("kind",), f"must be a string (got {show(kind)})"))
    elif kind in SYSTEM_KINDS:
        errors.append(loc.at(("kind",), f"{kind} is written by the hub and cannot be applied"))
    elif kind not in USER_KINDS:
        errors.append(
            loc.at(("kind",), f"unknown kind {show(kind)}; known kinds: {known}{_hint_kind(kind)}")
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
