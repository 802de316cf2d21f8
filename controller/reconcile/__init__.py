"""controller/reconcile: the kopf-style reconcile engine (work queue + controller).

``WorkQueue`` (``controller.client.workqueue``, shared with the agent) dedupes
and rate-limits keys; ``Controller`` feeds it from the store's change feed and
runs the registered level-triggered handlers on worker threads.
"""

from controller.client.workqueue import QueueShutDown, TokenBucket, WorkQueue
from controller.reconcile.engine import (
    Context,
    Controller,
    Handler,
    KeyValueLogAdapter,
    Mapper,
    Result,
)

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
