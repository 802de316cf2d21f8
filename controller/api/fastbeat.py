"""The usage-only heartbeat, served beside the web framework rather than through it.

A pool of 1,000 agents sends 200 heartbeats a second, and nearly all of them change
only usage and last-seen: the lease table takes them (``controller.liveness``) and
nothing is written. Served as a FastAPI route, such a beat cost the hub about 2.4 ms of
CPU (routing past every route, dependency solving, a hop to the thread pool and back,
response encoding): half a core for heartbeats alone, in the same interpreter as the
reconcile workers. The handler's own work was a tenth of that.

``HeartbeatFastPath`` is an ASGI middleware that answers such a beat itself: the same
token check, the same body validation (the route's ``Heartbeat`` model) and the same
plausibility checks, then the lease table. It answers only when it is sure the route
would write nothing: the caller is an agent whose Provider is known to be Ready with
exactly the decision fields the beat carries (``controller.liveness.ProviderDecisions``,
kept from the change feed on the API's loop and from what the route itself read), and
the feed has read every change of that Provider committed so far: everything, or, in a
hub that is its store's only writer, every write of that Provider the store made
(``Store.written_after``; while the reconcile workers commit the feed is mostly a little
behind, and the beats all went to the route). Anything else — a new inventory, a
provider not seen yet, an error of any kind — goes on to the route, which decides as
before; so what a caller sees does not depend on which of the two answered.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import ValidationError

from controller.api.agents import Heartbeat, heartbeat_decision, inventory_problems
from controller.api.deps import ApiDeps
from controller.auth import AuthError

PATH = "/v1/agents/heartbeat"
MAX_BODY = 64 << 10
"""A heartbeat is a few hundred bytes; a larger body is the route's to judge."""

Obj = dict[str, Any]


class _Route:
    """What ``RequestTimer`` reads of a matched route: its path template."""

    path = PATH


class HeartbeatFastPath:
    """ASGI middleware: answer a usage-only heartbeat (see the module doc), pass on the
    rest untouched."""

    def __init__(self, app: Any, deps: ApiDeps) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        answer = None if more else self._answer(scope, body)
        if answer is None:
            first = {"type": "http.request", "body": body, "more_body": more}
            await self.app(scope, _replay([first], receive), send)
            return
        scope["route"] = _Route  # for the request timer
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _answer(self, scope: Any, body: bytes) -> bytes | None:
        """The answer to a usage-only beat, or None for the route to decide."""
        d = self.deps
        feed_rv = d.feed.rv
        behind = not d.feed.caught_up  # (read before the decision: see below)
        if behind and not d.sole_writer:  # a change not yet read could say otherwise
            return None
        token = b""
        for key, value in scope.get("headers") or ():
            if key == b"authorization":
                token = value
                break
        scheme, _, raw = token.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return None
        try:
            who = d.auth.verify_token(raw.strip())
        except AuthError:
            return None
        if who.role != "agent":
            return None
        if behind and d.store.written_after("Provider", who.name, feed_rv):
            # a change of this Provider not read yet could say otherwise (the feed is
            # often behind while the reconcile workers commit; the others' changes do
            # not concern this beat)
            return None
        try:
            req = Heartbeat.model_validate_json(body)
        except ValidationError:
            return None
        if inventory_problems(req.inventory, req.usage):
            return None
        period = d.heartbeat_period(req.period)
        if not d.decisions.unchanged(who.name, heartbeat_decision(req, period)):
            return None
        d.liveness.beat(who.name, req.usage.model_dump(mode="json"), period)
        d.metrics.heartbeats.inc()
        return json.dumps({"ok": True, "heartbeat": period, "time": time.time()}).encode()


def _replay(messages: list[Obj], receive: Any) -> Any:
    """A ``receive`` that gives ``messages`` first, then what ``receive`` gives."""
    pending = list(messages)

    async def replayed() -> Obj:
        if pending:
            return pending.pop(0)
        message: Obj = await receive()
        return message

    return replayed


__all__ = ["HeartbeatFastPath"]
