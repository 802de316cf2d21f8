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
from pydantic import TypeAdapter, ValidationError

from agent.identity import DEFAULT_STATE_DIR, EnrollmentError, NotEnrolled
from agent.main import DEFAULT_HEARTBEAT, AgentConfig, AgentConfigError, run_agent
from runtimes.registry import RuntimeOptions
from specs.meta import Labels


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
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadOption(f"--label {item!r}: expected KEY=VALUE, e.g. --label zone=lab")
        labels[key.strip()] = value.strip()
    try:
        TypeAdapter(Labels).validate_python(labels)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise BadOption(f"--label: {problems}") from None
    return labels


@click.command("agent", short_help="Run the provider agent (enrol, heartbeat, run placements).")
@click.option("--hub", required=True, metavar="URL", help="The hub's URL, e.g. http://hub:61622.")
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
    "--heartbeat",
    default=DEFAULT_HEARTBEAT,
    show_default=True,
    type=click.FloatRange(min=0.1, max=3600),
    metavar="SECONDS",
    help="Seconds between heartbeats.",
)
def agent_command(
    hub: str,
    join_token: str | None,
    state_dir: str,
    name: str | None,
    labels: tuple[str, ...],
    runtimes: str | None,
    docker_host: str | None,
    docker_image_gc_delay: float,
    heartbeat: float,
) -> None:
    """Run the provider agent until Ctrl-C or SIGTERM.

    The first start needs a join token and enrols this machine as a provider;
    later starts log in with the agent's own key. Workloads keep running when
    the agent stops, and a restarted agent takes them over again.
    """
    setup_logging()
    wanted = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    config = AgentConfig(
        hub=hub,
        state_dir=Path(state_dir).expanduser(),
        join_token=join_token or None,
        name=name,
        labels=parse_labels(labels),
        runtimes=wanted,
        runtime_options=RuntimeOptions(
            docker_host=docker_host or None, docker_image_gc_delay=docker_image_gc_delay
        ),
        heartbeat=heartbeat,
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


__all__ = ["agent_command", "parse_labels", "setup_logging"]
