"""``gu vnet rotate-key NAME``: a VirtualNetwork's key, rotated (admin)."""

from __future__ import annotations

import click

from controller.cli.state import CliState, pass_state
from controller.vnetkeys import OVERLAP_SECONDS


@click.group("vnet", short_help="Virtual networks: rotate a network's key.")
def vnet_group() -> None:
    """Virtual networks (the objects themselves: gu get vnet, gu describe vnet)."""


@vnet_group.command("rotate-key")
@click.argument("name")
@pass_state
def rotate_key_command(state: CliState, name: str) -> None:
    """Give network NAME a new key; its agents take it up, the old one works a little
    longer so that traffic does not stop."""
    answer = state.client().call("POST", f"/v1/vnet/{name}/rotate-key")
    click.echo(
        f"vnet/{name}: key {answer['keyId']} now (the previous one is accepted "
        f"{OVERLAP_SECONDS:.0f} s more)"
    )
