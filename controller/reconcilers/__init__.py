"""controller/reconcilers: the level-triggered handlers the reconcile engine runs.

One module per concept: ``session`` (a Session's references), ``imagepolicy``
(the Apps a policy names), ``basic`` (App, Priority, VirtualNetwork and their
clashes with siblings), ``refs`` (missing references → Stalled/Ready).
``register_all`` wires all of them into a ``Controller``.
"""

from controller.reconcile import Controller
from controller.reconcilers import basic, imagepolicy, session
from controller.reconcilers.session import SESSION_FINALIZER


def register_all(controller: Controller) -> None:
    """Register every reconciler (App, ImagePolicy, Priority, Session, VirtualNetwork)."""
    basic.register(controller)
    imagepolicy.register(controller)
    session.register(controller)


__all__ = ["SESSION_FINALIZER", "register_all"]
