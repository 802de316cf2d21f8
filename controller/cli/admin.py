"""Commands about the CLI itself and its credentials: ``gu auth``, ``gu config``, ``gu schema``.

``gu auth token`` logs in with the current context's key (challenge–response,
see ``controller.client``) and prints only the bearer token, for scripts::

    curl -H "Authorization: Bearer $(gu auth token)" http://127.0.0.1:61622/v1/sessions

``gu config`` shows the contexts of the client config — hub URL, principal and
the *path* of the key, never key material — and ``gu config use NAME``
switches the current one. ``gu schema -o DIR`` writes the JSON Schemas of the
user kinds (for editor completion and CI validation of a GitOps repo).

``gu login`` and ``gu keys …`` (an app's key and context) live in ``keys.py``.
"""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.errors import BadInputError
from controller.cli.output import format_table
from controller.cli.state import CliState, pass_state
from controller.config import load_config

# ------------------------------------------------------------ gu auth


@click.group("auth")
def auth_group() -> None:
    """Credentials of the current context."""


@auth_group.command("token")
@pass_state
def auth_token_command(state: CliState) -> None:
    """Print a fresh bearer token of the current context (and nothing else).

    \b
    Example:
      curl -H "Authorization: Bearer $(gu auth token)" "$HUB/v1/sessions"
    """
    click.echo(state.client().login())


# ------------------------------------------------------------ gu config


@click.group("config", invoke_without_command=True, short_help="Show or switch client contexts.")
@click.pass_context
def config_group(ctx: click.Context) -> None:
    """Show the contexts of the client config (same as `gu config view`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(config_view_command)


@config_group.command("view")
@pass_state
def config_view_command(state: CliState) -> None:
    """Table of contexts: CURRENT, NAME, HUB, PRINCIPAL, KEY (the key's path only)."""
    config = load_config(state.config)
    current = state.context or config.current
    rows = [
        ["*" if ctx.name == current else "", ctx.name, ctx.hub, ctx.principal, ctx.key]
        for ctx in config.contexts
    ]
    click.echo(f"# {config.path}", err=True)
    if not rows:
        click.echo("No contexts; start a hub with `gu hub` (it writes one).", err=True)
        return
    click.echo(format_table(["CURRENT", "NAME", "HUB", "PRINCIPAL", "KEY"], rows))


@config_group.command("use")
@click.argument("name")
@pass_state
def config_use_command(state: CliState, name: str) -> None:
    """Make context NAME the current one."""
    config = load_config(state.config)
    ctx = config.context(name)  # a ConfigError lists the known contexts
    config.current = ctx.name
    config.save()
    click.echo(f'switched to context "{ctx.name}" ({ctx.hub})')


# ------------------------------------------------------------ gu schema


@click.command("schema")
@click.option(
    "-o",
    "--output-dir",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the JSON Schema files into (created if missing).",
)
def schema_command(output_dir: Path) -> None:
    """Write the JSON Schemas of the user kinds and print their paths.

    Point your editor's YAML language server at them for completion and
    validation while writing manifests.
    """
    from specs.schema import write_schemas

    try:
        written = write_schemas(output_dir)
    except OSError as exc:
        raise BadInputError(
            f"cannot write schemas to {output_dir}: {exc.strerror or exc}"
        ) from None
    for path in written:
        click.echo(str(path))
