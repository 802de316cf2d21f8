"""Keys and app log-in: ``gu keys new|pub`` and ``gu login``.

A key is an Ed25519 private key in a 0600 file (PEM/PKCS#8; OpenSSH-format
keys are read too). Only its public half, ``ed25519:<base64>``, ever goes into
a manifest (an App's ``publicKeys``) or to the hub.
"""

from __future__ import annotations

from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.cli.errors import BadInputError
from controller.cli.state import CliState, pass_state
from controller.client import Client
from controller.config import Context, load_config
from specs.identity import (
    KeyFileError,
    generate_key,
    load_private_key,
    public_key_str,
    save_private_key,
)


@click.group("keys")
def keys_group() -> None:
    """Ed25519 keys for apps, signers and admins."""


@keys_group.command("new")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key file to write (0600).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def keys_new_command(out: Path, force: bool) -> None:
    """Write a new private key to OUT and print its public key."""
    if out.exists() and not force:
        raise BadInputError(f"{out} exists; pass --force to overwrite it")
    key = generate_key()
    save_private_key(key, out)
    click.echo(public_key_str(key))


@keys_group.command("pub")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def keys_pub_command(file: Path) -> None:
    """Print the public key (ed25519:<base64>) of the private key in FILE."""
    click.echo(public_key_str(_load(file)))


def _load(file: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(file)
    except KeyFileError as exc:
        raise BadInputError(str(exc)) from None


@click.command("login")
@click.option("--app", "app", required=True, metavar="NAME", help="The App to log in as.")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The app's private key file.",
)
@click.option("--hub", "hub_url", required=True, metavar="URL", help="e.g. http://127.0.0.1:61622")
@click.option("--name", metavar="CONTEXT", help="Context name (default: APP@HOST:PORT).")
@pass_state
def login_command(
    state: CliState, app: str, key_file: Path, hub_url: str, name: str | None
) -> None:
    """Log in as an App (challenge–response) and make that the current context."""
    key = _load(key_file)
    with Client(hub_url, key) as client:
        client.login()
        who = client.call("GET", "/v1/whoami")
    if who["role"] != "app" or who["name"] != app:
        raise BadInputError(
            f"this key logs in as {who['role']} {who['name']!r}, not as app {app!r}; "
            f"add its public key ({public_key_str(key)}) to App {app!r}'s spec.publicKeys"
        )
    cfg = load_config(state.config, missing_ok=True)
    host = hub_url.split("://", 1)[-1].rstrip("/")
    ctx = Context(
        name=name or f"{app}@{host}",
        hub=hub_url.rstrip("/"),
        key=str(key_file.resolve()),
        principal=f"app:{app}",
    )
    cfg.upsert(ctx)
    cfg.save()
    click.echo(
        f"logged in to {hub_url} as app {app}; context {ctx.name} is now current ({cfg.path})"
    )
