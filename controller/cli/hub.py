"""``gu hub``: run the hub in the foreground.

``gu hub`` is a group that runs the hub when called without a subcommand, so
hub administration commands can join it later without changing how the hub
is started — ``gu hub token create`` (a join token for enrolling an agent) is
the first planned one.

``controller.hub`` (FastAPI, uvicorn, the reconcilers) is imported only when
the hub really starts, so every other command starts fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.errors import BadInputError

DEFAULT_STATE_DIR = "~/.local/share/gu/hub"
DEFAULT_LISTEN = "127.0.0.1:61622"
DEFAULT_NODE_GRACE = 30.0


@click.group(
    "hub", invoke_without_command=True, short_help="Run the hub (API, store, reconcilers)."
)
@click.option(
    "--state-dir",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    metavar="DIR",
    help="Where the hub keeps its keys and database.",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address of the HTTP API.",
)
@click.option(
    "--node-grace",
    default=DEFAULT_NODE_GRACE,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="How long a provider may miss heartbeats before it counts as gone.",
)
@click.option(
    "--store-max-gib",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="GIB",
    help="Bound of the image store (images, blobs, outputs); uploads past it are refused.",
)
@click.option(
    "--max-heartbeats-per-second",
    default=200.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="RATE",
    help="Heartbeats a second the pool is asked to stay under: a larger pool is asked "
    "to beat less often (0: never).",
)
@click.option(
    "--store",
    envvar="GU_STORE",
    default=None,
    metavar="URL",
    help="A postgresql://USER@HOST:PORT/DB URL: the store several hubs share (also from "
    "GU_STORE; a password is best kept in ~/.pgpass). Default: SQLite in the state dir.",
)
@click.option(
    "--all-cpus",
    is_flag=True,
    help="Let the hub's threads run on every CPU. By default the API's stay on one, and "
    "the engine's process on another (threads take turns on Python's GIL: measured "
    "faster; see README, Benchmarks).",
)
@click.option(
    "--engine-process/--one-process",
    default=None,
    envvar="GU_ENGINE_PROCESS",
    help="Run the reconcile engine in a process of its own, on another CPU than the API "
    "(SQLite store only). Default: when the hub may use two CPUs or more (measured "
    "faster; see README, Benchmarks).",
)
@click.pass_context
def hub_group(
    ctx: click.Context,
    state_dir: str,
    listen: str,
    node_grace: float,
    store_max_gib: float | None,
    max_heartbeats_per_second: float,
    store: str | None,
    all_cpus: bool,
    engine_process: bool | None,
) -> None:
    """Run the hub: API, store and reconcile loop (until Ctrl-C or SIGTERM).

    The first start creates the state dir with the hub's key and an admin key,
    and writes a client config (also ~/.config/gu/config.yaml if you have none).
    Several hubs share one PostgreSQL store (--store) when each has the same
    hub.key, admin.key and admins.pub in its state dir (copy them, 0600): any of
    them serves the API, one at a time runs the reconcilers.
    """
    if ctx.invoked_subcommand is not None:
        return
    from controller.hub import run_hub
    from controller.store import StoreError, is_store_url

    if store is not None and not is_store_url(store):
        raise BadInputError(
            f"--store {store!r}: expected a postgresql:// URL, e.g. "
            "postgresql://gu@db.lan:5432/gu (leave it out for the embedded SQLite store)"
        )
    try:
        run_hub(
            Path(state_dir).expanduser(),
            listen,
            node_grace,
            store_max_gib,
            store,
            max_heartbeats_per_second,
            all_cpus,
            engine_process,
        )
    except ValueError as exc:  # a bad --listen
        raise BadInputError(str(exc)) from None
    except StoreError as exc:  # the database cannot be reached or is too new
        raise BadInputError(f"--store: {exc}") from None
    except KeyboardInterrupt:
        pass


# Later: hub_group.add_command(controller.cli.pool.token_group) -> `gu hub token create`.
