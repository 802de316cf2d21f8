"""The web UI's log-in (``gu ui``), suspending Sessions (``gu suspend``/``gu resume``) and
the metrics scrape token (``gu hub metrics-token``)."""

from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path

import click

from controller.cli.state import CliState, pass_state


def _can_open_browser() -> bool:
    """A graphical session to open a browser in (never a console browser that would take
    over the terminal, nor one started on a headless server)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command("ui")
@click.option(
    "--open/--no-open",
    "open_",
    default=None,
    help="Open the link in a browser (default: when there is a desktop session).",
)
@pass_state
def ui_command(state: CliState, open_: bool | None) -> None:
    """Print a one-time log-in link for the hub's web UI (and open it where a browser is).

    The link works once, within 60 s, and logs the browser in as this context's
    principal (the admin, or an app: an app sees its own Sessions and the providers it
    may use). Your private key never leaves this machine: this command logs in with
    it and asks the hub for the link.
    """
    link = state.client().call("POST", "/v1/ui/links")
    click.echo(link["url"])
    click.echo(f"(works once, within {link['expiresIn']} s)", err=True)
    if open_ or (open_ is None and _can_open_browser()):
        webbrowser.open(link["url"])


def _set_suspend(state: CliState, name: str, suspend: bool) -> None:
    obj = state.client().call("PUT", f"/v1/sessions/{name}/suspend", json={"suspend": suspend})
    phase = (obj.get("status") or {}).get("phase", "Pending")
    what = "suspended" if suspend else "resumed"
    click.echo(f"session/{name} {what} (phase now {phase}; `gu get session {name}` follows it)")


@click.command("suspend")
@click.argument("session")
@pass_state
def suspend_command(state: CliState, session: str) -> None:
    """Suspend a Session (spec.suspend: true): its workloads pause and keep their place.

    A GitOps folder that says otherwise sets it back on its next apply: change the
    manifest there instead.
    """
    _set_suspend(state, session, True)


@click.command("resume")
@click.argument("session")
@pass_state
def resume_command(state: CliState, session: str) -> None:
    """Resume a suspended Session (spec.suspend: false)."""
    _set_suspend(state, session, False)


@click.command("metrics-token")
@click.option(
    "-o",
    "--output",
    "path",
    type=click.Path(dir_okay=False),
    required=True,
    help="File to write the token to (0600), for Prometheus' credentials_file.",
)
@pass_state
def metrics_token_command(state: CliState, path: str) -> None:
    """Make the read-only token Prometheus scrapes /metrics with (admin).

    A new token replaces the previous one, which stops working at once.
    """
    token = state.client().call("POST", "/v1/metrics/token")["token"]
    target = Path(path).expanduser()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(target, 0o600)
    click.echo(f"metrics token written to {target} (0600); the previous one no longer works")
