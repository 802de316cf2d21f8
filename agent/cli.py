"""``gu agent``: run the provider agent in the foreground.

A click command (``agent_command``) that the ``gu`` group mounts; ``python -m
agent.main`` runs it on its own. It parses options, sets up structured
logging (``GU_LOG_LEVEL``, default INFO, to stderr) and calls
``agent.main.run_agent``. Errors a user can act on become one line on stderr:

    exit 2  bad options (unknown runtime, bad label), or not enrolled and no token
    exit 3  the hub refused enrolment or log-in (the message says what to do)

The join token may come from ``$GU_JOIN_TOKEN`` instead of the command line,
which keeps it out of ``ps`` output; it is never logged.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from agent.identity import DEFAULT_STATE_DIR, EnrollmentError, NotEnrolled
from agent.main import (
    DEFAULT_HEARTBEAT,
    DEFAULT_VNET_PORT,
    AgentConfig,
    AgentConfigError,
    run_agent,
)
from runtimes.registry import RuntimeOptions
from specs.meta import parse_labels as parse_label_items


class HubRefused(click.ClickException):
    """The hub refused enrolment or log-in (exit 3, like the rest of ``gu``)."""

    exit_code = 3


class BadOption(click.ClickException):
    """An option that cannot work (exit 2)."""

    exit_code = 2


def setup_logging(level: str | None = None) -> None:
    """key=value lines on stderr, one per event (same shape as the hub's)."""
    logging.basicConfig(
        level=(level or os.environ.get("GU_LOG_LEVEL") or "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def parse_labels(values: tuple[str, ...]) -> dict[str, str] | None:
    """``("k=v", …)`` → a validated label dict; None when no ``--label`` was given."""
    if not values:
        return None
    try:
        return parse_label_items(values, "--label")
    except ValueError as exc:
        raise BadOption(str(exc)) from None


@click.command("agent", short_help="Run the provider agent (enrol, heartbeat, run placements).")
@click.option(
    "--hub",
    "hubs",
    required=True,
    multiple=True,
    metavar="URL",
    help="The hub's URL, e.g. http://hub:61622; give it once per hub of a cluster sharing "
    "one store (the agent uses the first that answers and moves on when it stops).",
)
@click.option(
    "--join-token",
    envvar="GU_JOIN_TOKEN",
    metavar="TOKEN",
    help="Join token for the first start (`gu hub token create`); also $GU_JOIN_TOKEN.",
)
@click.option(
    "--state-dir",
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    metavar="DIR",
    help="Where the agent keeps its key, image cache and workload records.",
)
@click.option("--name", metavar="NAME", help="Display name on the hub (default: host name).")
@click.option(
    "--label", "labels", multiple=True, metavar="KEY=VALUE", help="A provider label (repeatable)."
)
@click.option(
    "--runtimes",
    metavar="LIST",
    help="Comma-separated runtimes to offer, e.g. native,docker (default: every available one).",
)
@click.option(
    "--docker-host",
    metavar="URL",
    envvar="DOCKER_HOST",
    help="The Docker engine for the docker runtime (default: DOCKER_HOST or the usual socket).",
)
@click.option(
    "--docker-image-gc-delay",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="How long an image the docker runtime loaded stays once no container uses it.",
)
@click.option(
    "--vm-accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="The vm runtime's accelerator: auto probes KVM with a short boot and falls back to TCG.",
)
@click.option(
    "--vm-assets",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where the vm runtime's guest assets are (default: STATE_DIR/runtimes/vm/assets; "
    "build them with `gu vmkit assets -o DIR`).",
)
@click.option(
    "--heartbeat",
    default=DEFAULT_HEARTBEAT,
    show_default=True,
    type=click.FloatRange(min=0.1, max=3600),
    metavar="SECONDS",
    help="Seconds between heartbeats.",
)
@click.option(
    "--vnet-port",
    default=DEFAULT_VNET_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="UDP port of the virtual network bridge (0: any free one).",
)
@click.option(
    "--vnet-bind",
    default="0.0.0.0",
    show_default=True,
    metavar="ADDRESS",
    help="Address the virtual network bridge listens on (its endpoints are reported).",
)
def agent_command(
    hubs: tuple[str, ...],
    join_token: str | None,
    state_dir: str,
    name: str | None,
    labels: tuple[str, ...],
    runtimes: str | None,
    docker_host: str | None,
    docker_image_gc_delay: float,
    vm_accel: str,
    vm_assets: Path | None,
    heartbeat: float,
    vnet_port: int,
    vnet_bind: str,
) -> None:
    """Run the provider agent until Ctrl-C or SIGTERM.

    The first start needs a join token and enrols this machine as a provider;
    later starts log in with the agent's own key. Workloads keep running when
    the agent stops, and a restarted agent takes them over again.
    """
    setup_logging()
    wanted = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    config = AgentConfig(
        hub=",".join(h.strip().rstrip("/") for h in hubs),
        state_dir=Path(state_dir).expanduser(),
        join_token=join_token or None,
        name=name,
        labels=parse_labels(labels),
        runtimes=wanted,
        runtime_options=RuntimeOptions(
            docker_host=docker_host or None,
            docker_image_gc_delay=docker_image_gc_delay,
            vm_accel=vm_accel,
            vm_assets=vm_assets,
        ),
        heartbeat=heartbeat,
        vnet_port=vnet_port,
        vnet_bind=vnet_bind,
    )
    try:
        run_agent(config)
    except NotEnrolled as exc:
        raise BadOption(str(exc)) from None
    except EnrollmentError as exc:
        raise HubRefused(str(exc)) from None
    except AgentConfigError as exc:
        raise BadOption(str(exc)) from None
    except KeyboardInterrupt:
        pass


@click.group("vmkit")
def vmkit_group() -> None:
    """gVMkit, the vm runtime: its guest assets."""


@vmkit_group.command("assets")
@click.option("--kernel", type=click.Path(dir_okay=False, path_type=Path), help="A vmlinuz.")
@click.option(
    "--modules-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --kernel: its lib/modules/VERSION folder (virtio, squashfs, overlay).",
)
@click.option(
    "--kernel-deb",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A linux-image-*-cloud-amd64 .deb (default: apt-get download the current one).",
)
@click.option("--busybox", type=click.Path(dir_okay=False, path_type=Path), help="Static busybox.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_STATE_DIR / "runtimes" / "vm" / "assets"),
    show_default=True,
    help="Where to write them (the agent's default --vm-assets).",
)
def assets_command(
    kernel: Path | None,
    modules_dir: Path | None,
    kernel_deb: Path | None,
    busybox: Path | None,
    out: Path,
) -> None:
    """Build the guest kernel and initramfs (named by hash) for the vm runtime."""
    from runtimes.vm.assets import AssetsError, build_assets

    try:
        built = build_assets(
            out.expanduser(),
            kernel=kernel,
            modules_dir=modules_dir,
            kernel_deb=kernel_deb,
            busybox=busybox,
        )
    except AssetsError as exc:
        raise BadOption(str(exc)) from None
    click.echo(f"kernel     {built.kernel}  ({built.kernel_version})")
    click.echo(f"initramfs  {built.initramfs}")


__all__ = ["agent_command", "parse_labels", "setup_logging", "vmkit_group"]
