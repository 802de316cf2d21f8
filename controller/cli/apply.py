"""``gu apply`` and ``gu diff``: send manifests to the hub, or compare them with it.

The flow of ``gu apply -f PATH…``:

1. ``specs.loader.load_paths`` reads every file and folder (``-`` is stdin) and
   validates every document *before anything is sent*. Any problem: every
   ``file:line:col: field: message`` goes to stderr, exit 2, nothing written.
2. Each document becomes the object the hub accepts from users — ``apiVersion``,
   ``kind``, ``metadata`` (name, labels, annotations) and ``spec`` as written
   (no defaults filled in, never ``status``) — and all of them go in ONE
   ``POST /v1/apply``, which the hub applies atomically.
3. The hub answers one result per object (``created``, ``configured``,
   ``unchanged``, ``pruned``); we print ``kind/name action`` lines, kubectl
   style, and a summary. If the hub finds field errors (422), each is mapped
   back through its ``index`` to the document's ``file:line``.

Apply sets: every object carries the ``gu/apply-set`` annotation, and
``--prune`` deletes objects of the set that are no longer in the files. The
set's default name is the first PATH, ``os.path.normpath``-ed, or the folder of
that PATH when it is a file — so run gu from the same directory (the repo root)
each time, or name the set with ``--set``.

``gu diff`` projects both sides onto what a user writes (labels, annotations
other than ``gu/*``, spec), renders them as YAML with sorted keys and prints a
unified diff: exit 0 when equal, 1 when anything differs.

``GitOpsWatcher`` (``gu watch``) reuses ``apply_documents`` and the formatting
helpers here.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import click

from controller.cli.errors import (
    EXIT_DIFFERENCES,
    BadInputError,
    ManifestProblems,
    RefusedObjects,
    hub_refused_message,
)
from controller.cli.output import dump_yaml, sort_keys
from controller.cli.state import CliState, pass_state
from controller.client import ApiError, Client, HubUnreachable
from specs.loader import Document, load_paths

SYSTEM_ANNOTATION_PREFIX = "gu/"


# ------------------------------------------------------------ shared helpers


def collect_paths(option_paths: Sequence[str], extra_paths: Sequence[str]) -> list[str]:
    """Paths from ``-f`` options and any positional arguments (``-f *.yaml`` works)."""
    paths = [*option_paths, *extra_paths]
    if not paths:
        raise click.UsageError("name the manifests: -f PATH (a file, a folder or - for stdin)")
    return paths


def default_apply_set(paths: Sequence[str]) -> str | None:
    """The apply set named by the first PATH: the folder itself, or a file's folder.

    ``None`` for stdin, which has no folder: pass ``--set`` there.
    """
    first = paths[0]
    if first == "-":
        return None
    folder = first if os.path.isdir(first) else (os.path.dirname(first) or ".")
    return os.path.normpath(folder)


def apply_object(doc: Document) -> dict[str, Any]:
    """What the hub takes from a user for ``doc``: never ``status`` or hub-owned metadata."""
    meta = doc.data.get("metadata") or {}
    clean_meta: dict[str, Any] = {"name": doc.name}
    if meta.get("labels"):
        clean_meta["labels"] = dict(meta["labels"])
    if meta.get("annotations"):
        clean_meta["annotations"] = dict(meta["annotations"])
    return {
        "apiVersion": doc.data.get("apiVersion"),
        "kind": doc.kind,
        "metadata": clean_meta,
        "spec": doc.data.get("spec") or {},
    }


def no_documents_message(paths: Sequence[str]) -> str:
    """Why an empty load is refused: with --prune it would delete the whole apply set."""
    return (
        f"no manifests (*.yaml, *.yml) found in {', '.join(paths)}; nothing to apply "
        "(an empty apply with --prune would delete every object of the set)"
    )


def apply_documents(
    client: Client,
    docs: Sequence[Document],
    *,
    apply_set: str | None,
    prune: bool,
    dry_run: bool,
) -> list[dict[str, Any]]:
    """One atomic apply of ``docs``; the hub's result per object (and per pruned one)."""
    answer = client.apply(
        [apply_object(d) for d in docs], apply_set=apply_set, prune=prune, dry_run=dry_run
    )
    return list(answer.get("results") or [])


def result_line(result: dict[str, Any], dry_run: bool = False) -> str:
    """``session/demo configured`` (``(dry run)`` appended for a dry run)."""
    line = f"{str(result['kind']).lower()}/{result['name']} {result['action']}"
    return line + " (dry run)" if dry_run else line


def summary_line(results: Sequence[dict[str, Any]], apply_set: str | None, dry_run: bool) -> str:
    """``apply set "deploy": 1 created, 2 unchanged`` — the counts of one apply."""
    counts = Counter(r["action"] for r in results)
    order = ("created", "configured", "unchanged", "pruned")
    parts = [f"{counts[a]} {a}" for a in order if counts[a]] or ["no objects"]
    where = f'apply set "{apply_set}"' if apply_set else "no apply set"
    suffix = " (dry run: nothing was written)" if dry_run else ""
    return f"{where}: {', '.join(parts)}{suffix}"


def hub_field_errors(exc: ApiError, docs: Sequence[Document]) -> list[str]:
    """The hub's field errors as ``file:line: field: message``, via each detail's ``index``."""
    lines = []
    for item in exc.details:
        index = item.get("index")
        field = item.get("path") or ""
        if isinstance(field, list):
            field = ".".join(str(p) for p in field)
        message = str(item.get("message") or exc.message)
        where = "hub"
        if isinstance(index, int) and 0 <= index < len(docs):
            doc = docs[index]
            where = f"{doc.path}:{doc.line}"
        lines.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
    return lines


def refused_manifests(exc: ApiError, docs: Sequence[Document]) -> click.ClickException | None:
    """The error for a hub answer that names objects of the apply (``details``), else None.

    422 (the hub found them invalid) is bad input, exit 2; anything else (403:
    refused by image policy) is the hub refusing, exit 3. Both list each
    object's ``file:line``.
    """
    if isinstance(exc, HubUnreachable) or not exc.details:
        return None
    lines = hub_field_errors(exc, docs)
    if exc.status == 422:
        return ManifestProblems(lines, "the hub found them invalid; nothing was applied")
    return RefusedObjects(lines, hub_refused_message(exc))


# ------------------------------------------------------------ gu apply

_PATH_HELP = "A manifest file or folder (recursive, *.yaml/*.yml); - reads stdin. Repeatable."


@click.command("apply")
@click.option("-f", "--filename", "option_paths", multiple=True, metavar="PATH", help=_PATH_HELP)
@click.argument("extra_paths", nargs=-1, metavar="[PATH]...")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option(
    "--prune", is_flag=True, help="Delete objects of the apply set that are not in the files."
)
@click.option(
    "--set",
    "apply_set",
    metavar="NAME",
    help="Apply set name (default: the first PATH, normalized; a file's folder).",
)
@pass_state
def apply_command(
    state: CliState,
    option_paths: tuple[str, ...],
    extra_paths: tuple[str, ...],
    dry_run: bool,
    prune: bool,
    apply_set: str | None,
) -> None:
    """Apply manifests to the hub, atomically: all objects or none.

    Every document of every file is validated first; one bad document and
    nothing is sent (exit 2, each problem as file:line:col: field: message).
    Prints one `kind/name created|configured|unchanged|pruned` line per object.

    The apply set defaults to the first PATH (normalized; for a file, its
    folder). Run from the same directory each time or pass --set, so --prune
    compares against the same set.

    \b
    Examples:
      gu apply -f examples/quickstart/
      gu apply -f deploy/ --prune
      cat session.yaml | gu apply -f - --set scratch
    """
    paths = collect_paths(option_paths, extra_paths)
    apply_set = apply_set or default_apply_set(paths)
    if prune and not apply_set:
        raise click.UsageError("--prune needs an apply set: pass --set NAME when reading stdin")
    docs = load_paths(paths)
    if not docs:
        raise BadInputError(no_documents_message(paths))
    try:
        results = apply_documents(
            state.client(), docs, apply_set=apply_set, prune=prune, dry_run=dry_run
        )
    except ApiError as exc:
        problem = refused_manifests(exc, docs)
        if problem is not None:
            raise problem from None
        raise
    for result in results:
        click.echo(result_line(result, dry_run))
    click.echo(summary_line(results, apply_set, dry_run))


# ------------------------------------------------------------ gu diff


def diff_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object a user writes: labels, user annotations, spec (keys sorted)."""
    meta = obj.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith(SYSTEM_ANNOTATION_PREFIX)
    }
    view_meta: dict[str, Any] = {}
    if labels:
        view_meta["labels"] = labels
    if annotations:
        view_meta["annotations"] = annotations
    view: dict[str, Any] = {}
    if view_meta:
        view["metadata"] = view_meta
    view["spec"] = obj.get("spec") or {}
    return dict(sort_keys(view))


def unified_diff(live: dict[str, Any] | None, doc: Document) -> list[str]:
    """Diff lines (no trailing newlines) from the hub's object to the file's; [] if equal."""
    want = diff_view(doc.data)
    have = diff_view(live) if live is not None else None
    if have == want:
        return []
    have_lines = dump_yaml(have).splitlines() if have is not None else []
    want_lines = dump_yaml(want).splitlines()
    return list(
        difflib.unified_diff(
            have_lines,
            want_lines,
            fromfile=f"hub/{doc.kind}/{doc.name}",
            tofile=doc.path,
            lineterm="",
        )
    )


def _print_diff(lines: Sequence[str], colour: bool) -> None:
    if not colour:
        for line in lines:
            click.echo(line)
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for line in lines:
        if line.startswith(("---", "+++")):
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        else:
            style = ""
        console.print(Text(line, style=style))


@click.command("diff", short_help="Diff manifests against the hub (exit 1 if they differ).")
@click.option("-f", "--filename", "option_paths", multiple=True, metavar="PATH", help=_PATH_HELP)
@click.argument("extra_paths", nargs=-1, metavar="[PATH]...")
@pass_state
@click.pass_context
def diff_command(
    ctx: click.Context,
    state: CliState,
    option_paths: tuple[str, ...],
    extra_paths: tuple[str, ...],
) -> None:
    """Show how the manifests differ from the hub (unified diff of labels,
    annotations and spec, as YAML).

    Exit 0: no differences; 1: differences; 2 or more: an error. An object
    missing on the hub shows as all lines added.
    """
    paths = collect_paths(option_paths, extra_paths)
    docs = load_paths(paths)
    client = state.client()
    colour = sys.stdout.isatty()
    differs = False
    for doc in docs:
        try:
            live: dict[str, Any] | None = client.get(doc.kind, doc.name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            live = None
        lines = unified_diff(live, doc)
        if lines:
            differs = True
            _print_diff(lines, colour)
    if differs:
        ctx.exit(EXIT_DIFFERENCES)
