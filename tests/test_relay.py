"""The hub's relay mailboxes (controller.relay): per recipient, bounded, and woken at stop."""

from __future__ import annotations

import asyncio

from controller.relay import RELAY_QUEUE, Relay


def test_a_waiting_poll_gets_what_is_put_for_its_node_only() -> None:
    async def run() -> tuple[list[str], list[str]]:
        relay = Relay()
        waiting = asyncio.create_task(relay.take("a", 5.0))
        await asyncio.sleep(0.01)
        relay.put("b", ["for-b"])
        relay.put("a", ["x", "y"])
        return await asyncio.wait_for(waiting, 1.0), await relay.take("b", 0)

    assert asyncio.run(run()) == (["x", "y"], ["for-b"])


def test_a_mailbox_keeps_only_the_newest_datagrams() -> None:
    relay = Relay()
    relay.put("a", [str(i) for i in range(RELAY_QUEUE + 10)])
    got = asyncio.run(relay.take("a", 0))
    assert len(got) == RELAY_QUEUE and got[0] == "10"


def test_closing_answers_every_waiting_poll_at_once_and_later_polls_do_not_wait() -> None:
    async def run() -> tuple[list[str], list[str]]:
        relay = Relay()
        waiting = asyncio.create_task(relay.take("a", 30.0))
        await asyncio.sleep(0.01)
        relay.close()
        # (wait_for raises if either waited)
        return await asyncio.wait_for(waiting, 1.0), await asyncio.wait_for(relay.take("a", 30), 1)

    assert asyncio.run(run()) == ([], [])
