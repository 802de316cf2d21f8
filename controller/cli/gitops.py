"""``gu watch PATH…``: GitOps mode — keep the hub equal to a folder of manifests.

The flow:

1. Apply on start.
2. Watch the files (watchfiles, ~200 ms debounce). Any change of a
   ``*.yaml``/``*.yml`` file (added, edited, deleted) triggers a full pass:
   load every file, apply everything in one atomic request, prune with
   ``--prune``.
3. Every ``--interval`` seconds without a change, apply again regardless.
   The hub answers "unchanged" for every object still as written, which writes
   nothing; an object someone deleted or edited on the hub behind gu's back comes
   back as ``created``/``configured`` and is reported as
   ``drift corrected: session/x configured``.

Why a full apply every time rather than per-file deltas: the apply is
atomic and idempotent on the hub, so "send the whole desired state" is always
right, even after missed events, a hub restart or a file renamed across folders.

A broken file never reaches the hub: the pass prints its errors
(``file:line:col: field: message``), applies nothing and prunes nothing, so
the last good state stays. Paths holding no manifest at all (a checkout in
progress, a wrong path) count as broken too: pruning the whole set on that is
never what anyone meant. While the files stay broken, periodic passes
re-apply the last good set (without prune), which keeps drift correction
working. An unreachable hub or a refusal is printed and retried next pass.

The logic lives in ``GitOpsWatcher`` (``apply_once`` for one pass, ``run``
for the loop) so tests can drive it in-process as well as through the command.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import click
import watchfiles
from watchfiles import DefaultFilter

from controller.cli.apply import (
    apply_documents,
    hub_field_errors,
    no_documents_message,
    result_line,
    summary_line,
)
from controller.cli.errors import hub_refused_message, hub_unreachable_message
from controller.cli.state import CliState, pass_state
from controller.client import ApiError, Client, HubUnreachable
from specs.loader import Document, ManifestErrors, load_paths

Trigger = Literal["start", "change", "periodic"]
MANIFEST_SUFFIXES = (".yaml", ".yml")
DEBOUNCE_MS = 200


@dataclass
class PassResult:
    """What one pass did: the hub's results and any problems that stopped it."""

    trigger: Trigger
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    applied: bool = False
    """An apply went through (of the files, or of the last good set)."""
    manifests_broken: bool = False
    """The files did not load; ``errors`` lists their problems."""
    from_last_good: bool = False
    """The files were broken, so the last good set was applied instead (no prune)."""

    @property
    def changed(self) -> list[dict[str, Any]]:
        """Results that changed something on the hub (not "unchanged")."""
        return [r for r in self.results if r.get("action") != "unchanged"]


class ManifestFilter(DefaultFilter):
    """Changes that matter: YAML files under a watched folder, or a file named itself.

    Hidden files and folders are skipped, as the loader skips them.
    """

    def __init__(self, folders: Sequence[str], files: Sequence[str]) -> None:
        super().__init__()
        self.folders = [os.path.realpath(f) for f in folders]
        self.files = {os.path.realpath(f) for f in files}

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if not super().__call__(change, path):
            return False
        real = os.path.realpath(path)
        if real in self.files:
            return True
        if not real.endswith(MANIFEST_SUFFIXES):
            return False
        for folder in self.folders:
            if real.startswith(folder + os.sep):
                relative = os.path.relpath(real, folder)
                return not any(part.startswith(".") for part in relative.split(os.sep))
        return False


def watch_roots(paths: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(folders to watch recursively, folders of named files, the named files).

    A named file is watched through its folder: editors often save by writing a
    new file and renaming it over the old one, which a watch on the file loses.
    """
    folders: list[str] = []
    file_parents: list[str] = []
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            folders.append(path)
        else:
            files.append(path)
            parent = os.path.dirname(path) or "."
            if parent not in file_parents:
                file_parents.append(parent)
    return folders, file_parents, files


class GitOpsWatcher:
    """Applies ``paths`` to the hub on start, on every file change and every ``interval``."""

    def __init__(
        self,
        client: Client,
        paths: Sequence[str],
        *,
        apply_set: str | None,
        prune: bool = False,
        interval: float = 30.0,
        echo: Callable[[str], None] | None = None,
        echo_err: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.paths = list(paths)
        self.apply_set = apply_set
        self.prune = prune
        self.interval = interval
        self.echo = echo or click.echo
        self.echo_err = echo_err or (lambda line: click.echo(line, err=True))
        self.last_good: list[Document] | None = None
        self._in_sync = False
        self._reported_errors: list[str] = []

    # -------------------------------------------------------------- one pass

    def apply_once(self, trigger: Trigger = "change") -> PassResult:
        """Load the files and apply them; on broken files, apply nothing of them."""
        docs, errors = self._load()
        if errors:
            if trigger == "periodic" and self.last_good is not None:
                result = self._apply(self.last_good, prune=False, trigger=trigger)
                result.errors = errors + result.errors
                result.manifests_broken = True
                result.from_last_good = True
                return result
            return PassResult(trigger, errors=errors, manifests_broken=True)
        result = self._apply(docs, prune=self.prune, trigger=trigger)
        if result.applied:
            self.last_good = docs
        return result

    def _load(self) -> tuple[list[Document], list[str]]:
        """The documents of the paths, or the problems that make them unusable."""
        try:
            docs = load_paths(self.paths)
        except ManifestErrors as exc:
            return [], [str(e) for e in exc.errors]
        if not docs:  # e.g. mid-checkout: never prune the whole set for that
            return [], [no_documents_message(self.paths)]
        return docs, []

    def _apply(self, docs: list[Document], *, prune: bool, trigger: Trigger) -> PassResult:
        try:
            results = apply_documents(
                self.client, docs, apply_set=self.apply_set, prune=prune, dry_run=False
            )
        except HubUnreachable as exc:
            return PassResult(trigger, errors=[hub_unreachable_message(exc)])
        except ApiError as exc:
            located = hub_field_errors(exc, docs) if exc.details else []
            return PassResult(trigger, errors=[*located, hub_refused_message(exc)])
        return PassResult(trigger, results=results, applied=True)

    # -------------------------------------------------------------- reporting

    def report(self, result: PassResult) -> None:
        """Print what a pass changed and, once per distinct set of problems, why it failed."""
        drift = result.trigger == "periodic" and self._in_sync
        for item in result.changed:
            self.echo(("drift corrected: " if drift else "") + result_line(item))
        if result.errors:
            # a periodic pass repeats the same problems every interval: say them once
            if result.trigger != "periodic" or result.errors != self._reported_errors:
                for line in result.errors:
                    self.echo_err(f"error: {line}")
                if result.manifests_broken:
                    self.echo_err(
                        "error: manifests not applied; the last good state stays on the hub"
                    )
                else:
                    self.echo_err("error: apply failed; retrying on the next change or interval")
            self._reported_errors = result.errors
        elif self._reported_errors:
            self.echo_err("manifests applied again")
            self._reported_errors = []
        if result.applied and not result.manifests_broken:
            self._in_sync = True
        elif not result.applied:
            self._in_sync = False

    # -------------------------------------------------------------- the loop

    def run(self, stop_event: threading.Event) -> None:
        """Apply on start, then on every change and every interval, until ``stop_event``."""
        start = self.apply_once("start")
        self.report(start)
        if start.applied:
            self.echo_err(summary_line(start.results, self.apply_set, dry_run=False))
        folders, file_parents, files = watch_roots(self.paths)
        timeout_ms = int(min(1000.0, max(50.0, self.interval * 1000 / 4)))
        next_periodic = time.monotonic() + self.interval
        for changes in watchfiles.watch(
            *folders,
            *file_parents,
            watch_filter=ManifestFilter(folders, files),
            debounce=DEBOUNCE_MS,
            step=50,
            stop_event=stop_event,
            rust_timeout=timeout_ms,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if stop_event.is_set():
                break
            if changes:
                self.report(self.apply_once("change"))
                next_periodic = time.monotonic() + self.interval
            elif time.monotonic() >= next_periodic:
                self.report(self.apply_once("periodic"))
                next_periodic = time.monotonic() + self.interval


# ------------------------------------------------------------ gu watch


@click.command("watch", short_help="GitOps mode: apply on every file change and every interval.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True), metavar="PATH...")
@click.option(
    "--prune", is_flag=True, help="Delete objects of the apply set no longer in the files."
)
@click.option(
    "--interval",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.5),
    metavar="SECONDS",
    help="Re-apply this often even without changes (corrects drift on the hub).",
)
@click.option(
    "--set",
    "apply_set",
    metavar="NAME",
    help="Apply set name (default: the first PATH, normalized; a file's folder).",
)
@pass_state
def watch_command(
    state: CliState,
    paths: tuple[str, ...],
    prune: bool,
    interval: float,
    apply_set: str | None,
) -> None:
    """GitOps mode: keep the hub equal to the manifests in PATH... .

    Applies on start, on every change of a *.yaml/*.yml file and every
    --interval seconds (an object changed or deleted on the hub is put back:
    "drift corrected"). Prints one line per object changed. A broken file is
    reported as file:line:col and nothing of it is applied; the last good
    state stays. Stop with Ctrl-C or SIGTERM.

    \b
    Example:
      gu watch deploy/ --prune --interval 10
    """
    from controller.cli.apply import default_apply_set

    apply_set = apply_set or default_apply_set(paths)
    watcher = GitOpsWatcher(
        state.client(), paths, apply_set=apply_set, prune=prune, interval=interval
    )
    logging.getLogger("watchfiles").setLevel(logging.ERROR)
    stop_event = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    click.echo(
        f'watching {", ".join(paths)} (apply set "{apply_set}", '
        f"prune {'on' if prune else 'off'}, every {interval:g}s); Ctrl-C to stop",
        err=True,
    )
    try:
        watcher.run(stop_event)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("stopped watching", err=True)
