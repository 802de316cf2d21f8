"""controller/reconcile: the kopf-style reconcile engine (work queue + controller).

``WorkQueue`` dedupes and rate-limits keys; ``Controller`` feeds it from the
store's change feed and runs the registered level-triggered handlers.
"""

from controller.reconcile.engine import (
    Context,
    Controller,
    Handler,
    KeyValueLogAdapter,
    Mapper,
    Result,
)
from controller.reconcile.queue import QueueShutDown, TokenBucket, WorkQueue

__all__ = [
    "Context",
    "Controller",
    "Handler",
    "KeyValueLogAdapter",
    "Mapper",
    "QueueShutDown",
    "Result",
    "TokenBucket",
    "WorkQueue",
]
