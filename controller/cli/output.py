"""Rendering for the CLI: kubectl-style tables, YAML and JSON, ages and sizes.

Tables are plain, space-aligned text with an upper-case header, the way kubectl
prints them: they survive pipes, ``grep`` and ``awk``, and never wrap or
truncate to a terminal width (which is why they are not rich tables). Colour
is for humans only, so it is used only when the stream is a terminal.

Each kind has its own useful columns (``columns_for``/``row_for``): a Session
shows its app, phase and how many of its placements run; a Provider its node,
CPU and memory; and so on. ``wide`` adds generation, resourceVersion, labels
and the Ready condition's message.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ruamel.yaml import YAML

# ------------------------------------------------------------ generic shapes


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], gap: int = 3) -> str:
    """Space-aligned columns, header first; the last column is not padded."""
    all_rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append((" " * gap).join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


class AlignedRows:
    """A table printed a row at a time (``gu get -w``): later rows keep the header's
    alignment, and columns only ever grow, so a long value never shifts earlier output.
    """

    def __init__(self, headers: Sequence[str], gap: int = 3) -> None:
        self.widths = [len(h) for h in headers]
        self.gap = gap
        self.headers = list(headers)

    def fit(self, rows: Sequence[Sequence[str]]) -> None:
        """Widen columns to fit ``rows`` (call before printing the header)."""
        for row in rows:
            for i, cell in enumerate(row):
                self.widths[i] = max(self.widths[i], len(cell))

    def line(self, row: Sequence[str]) -> str:
        """One aligned line (the header too: ``line(headers)``)."""
        self.fit([row])
        cells = [cell.ljust(self.widths[i]) for i, cell in enumerate(row[:-1])]
        return (" " * self.gap).join([*cells, row[-1]]).rstrip()


def dump_yaml(value: Any) -> str:
    """Block-style YAML, keys in the order given (round-trips through ``gu apply``)."""
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(value, buf)
    return buf.getvalue()


def dump_json(value: Any) -> str:
    """Indented JSON, as the hub serves it."""
    return json.dumps(value, indent=2)


def sort_keys(value: Any) -> Any:
    """A copy of ``value`` with every mapping's keys sorted (for stable diffs)."""
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sort_keys(v) for v in value]
    return value


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp of the hub (``...Z``), or None."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def age(text: str | None, now: datetime | None = None) -> str:
    """How long ago ``text`` was, kubectl-style: ``42s``, ``5m10s``, ``3h``, ``12d``."""
    when = parse_time(text)
    if when is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def human_bytes(count: int | float | None) -> str:
    """``15.6Gi`` style sizes (binary units)."""
    if not count:
        return "-"
    value = float(count)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_labels(labels: dict[str, str] | None) -> str:
    """``k=v,k2=v2`` or ``<none>``."""
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def short_node(node_id: str | None) -> str:
    """The first 10 characters of a node id (``0x1a2b3c4d``), enough to tell nodes apart."""
    if not node_id:
        return "-"
    return node_id[:10]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of ``type_`` in the object's status, or an empty dict."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


# ------------------------------------------------------------ per-kind columns


def _get(obj: dict[str, Any], *path: str) -> Any:
    value: Any = obj
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _session_placements(obj: dict[str, Any]) -> str:
    placements = _get(obj, "status", "placements") or []
    running = sum(1 for p in placements if p.get("state") == "Running")
    nodes = _get(obj, "spec", "providers", "nodes")
    wanted = len(nodes) if nodes else (_get(obj, "spec", "providers", "count") or 1)
    return f"{running}/{wanted}"


def _provider_cpu(obj: dict[str, Any]) -> str:
    threads = _get(obj, "status", "inventory", "cpu", "threads")
    percent = _get(obj, "status", "usage", "cpuPercent")
    if threads is None:
        return "-"
    return f"{threads} ({percent or 0:.0f}%)"


def _provider_mem(obj: dict[str, Any]) -> str:
    total = _get(obj, "status", "inventory", "memoryBytes")
    free = _get(obj, "status", "usage", "memoryAvailableBytes")
    if not total:
        return "-"
    return f"{human_bytes(total)} ({human_bytes(free)} free)"


def _session_priority(obj: dict[str, Any]) -> str:
    """``1000 (urgent)``: the value it is scheduled at and its class; ``0`` without one."""
    value = _get(obj, "status", "priority")
    if value is None:
        return "-"
    cls = _get(obj, "status", "priorityClass")
    return f"{value} ({cls})" if cls else str(value)


def _ready(obj: dict[str, Any]) -> str:
    return _text(condition(obj, "Ready").get("status"))


_KIND_COLUMNS: dict[str, list[tuple[str, Any]]] = {
    "Session": [
        ("APP", lambda o: _text(_get(o, "spec", "app"))),
        ("PRIORITY", _session_priority),
        ("PHASE", lambda o: _text(_get(o, "status", "phase"))),
        ("READY", _ready),
        ("PLACEMENTS", _session_placements),
    ],
    "Provider": [
        ("NODE", lambda o: short_node(_get(o, "spec", "nodeId"))),
        ("READY", _ready),
        ("CPU", _provider_cpu),
        ("MEM", _provider_mem),
        ("LAST-SEEN", lambda o: age(_get(o, "status", "lastHeartbeat"))),
    ],
    "Placement": [
        ("SESSION", lambda o: _text(_get(o, "spec", "session"))),
        ("NODE", lambda o: short_node(_get(o, "spec", "node"))),
        ("STATE", lambda o: _text(_get(o, "status", "state"))),
        ("EXIT", lambda o: _text(_get(o, "status", "exitCode"))),
    ],
    "VirtualNetwork": [
        ("CIDR", lambda o: _text(_get(o, "spec", "cidr"))),
        ("MEMBERS", lambda o: _text(len(_get(o, "status", "members") or []))),
        ("READY", _ready),
    ],
    "Priority": [
        ("VALUE", lambda o: _text(_get(o, "spec", "value"))),
        ("DEFAULT", lambda o: _text(bool(_get(o, "spec", "default")))),
    ],
}
_DEFAULT_COLUMNS: list[tuple[str, Any]] = [
    ("READY", _ready),
    ("REASON", lambda o: _text(condition(o, "Ready").get("reason"))),
]
_WIDE_COLUMNS: list[tuple[str, Any]] = [
    ("GENERATION", lambda o: _text(_get(o, "metadata", "generation"))),
    ("RESOURCE-VERSION", lambda o: _text(_get(o, "metadata", "resourceVersion"))),
    ("LABELS", lambda o: format_labels(_get(o, "metadata", "labels"))),
    ("MESSAGE", lambda o: _text(condition(o, "Ready").get("message"))),
]


def _columns(kind: str, wide: bool) -> list[tuple[str, Any]]:
    cols: list[tuple[str, Any]] = [("NAME", lambda o: _text(_get(o, "metadata", "name")))]
    cols += _KIND_COLUMNS.get(kind, _DEFAULT_COLUMNS)
    cols.append(("AGE", lambda o: age(_get(o, "metadata", "creationTimestamp"))))
    if wide:
        cols += _WIDE_COLUMNS
    return cols


def columns_for(kind: str, wide: bool = False) -> list[str]:
    """The table header of ``kind`` (canonical kind name)."""
    return [name for name, _ in _columns(kind, wide)]


def row_for(kind: str, obj: dict[str, Any], wide: bool = False) -> list[str]:
    """One table row of ``obj``, matching ``columns_for(kind, wide)``."""
    return [cell(obj) for _, cell in _columns(kind, wide)]


def object_table(kind: str, objects: Sequence[dict[str, Any]], wide: bool = False) -> str:
    """The ``gu get`` table of ``objects``."""
    return format_table(columns_for(kind, wide), [row_for(kind, o, wide) for o in objects])


def indent(text: str, prefix: str = "  ") -> str:
    """``text`` with every non-empty line indented."""
    return "\n".join(prefix + line if line else line for line in text.splitlines())
