"""``gu get``, ``gu describe`` and ``gu delete``: read and remove objects on the hub.

Kinds are spelled any way a user types them (``session``, ``sessions``,
``Session``, ``vnet``), resolved by ``specs.kinds.resolve_kind``.

``gu get -w`` lists first, then follows ``GET /v1/watch`` from the list's
``resourceVersion``, so no change between the two is lost; each change prints
one row, with an EVENT column (ADDED, MODIFIED, DELETED) in front. A stream the
hub closed is resumed from the last rv seen; a 410 (the change log no longer
reaches back) lists again. Ctrl-C ends it with exit 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from controller.cli.apply import collect_paths
from controller.cli.errors import EXIT_NOT_FOUND, NotFoundError
from controller.cli.output import (
    AlignedRows,
    age,
    columns_for,
    dump_json,
    dump_yaml,
    format_labels,
    format_table,
    indent,
    object_table,
    row_for,
    short_node,
)
from controller.cli.state import CliState, pass_state
from controller.client import ApiError, Client
from specs.kinds import plural, resolve_kind
from specs.loader import load_paths
from specs.selectors import match_labels, parse_selector

OUTPUT_FORMATS = ("table", "wide", "yaml", "json")


def not_found(kind: str, name: str) -> NotFoundError:
    """``session "demo" not found`` (exit 1)."""
    return NotFoundError(f'{kind.lower()} "{name}" not found')


def get_or_not_found(client: Client, kind: str, name: str) -> dict[str, Any]:
    """The object, or a NotFoundError naming it."""
    try:
        return client.get(kind, name)
    except ApiError as exc:
        if exc.status == 404:
            raise not_found(kind, name) from None
        raise


def _render(objects: Sequence[dict[str, Any]], output: str, single: bool, kind: str) -> str:
    if output == "json":
        return dump_json(objects[0] if single else {"items": list(objects)})
    if output == "yaml":
        return dump_yaml(objects[0] if single else {"items": list(objects)}).rstrip("\n")
    return object_table(kind, objects, wide=output == "wide")


# ------------------------------------------------------------ gu get


@click.command("get")
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-l", "--selector", metavar="K=V,...", help="Only objects with these labels.")
@click.option(
    "-o", "--output", type=click.Choice(OUTPUT_FORMATS), default="table", show_default=True
)
@click.option("-w", "--watch", is_flag=True, help="After listing, print every change (Ctrl-C).")
@pass_state
def get_command(
    state: CliState,
    kind: str,
    name: str | None,
    selector: str | None,
    output: str,
    watch: bool,
) -> None:
    """List objects of KIND, or show the one named NAME.

    KIND may be singular, plural or lower case: session, sessions, Session,
    provider, placement, priority, app, imagepolicy, virtualnetwork (vnet).

    \b
    Examples:
      gu get sessions
      gu get session demo -o yaml
      gu get providers -o wide
      gu get placements -l gu/session=demo -w
    """
    kind = resolve_kind(kind)
    client = state.client()
    if watch:
        _get_and_watch(client, kind, name, selector, output)
        return
    if name:
        objects = [get_or_not_found(client, kind, name)]
        click.echo(_render(objects, output, single=True, kind=kind))
    else:
        objects = client.list(kind, selector)
        if not objects and output in ("table", "wide"):
            click.echo(f"No {plural(kind).lower()} found.", err=True)
            return
        click.echo(_render(objects, output, single=False, kind=kind))
    if kind == "VirtualNetwork" and output == "wide":
        for net in objects:
            click.echo("\n" + vnet_members_table(client, net))


def _matches(obj: dict[str, Any], name: str | None, selector: dict[str, str | None]) -> bool:
    meta = obj.get("metadata") or {}
    if name and meta.get("name") != name:
        return False
    return match_labels(meta.get("labels") or {}, selector)


def _get_and_watch(
    client: Client, kind: str, name: str | None, selector: str | None, output: str
) -> None:
    """List, then print a row (or document) per change until Ctrl-C."""
    wanted = parse_selector(selector)
    items, rv = client.list_at(kind, selector)
    items = [o for o in items if _matches(o, name, wanted)]
    if name and not items:
        raise not_found(kind, name)
    table = output in ("table", "wide")
    wide = output == "wide"
    rows = AlignedRows(["EVENT", *columns_for(kind, wide)])

    def show(event_type: str, obj: dict[str, Any]) -> None:
        if table:
            click.echo(rows.line([event_type, *row_for(kind, obj, wide)]))
        elif output == "json":
            click.echo(dump_json(obj))
        else:
            click.echo("---\n" + dump_yaml(obj).rstrip("\n"))

    if table:
        rows.fit([["MODIFIED"], *[["ADDED", *row_for(kind, o, wide)] for o in items]])
        click.echo(rows.line(rows.headers))
    for obj in items:
        show("ADDED", obj)
    try:
        while True:
            resume = _follow(client, kind, rv, lambda o: _matches(o, name, wanted), show)
            if resume is None:  # fell behind the change log: list again, show it all
                items, rv = client.list_at(kind, selector)
                for obj in items:
                    if _matches(obj, name, wanted):
                        show("ADDED", obj)
            else:
                rv = resume
    except KeyboardInterrupt:
        return


def _follow(
    client: Client,
    kind: str,
    rv: int,
    wanted: Callable[[dict[str, Any]], bool],
    show: Callable[[str, dict[str, Any]], None],
) -> int | None:
    """Print changes after ``rv`` until the stream ends: the rv to resume from, or
    None when the hub's change log no longer reaches back to ``rv`` (list again)."""
    try:
        for event in client.watch(rv, kinds=[kind]):
            event_type = str(event.get("type"))
            if event_type == "ERROR":
                return None
            rv = int(event.get("resourceVersion") or rv)
            obj = event.get("object")
            if event_type == "BOOKMARK" or not obj or not wanted(obj):
                continue
            show(event_type, obj)
    except ApiError as exc:
        if exc.status == 410:
            return None
        raise
    return rv


# ------------------------------------------------------------ gu describe

_LABEL_WIDTH = 18


def _field(label: str, value: str) -> str:
    return f"{label + ':':<{_LABEL_WIDTH}}{value}"


def _pairs(values: dict[str, str] | None) -> str:
    if not values:
        return "<none>"
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def describe_text(obj: dict[str, Any], events: Iterable[dict[str, Any]] | None) -> str:
    """The ``gu describe`` page of ``obj``; ``events`` None means they could not be read."""
    meta = obj.get("metadata") or {}
    status = dict(obj.get("status") or {})
    conditions = status.pop("conditions", None) or []
    created = meta.get("creationTimestamp")
    lines = [
        _field("Name", str(meta.get("name"))),
        _field("Kind", str(obj.get("kind"))),
        _field("Labels", format_labels(meta.get("labels"))),
        _field("Annotations", _pairs(meta.get("annotations"))),
        _field("Created", f"{created} ({age(created)} ago)" if created else "-"),
        _field("Generation", str(meta.get("generation", "-"))),
        _field("Resource Version", str(meta.get("resourceVersion", "-"))),
        _field("UID", str(meta.get("uid", "-"))),
    ]
    if meta.get("finalizers"):
        lines.append(_field("Finalizers", ", ".join(meta["finalizers"])))
    if meta.get("deletionTimestamp"):
        deleting = meta["deletionTimestamp"]
        lines.append(_field("Deleting since", f"{deleting} ({age(deleting)} ago)"))
    lines.append("Spec:")
    lines.append(indent(dump_yaml(obj.get("spec") or {}).rstrip("\n")))
    lines.append("Status:")
    lines.append(indent(dump_yaml(status).rstrip("\n")) if status else "  <none>")
    lines.append("Conditions:")
    if conditions:
        rows = [
            [
                str(c.get("type", "")),
                str(c.get("status", "")),
                c.get("reason") or "-",
                c.get("message") or "-",
                age(c.get("lastTransitionTime")),
            ]
            for c in conditions
        ]
        lines.append(indent(format_table(["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"], rows)))
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if events is None:
        lines.append("  <could not be read>")
    else:
        event_rows = [
            [
                f"{age(e.get('time'))} ago",
                str(e.get("type", "")),
                str(e.get("reason", "")),
                str(e.get("message", "")),
            ]
            for e in events
        ]
        if event_rows:
            lines.append(indent(format_table(["TIME", "TYPE", "REASON", "MESSAGE"], event_rows)))
        else:
            lines.append("  <none>")
    return "\n".join(lines)


@click.command("describe", short_help="Show one object with conditions and events.")
@click.argument("kind")
@click.argument("name")
@pass_state
def describe_command(state: CliState, kind: str, name: str) -> None:
    """Show one object in detail: metadata, spec, status, conditions and recent events."""
    kind = resolve_kind(kind)
    client = state.client()
    obj = get_or_not_found(client, kind, name)
    events: list[dict[str, Any]] | None
    try:
        events = client.events(kind, name)
    except ApiError as exc:
        if exc.status == 0:  # the hub went away between the two requests
            raise
        events = None
    click.echo(describe_text(obj, events))
    if kind == "VirtualNetwork":
        _describe_paths(client, obj)
    if kind == "Session":
        outputs = client.call("GET", f"/v1/sessions/{name}/outputs")["items"]
        if outputs:
            click.echo("Outputs (gu outputs " + name + "):")
            for o in outputs:
                click.echo(
                    f"  {o['placement']}  {o['files']} files, {o['size']} bytes  {o['hash']}"
                )


def _bridge_reports(client: Any, net: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Per member node of ``net``: what its bridge last reported of the network (frames,
    drops, the path to each other member node), from the providers' live usage."""
    name = net["metadata"]["name"]
    nodes = sorted({m.get("node") for m in net.get("status", {}).get("members") or []} - {None})
    reports: dict[str, dict[str, Any] | None] = {}
    for node in nodes:
        try:
            usage = client.call("GET", f"/peers/{node}").get("usage") or {}
        except ApiError:
            usage = {}
        reports[node] = (usage.get("networks") or {}).get(name) or None
    return reports


def _paths_text(report: dict[str, Any] | None) -> str:
    if report is None:
        return "no bridge report yet"
    paths = ", ".join(f"{peer[:10]} {p.get('path')}" for peer, p in sorted(report["peers"].items()))
    return paths or "no other member node"


def _describe_paths(client: Any, net: dict[str, Any]) -> None:
    """Each member node's bridge on this network: frames carried, drops, and how it reaches
    the other member nodes."""
    reports = _bridge_reports(client, net)
    if not reports:
        return
    click.echo("Bridges (per member node):")
    for node, c in reports.items():
        if c is None:
            click.echo(f"  {node[:10]}  no bridge report yet")
            continue
        dropped = ", ".join(f"{k} {v}" for k, v in sorted((c.get("dropped") or {}).items()))
        click.echo(
            f"  {node[:10]}  out {c.get('framesOut', 0)} in {c.get('framesIn', 0)} frames; "
            f"dropped: {dropped or 'none'}; paths: {_paths_text(c)}"
        )


def vnet_members_table(client: Any, net: dict[str, Any]) -> str:
    """``gu get vnet NAME -o wide``'s second table: every member with its address, MAC and
    its node's paths to the other member nodes (direct or relayed)."""
    reports = _bridge_reports(client, net)
    rows = [
        [
            str(m.get("placement")),
            short_node(m.get("node")) if m.get("node") else "<none>",
            str(m.get("ip") or "<none>"),
            str(m.get("mac") or "<none>"),
            _paths_text(reports.get(m["node"])) if m.get("node") else str(m.get("reason", "")),
        ]
        for m in net.get("status", {}).get("members") or []
    ]
    head = f"Members of {net['metadata']['name']}:"
    if not rows:
        return head + " none"
    return head + "\n" + format_table(["PLACEMENT", "NODE", "IP", "MAC", "PATHS"], rows)


# ------------------------------------------------------------ gu delete


@click.command("delete", short_help="Delete objects by KIND NAME or by manifest files.")
@click.argument("kind", required=False)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    metavar="PATH",
    help="Delete the objects named in these manifests (files, folders, - for stdin).",
)
@pass_state
@click.pass_context
def delete_command(
    ctx: click.Context,
    state: CliState,
    kind: str | None,
    names: tuple[str, ...],
    paths: tuple[str, ...],
) -> None:
    """Delete objects: `gu delete KIND NAME...` or `gu delete -f PATH...`.

    A Session is removed once its placements have stopped (it shows a
    deletion time until then). Objects that do not exist are reported and
    skipped; the exit code is then 1.

    \b
    Examples:
      gu delete session demo
      gu delete -f examples/quickstart/
    """
    if paths and (kind or names):
        raise click.UsageError("give either KIND NAME... or -f PATH..., not both")
    targets: list[tuple[str, str]]
    if paths:
        targets = [(d.kind, d.name) for d in load_paths(collect_paths(paths, ()))]
    elif kind and names:
        canonical = resolve_kind(kind)
        targets = [(canonical, n) for n in names]
    else:
        raise click.UsageError("name what to delete: KIND NAME... or -f PATH...")
    client = state.client()
    missing = 0
    for target_kind, target_name in targets:
        try:
            client.delete(target_kind, target_name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            missing += 1
            click.echo(f"Error: {not_found(target_kind, target_name).message}", err=True)
            continue
        click.echo(f"{target_kind.lower()}/{target_name} deleted")
    if missing:
        ctx.exit(EXIT_NOT_FOUND)
