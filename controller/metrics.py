"""The hub's Prometheus metrics (``GET /metrics``), through ``prometheus-client``.

Two sorts. Events are counted or timed where they happen, through hooks the
hub wires at start (nothing below imports this module): reconciles
(``Controller(observe=…)``), store commits (``Store.time_commits``), API
requests (``RequestTimer``, an ASGI middleware), heartbeats and image bytes
served (the routes, through ``ApiDeps.metrics``). State is read when scraped
(``PoolCollector``): providers by readiness and placements by state and
runtime from the pool view, the reconcile queue from the controller's stats,
so a scrape costs one pass over memory and nothing between scrapes.

Each hub has its own registry (tests run several hubs in one process).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.poolview import PoolView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PoolCollector(Collector):
    """Gauges computed at scrape time from the pool view and the controller's stats."""

    def __init__(self, view: PoolView, stats: Callable[[], dict[str, Any]]) -> None:
        self.view = view
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        ready, states = self.view.counts()
        providers = GaugeMetricFamily(
            "gu_providers", "Providers known to the hub, by readiness", labels=["ready"]
        )
        for flag in (True, False):
            providers.add_metric(["true" if flag else "false"], ready.get(flag, 0))
        yield providers
        placements = GaugeMetricFamily(
            "gu_placements", "Placements by state and runtime", labels=["state", "runtime"]
        )
        for (state, runtime), n in sorted(states.items()):
            placements.add_metric([state, runtime], n)
        yield placements
        stats = self.stats()
        yield GaugeMetricFamily(
            "gu_reconcile_queue_depth",
            "Keys queued for a reconcile (ready now or waiting for a deadline)",
            value=stats.get("queue_length", 0),
        )
        yield GaugeMetricFamily(
            "gu_reconcile_in_flight", "Reconciles running now", value=stats.get("in_flight", 0)
        )
        yield GaugeMetricFamily(
            "gu_reconcile_feed_behind",
            "Changes committed that the reconcile engine has not read yet",
            value=stats.get("feed_behind", 0),
        )
        yield CounterMetricFamily(
            "gu_reconcile_lost_commits",
            "Grouped reconcile commits that failed (their passes were retried)",
            value=stats.get("lost_commits", 0),
        )
        yield CounterMetricFamily(
            "gu_reconcile_rolled_back_groups",
            "Grouped reconcile passes rolled back because one of them failed (they ran again)",
            value=stats.get("rolled_back_groups", 0),
        )


_RECONCILE_SECONDS = ("gu_reconcile_duration_seconds", "Time one reconcile took, by kind")
_RECONCILES = ("gu_reconciles", "Reconciles by kind and outcome (ok, error, conflict)")


_COMMIT_SECONDS = (
    "gu_store_commit_duration_seconds",
    "Store write transactions, start to durable commit (of every process of the hub)",
)


class CommitTally:
    """Store commits' durations in the histogram's buckets, as plain numbers: the commits
    of each process of a hub whose engine runs apart, summed when served."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(_FAST) + 1)  # (last: +Inf)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.buckets[bisect.bisect_left(_FAST, seconds)] += 1
            self.sum += seconds

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {"buckets": list(self.buckets), "sum": self.sum}


def _cumulative(per_bucket: list[int] | list[float]) -> list[tuple[str, float]]:
    """A histogram's ``(le, count)`` pairs from counts per bucket (the last: +Inf)."""
    out, total = [], 0
    for bound, n in zip([*map(str, _FAST), "+Inf"], per_bucket, strict=True):
        total += int(n)
        out.append((bound, float(total)))
    return out


class PassTally:
    """Reconcile passes by kind and outcome, and their durations in the histogram's
    buckets, as plain numbers, and the store commits of the process: what the engine's
    process (``controller.enginehost``) reports to the API's, which serves them
    (``EngineCollector``)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # "kind/outcome" → passes
        self.buckets: dict[str, list[int]] = {}  # kind → passes per bucket (last: +Inf)
        self.sums: dict[str, float] = {}  # kind → seconds
        self.commits = CommitTally()  # (``Store.time_commits``)
        self._lock = threading.Lock()  # (workers observe, the reporting thread reads)

    def observe(self, kind: str, seconds: float, outcome: str) -> None:
        key = f"{kind}/{outcome}"
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            buckets = self.buckets.get(kind)
            if buckets is None:
                buckets = self.buckets[kind] = [0] * (len(_FAST) + 1)
            buckets[bisect.bisect_left(_FAST, seconds)] += 1
            self.sums[kind] = self.sums.get(kind, 0.0) + seconds

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": dict(self.counts),
                    "buckets": {k: list(v) for k, v in self.buckets.items()},
                    "sums": dict(self.sums),
                    "commits": self.commits.report()}  # fmt: skip


ENGINE_COUNTERS = ("reconciles", "errors", "conflicts", "lost_commits", "rolled_back_groups",
                   "relists")  # fmt: skip
"""The counters of an engine's stats report (the rest of it are gauges)."""


def carry_counters(carried: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (an engine process's stats, with its ``PassTally`` as ``passes``) with the
    counters of ``carried`` added: what engines that ran before it in this hub counted, so
    a restarted engine's counters go on from where the last one's ended rather than from
    zero (Prometheus would take a fall for a reset)."""
    out = dict(report)
    for key in ENGINE_COUNTERS:
        if key in carried:
            out[key] = int(out.get(key) or 0) + int(carried[key])
    before, now = carried.get("passes") or {}, report.get("passes") or {}
    passes: dict[str, Any] = dict(now)
    counts = dict(now.get("counts") or {})
    for key, n in (before.get("counts") or {}).items():
        counts[key] = int(counts.get(key, 0)) + int(n)
    sums = dict(now.get("sums") or {})
    for kind, x in (before.get("sums") or {}).items():
        sums[kind] = float(sums.get(kind, 0.0)) + float(x)
    buckets = {k: list(v) for k, v in (now.get("buckets") or {}).items()}
    for kind, old in (before.get("buckets") or {}).items():
        buckets[kind] = _add_buckets(buckets.get(kind), old)
    mine, theirs = now.get("commits") or {}, before.get("commits") or {}
    passes.update(counts=counts, sums=sums, buckets=buckets)
    if mine or theirs:
        passes["commits"] = {
            "buckets": _add_buckets(mine.get("buckets"), theirs.get("buckets")),
            "sum": float(mine.get("sum", 0.0)) + float(theirs.get("sum", 0.0)),
        }
    out["passes"] = passes
    return out


def _add_buckets(a: list[int] | None, b: list[int] | None) -> list[int]:
    size = len(_FAST) + 1
    a = a if a is not None and len(a) == size else [0] * size
    b = b if b is not None and len(b) == size else [0] * size
    return [int(x) + int(y) for x, y in zip(a, b, strict=True)]


class EngineCollector(Collector):
    """``gu_reconciles`` and ``gu_reconcile_duration_seconds`` from the last ``PassTally``
    report of the engine's process (``report()``: its ``passes``; empty before one), and
    ``gu_store_commit_duration_seconds`` of both processes: ``commits`` (this one's) plus
    the report's."""

    def __init__(self, report: Callable[[], dict[str, Any]], commits: CommitTally) -> None:
        self.report = report
        self.commits = commits

    def collect(self) -> Iterator[Metric]:
        tally = self.report()
        mine = self.commits.report()
        theirs = tally.get("commits") or {}
        per_bucket = _add_buckets(mine["buckets"], theirs.get("buckets"))
        commits = HistogramMetricFamily(*_COMMIT_SECONDS)
        commits.add_metric([], _cumulative(per_bucket), mine["sum"] + float(theirs.get("sum", 0)))
        yield commits
        counts = CounterMetricFamily(*_RECONCILES, labels=["kind", "outcome"])
        for key, n in sorted((tally.get("counts") or {}).items()):
            kind, _, outcome = str(key).partition("/")
            counts.add_metric([kind, outcome], float(n))
        yield counts
        seconds = HistogramMetricFamily(*_RECONCILE_SECONDS, labels=["kind"])
        sums = tally.get("sums") or {}
        for kind, per_bucket in sorted((tally.get("buckets") or {}).items()):
            if len(per_bucket) != len(_FAST) + 1:
                continue
            seconds.add_metric([kind], _cumulative(per_bucket), float(sums.get(kind, 0.0)))
        yield seconds


class HubMetrics:
    """The registry and the instruments of one hub.

    ``engine_report``: the reconcile engine runs in another process, and this gives its
    last ``PassTally`` report (the passes are then served from it, not counted here, and
    its commits are added to this process's)."""

    def __init__(self, engine_report: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconcile_seconds: Histogram | None = None
        self.reconciles: Counter | None = None
        self.store_commit_seconds: Histogram | None = None
        self._commits: CommitTally | None = None
        if engine_report is None:
            self.reconcile_seconds = Histogram(*_RECONCILE_SECONDS, ["kind"], buckets=_FAST,
                                               registry=r)  # fmt: skip
            self.reconciles = Counter(*_RECONCILES, ["kind", "outcome"], registry=r)
            self.store_commit_seconds = Histogram(*_COMMIT_SECONDS, buckets=_FAST, registry=r)
        else:
            self._commits = CommitTally()
            r.register(EngineCollector(engine_report, self._commits))
        self.api_seconds = Histogram(
            "gu_api_request_duration_seconds",
            "API request latency by route template, method and status code",
            ["route", "method", "code"],
            buckets=_FAST,
            registry=r,
        )
        self.heartbeats = Counter("gu_heartbeats", "Agent heartbeats received", registry=r)
        self.image_bytes = Counter(
            "gu_image_bytes_served", "Image bytes sent to agents and clients", registry=r
        )

    def watch_pool(self, view: PoolView, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(PoolCollector(view, stats))

    def observe_reconcile(self, kind: str, seconds: float, outcome: str) -> None:
        if self.reconcile_seconds is not None and self.reconciles is not None:
            self.reconcile_seconds.labels(kind).observe(seconds)
            self.reconciles.labels(kind, outcome).inc()

    def observe_commit(self, seconds: float) -> None:
        if self.store_commit_seconds is not None:
            self.store_commit_seconds.observe(seconds)
        elif self._commits is not None:
            self._commits.observe(seconds)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return bytes(generate_latest(self.registry))


class RequestTimer:
    """ASGI middleware: every HTTP request's latency into ``gu_api_request_duration_seconds``,
    labelled by the route's template (``/v1/{kind}/{name}``, never a concrete path: a
    bounded label set) or ``unmatched``."""

    def __init__(self, app: Any, metrics: HubMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        code = 500

        async def seen(message: Any) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.api_seconds.labels(template, scope["method"], str(code)).observe(
                time.perf_counter() - began
            )


__all__ = [
    "CONTENT_TYPE",
    "ENGINE_COUNTERS",
    "CommitTally",
    "EngineCollector",
    "HubMetrics",
    "PassTally",
    "PoolCollector",
    "RequestTimer",
    "carry_counters",
]
