"""agent: the provider agent (``gu agent``) that runs the hub's Placements on this machine.

The flow of one agent process (``agent.main.run_agent``):

1. **Identity** (``agent.identity``): the state dir holds an Ed25519 key; the
   node id is derived from it. The first start enrols with a join token; later
   starts log in with the key alone.
2. **Adoption** (``agent.workloads``): every runtime driver lists what a
   previous agent process left running, before any placement is looked at, so
   nothing is ever started twice.
3. **Hub session** (``agent.hubsession``): the agent opens every connection
   itself (it may sit behind NAT). One thread heartbeats inventory and usage;
   one lists and watches this node's Placements and feeds them to the local
   reconcile.
4. **Local reconcile** (``agent.workloads``): level-triggered like kubelet:
   for each placement, compare what the hub wants with what the runtime
   reports, act (pull, verify, start, suspend, resume, stop, restart,
   remove) and write the observed status back.

Stopping the agent (SIGTERM/SIGINT) leaves workloads running: a new agent
process adopts them, as after a crash.

Only ``specs``, ``runtimes`` and the public API client (``controller.client``)
are imported from the rest of gu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.main import AgentConfig, run_agent


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import agent.inventory`` does not pull in the whole agent.
    if name in ("AgentConfig", "run_agent"):
        from agent import main

        return getattr(main, name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")


__all__ = ["AgentConfig", "run_agent"]
