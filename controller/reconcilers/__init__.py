"""controller/reconcilers: the level-triggered handlers the reconcile engine runs.

One module per concept: ``session`` (a Session's references and scheduling
onto Placements), ``provider`` (Provider readiness from heartbeats),
``placement`` (the placement contract and the in-memory cluster view the
Session reconciler schedules from), ``imagepolicy`` (the Apps a policy
names), ``basic`` (App, Priority, VirtualNetwork and their clashes with
siblings), ``refs`` (missing references → Stalled/Ready). ``register_all``
wires all of them into a ``Controller``.
"""

from controller.liveness import Liveness
from controller.policy import PolicyHook
from controller.reconcile import Controller
from controller.reconcilers import basic, imagepolicy, provider, session
from controller.reconcilers.session import SESSION_FINALIZER, SessionReconciler


def register_all(
    controller: Controller,
    *,
    node_grace: float = 30.0,
    heartbeat: float = 5.0,
    policy: PolicyHook | None = None,
    liveness: Liveness | None = None,
) -> SessionReconciler:
    """Register every reconciler (App, ImagePolicy, Priority, Provider, Session, VirtualNetwork).

    ``heartbeat`` is the agents' period (a provider is NotReady after three
    missed beats); ``node_grace`` is how long a provider may stay NotReady
    before its placements count as lost; ``policy`` gives each Session's
    ImagePolicy verdict (the hub passes ``controller.admission.session_policy``);
    ``liveness`` is the hub's lease table (``controller.liveness``: last-seen times and
    usage kept in memory). Returns the Session reconciler (its ``state`` is the
    scheduler's cluster view).
    """
    basic.register(controller)
    imagepolicy.register(controller)
    provider.register(controller, heartbeat=heartbeat, liveness=liveness)
    return session.register(
        controller, node_grace=node_grace, heartbeat=heartbeat, policy=policy, liveness=liveness
    )


__all__ = ["SESSION_FINALIZER", "SessionReconciler", "register_all"]
