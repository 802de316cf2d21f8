"""The ``gu`` command: one click group, one module per concern.

Layout (a command lives with its concern, the group only wires them)::

    gu hub                      controller/cli/hub.py      run the hub
    gu apply | diff             controller/cli/apply.py    manifests → hub
    gu watch                    controller/cli/gitops.py   GitOps mode
    gu get | describe | delete  controller/cli/objects.py  objects on the hub
    gu auth | config | schema   controller/cli/admin.py    credentials, contexts, schemas

    gu peers | peer | logs      controller/cli/pool.py     providers, workload output
    gu hub token create         controller/cli/pool.py     agent join tokens
    gu image build|hash|push|ls|sign|verify
                                controller/cli/images.py   images
    gu keys new|pub | login     controller/cli/keys.py     keys, app log-in
    gu blob … | outputs         controller/cli/blobs.py    Session data in and out
    gu ui | suspend | resume    controller/cli/ui.py       web UI link, pause Sessions
    gu vnet rotate-key          controller/cli/vnet.py     a network's key
    gu hub metrics-token        controller/cli/ui.py       the /metrics scrape token
    gu agent                    agent/cli.py               the provider agent
    gu vmkit assets             agent/cli.py               the vm runtime's guest assets

``GuGroup.invoke`` is the one place where errors of the layers below (client,
config, loader) become short stderr messages and the exit codes documented in
the help, via ``controller.cli.errors.translate``.
"""

from __future__ import annotations

import click

from controller.cli.admin import auth_group, config_group, schema_command
from controller.cli.apply import apply_command, diff_command
from controller.cli.blobs import blob_group, outputs_command
from controller.cli.errors import translate
from controller.cli.gitops import watch_command
from controller.cli.hub import hub_group
from controller.cli.images import image_group
from controller.cli.keys import keys_group, login_command
from controller.cli.objects import delete_command, describe_command, get_command
from controller.cli.pool import (
    label_group,
    logs_command,
    peer_command,
    peers_command,
    token_group,
)
from controller.cli.state import CliState
from controller.cli.ui import metrics_token_command, resume_command, suspend_command, ui_command
from controller.cli.vnet import vnet_group


class GuGroup(click.Group):
    """The root group: maps known failures to stderr messages and exit codes."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            raise error from None


@click.group(cls=GuGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    envvar="GU_CONFIG",
    metavar="FILE",
    help="Client config (default: $GU_CONFIG, else ~/.config/gu/config.yaml).",
)
@click.option("--context", metavar="NAME", help="Context of the client config to use.")
@click.version_option(package_name="gu", prog_name="gu")
@click.pass_context
def cli(ctx: click.Context, config: str | None, context: str | None) -> None:
    """gu: declarative distributed compute for the machines of your network.

    Write manifests (App, ImagePolicy, Priority, VirtualNetwork, Session) in a
    Git repo, `gu apply` or `gu watch` them, and the hub makes it so.

    \b
    Exit codes:
      0  ok
      1  not found (get, describe, delete); `gu diff` found differences
      2  bad input: invalid manifests (file:line:col), usage errors,
         an unknown kind, a missing or broken client config
      3  the hub refused the request (its message is shown) or is unreachable
    """
    state = ctx.ensure_object(CliState)
    state.config = config
    state.context = context
    ctx.call_on_close(state.close)


cli.add_command(hub_group)
cli.add_command(apply_command)
cli.add_command(diff_command)
cli.add_command(watch_command)
cli.add_command(get_command)
cli.add_command(describe_command)
cli.add_command(delete_command)
cli.add_command(auth_group)
cli.add_command(config_group)
cli.add_command(schema_command)
cli.add_command(peers_command)
cli.add_command(peer_command)
cli.add_command(logs_command)
cli.add_command(label_group)
cli.add_command(image_group)
cli.add_command(keys_group)
cli.add_command(login_command)
cli.add_command(blob_group)
cli.add_command(outputs_command)
cli.add_command(vnet_group)
cli.add_command(ui_command)
cli.add_command(suspend_command)
cli.add_command(resume_command)
hub_group.add_command(token_group)
hub_group.add_command(metrics_token_command)


@cli.command(
    "agent",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
    short_help="Run the provider agent (enrol, heartbeat, run placements).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def agent_command(args: tuple[str, ...]) -> None:
    """Run the provider agent: `gu agent --help` for its options."""
    # imported on use: the agent is its own program (agent/), not part of the hub's CLI
    from agent.cli import agent_command as run

    run.main(args=list(args), prog_name="gu agent", standalone_mode=True)


@cli.command(
    "vmkit",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
    short_help="gVMkit (the vm runtime): build its guest assets.",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def vmkit_command(args: tuple[str, ...]) -> None:
    """gVMkit's provider-side tools: `gu vmkit --help`."""
    from agent.cli import vmkit_group as run  # the agent's side, like `gu agent`

    run.main(args=list(args), prog_name="gu vmkit", standalone_mode=True)


def main() -> None:
    """Entry point of the ``gu`` console script."""
    cli(prog_name="gu")


if __name__ == "__main__":
    main()
