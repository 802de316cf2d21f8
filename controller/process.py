"""What every process of a hub sets up the same way: its logging and its garbage
collector (the API's process, ``controller.hub``, and the engine's,
``controller.enginehost``)."""

from __future__ import annotations

import logging
import sys

GC_THRESHOLDS = (50_000, 20, 10)
"""The hub's garbage collector thresholds (CPython's are 700, 10, 10). Measured with
bench_pool (300 agents beating, 6,000 placements): with the defaults the hub ran a full
collection every 2–5 s, 130–270 ms each with every thread stopped — that was the
heartbeats' p99; with these a request's and a beat's objects die before a collection
looks at them, full collections are rare, and a young one takes tens of ms."""


def setup_logging(level: str = "INFO") -> None:
    """Structured, one line per event, to stderr."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
