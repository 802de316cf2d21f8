"""What the CLI does when something goes wrong: exit codes and stderr messages.

Scripts branch on the exit code, people read stderr. So every failure a user
can act on becomes one ``click.ClickException`` subclass with a fixed exit
code and a short message (what, where, what to do), and ``translate`` turns the
exceptions of the layers below (client, config, loader, kinds) into them in one
place — the command group calls it, so no command has to, and no traceback
reaches the user for bad input or an unreachable hub.

Exit codes::

    0  ok
    1  not found (get, describe, delete); `gu diff` found differences
    2  bad input: invalid manifests, usage errors, an unknown kind, a bad client config
    3  the hub refused the request or could not be reached
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

import click

from controller.client import ApiError, HubUnreachable
from controller.config import ConfigError
from specs.kinds import UnknownKindError
from specs.loader import ManifestErrors

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_DIFFERENCES = 1
EXIT_BAD_INPUT = 2
EXIT_HUB = 3


class NotFoundError(click.ClickException):
    """The named object does not exist on the hub (exit 1)."""

    exit_code = EXIT_NOT_FOUND


class BadInputError(click.ClickException):
    """The user's input is wrong: fix it and run again (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class HubError(click.ClickException):
    """The hub said no, or did not answer (exit 3)."""

    exit_code = EXIT_HUB


class ManifestProblems(click.ClickException):
    """Invalid manifests: one ``file:line:col: field: message`` line per problem (exit 2).

    Also used for field errors the hub reports on apply (mapped back to the
    documents they came from).
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, lines: Sequence[str], what_happened: str = "nothing was applied") -> None:
        count = len(lines)
        summary = f"{count} problem{'s' if count != 1 else ''} in the manifests; {what_happened}"
        super().__init__(summary)
        self.lines = list(lines)

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.lines:
            click.echo(line, err=True)
        click.echo(f"Error: {self.message}", err=True)


class RefusedObjects(HubError):
    """The hub refused some objects of an apply (e.g. by ImagePolicy): one
    ``file:line: field: message`` line per refused object, then the hub's message (exit 3).
    """

    def __init__(self, lines: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.lines = list(lines)

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.lines:
            click.echo(line, err=True)
        click.echo(f"Error: {self.message}", err=True)


def hub_unreachable_message(exc: HubUnreachable) -> str:
    """The message for a hub that does not answer, with what to check."""
    return (
        f"{exc.message}\n"
        "  Is the hub running (`gu hub`)? Check the hub URL of the context with `gu config`."
    )


def hub_refused_message(exc: ApiError) -> str:
    """The hub's own message, with the HTTP status for reference."""
    return f"the hub refused the request (HTTP {exc.status}): {exc.message}"


def field_error_lines(exc: ApiError) -> list[str]:
    """``path: message`` lines of the ``details`` of a hub error (no document mapping)."""
    lines = []
    for item in exc.details:
        path = item.get("path") or ""
        message = item.get("message") or ""
        lines.append(f"{path}: {message}" if path else str(message))
    return lines


def translate(exc: Exception) -> click.ClickException | None:
    """The CLI error for an exception from the layers below, or None if it is a bug."""
    if isinstance(exc, ManifestErrors):
        return ManifestProblems([str(e) for e in exc.errors])
    if isinstance(exc, HubUnreachable):
        return HubError(hub_unreachable_message(exc))
    if isinstance(exc, ApiError):
        if exc.status == 404:
            return NotFoundError(exc.message)
        if exc.status == 401:
            return HubError(
                f"the hub did not accept our key (HTTP 401): {exc.message}\n"
                "  Check the key of the context with `gu config`."
            )
        message = hub_refused_message(exc)
        details = field_error_lines(exc)
        if details:
            message += "\n  " + "\n  ".join(details)
        return HubError(message)
    if isinstance(exc, ConfigError):
        return BadInputError(str(exc))
    if isinstance(exc, UnknownKindError):
        return BadInputError(str(exc.args[0]) if exc.args else str(exc))
    return None
