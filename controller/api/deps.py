"""What the API's routers need from the hub, as one small object (``ApiDeps``).

The hub builds an :class:`ApiDeps` and hands it to ``create_app``; routers get
it per request through FastAPI's dependency injection (``d: Deps``) and never
see the ``Hub`` itself. So the API depends on the parts it uses (store, image
store, authenticator, …) and the hub on the API, never the other way round,
and a new router (UI, metrics, blobs) declares what it needs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from controller.auth import Authenticator, LoginLinks, MetricsToken
from controller.feed import ChangeFeed
from controller.heartbeats import HeartbeatBatcher
from controller.images import ImageStore
from controller.liveness import (
    MAX_HEARTBEATS_PER_SECOND,
    Liveness,
    ProviderDecisions,
    asked_period,
)
from controller.logs import OutputLogs
from controller.metrics import HubMetrics
from controller.poolview import PoolView
from controller.relay import Relay
from controller.store import Store
from controller.vnetkeys import NetworkKeys


@dataclass(frozen=True)
class ApiDeps:
    """The hub's parts the API serves from."""

    store: Store
    images: ImageStore
    auth: Authenticator
    heartbeats: HeartbeatBatcher
    logs: OutputLogs
    #: recent changes, read once and shared by every watch stream, which it wakes
    #: (``controller.feed``)
    feed: ChangeFeed
    #: providers' last-seen times and usage, kept in memory (``controller.liveness``)
    liveness: Liveness
    #: providers, placements and policies in memory, for the web UI and /metrics
    pool: PoolView
    #: the Prometheus instruments and registry (``controller.metrics``)
    metrics: HubMetrics
    #: the web UI's one-time log-in codes
    links: LoginLinks
    #: the read-only scrape token's digest
    metrics_token: MetricsToken
    #: the virtual networks' keys (derived from the hub's key, never stored)
    vnet_keys: NetworkKeys
    #: the relay's mailboxes (``controller.relay``)
    relay: Relay
    #: the heartbeat period the hub asks of agents that report none (seconds)
    heartbeat_seconds: float = 5.0
    #: each Provider's stored readiness and decision fields, for the heartbeat fast path
    #: (``controller.api.fastbeat``)
    decisions: ProviderDecisions = field(default_factory=ProviderDecisions)
    #: the heartbeat rate the pool is asked to stay under (``heartbeat_period``)
    max_heartbeats_per_second: float = MAX_HEARTBEATS_PER_SECOND
    #: this process is the only one that writes the store (SQLite; not hubs sharing one):
    #: then the store knows every Provider write (``Store.written_after``)
    sole_writer: bool = False

    def heartbeat_period(self, reported: float | None) -> float:
        """The period to ask of (and expect from) an agent that would beat every
        ``reported`` seconds (None: the hub's): that, or a multiple of it that keeps a
        pool this size under the rate (``liveness.asked_period``)."""
        return asked_period(
            reported or self.heartbeat_seconds, len(self.liveness), self.max_heartbeats_per_second
        )

    @property
    def hub_id(self) -> str:
        """This hub's id (the node id of its key)."""
        return self.auth.hub_id


async def deps(request: Request) -> ApiDeps:
    """The ApiDeps of the app serving ``request`` (async: FastAPI runs it on the loop,
    where a sync dependency would cost a thread hop on every request)."""
    return deps_of(request)


def deps_of(request: Request) -> ApiDeps:
    """The ApiDeps of the app serving ``request`` (for code outside dependency injection)."""
    found: ApiDeps = request.app.state.deps
    return found


Deps = Annotated[ApiDeps, Depends(deps)]
"""A route parameter ``d: Deps`` receives the hub's parts."""


__all__ = ["ApiDeps", "Deps", "deps_of"]
