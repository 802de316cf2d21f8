"""``GET /metrics``: the hub's Prometheus metrics (``controller.metrics``).

Behind a token like every route: the admin's, or the read-only scrape token
``gu hub metrics-token`` makes (role ``metrics``: this route and nothing else),
which Prometheus sends as ``Authorization: Bearer`` (README has a scrape config).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from controller import authz
from controller.api.common import Caller
from controller.api.deps import Deps
from controller.metrics import CONTENT_TYPE

router = APIRouter(tags=["meta"])

METRICS_TOKEN_KEY = "metrics:token"
"""The store meta key holding the scrape token's SHA-256 (never the token)."""


@router.get("/metrics", response_class=Response)
def metrics(who: Caller, d: Deps) -> Response:
    """The Prometheus text exposition of the hub's metrics."""
    authz.check(who, "metrics")
    return Response(d.metrics.render(), media_type=CONTENT_TYPE)


@router.post("/v1/metrics/token")
def new_metrics_token(who: Caller, d: Deps) -> dict[str, Any]:
    """A new read-only scrape token (shown once); the previous one stops working."""
    authz.check(who, "admin")
    token, digest = d.metrics_token.new()
    d.store.put_meta(METRICS_TOKEN_KEY, digest)
    return {"token": token}


__all__ = ["METRICS_TOKEN_KEY", "router"]
