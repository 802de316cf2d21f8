"""The wait queue of Sessions: serving order, and what a pass costs while many wait."""

from __future__ import annotations

from controller.reconcilers.session.queue import Waiter, WaitQueue, queue_key
from controller.scheduler import RankedNodes

NODES = RankedNodes()


def waiter(prio: int, created: str, name: str, fits: set[str], tested: list[str]) -> Waiter:
    def test(_nodes: RankedNodes) -> bool:
        tested.append(name)
        return name in fits

    return Waiter(queue_key(prio, created, name), test)


def test_the_first_waiter_ahead_that_fits_is_ready_higher_priority_first_then_oldest() -> None:
    q, tested, fits = WaitQueue(), [], {"old", "urgent"}
    q.put("old", waiter(0, "2026-01-01", "old", fits, tested))
    q.put("older-unfit", waiter(0, "2025-01-01", "older-unfit", fits, tested))
    q.put("urgent", waiter(5, "2026-06-01", "urgent", fits, tested))
    ahead = q.ahead(queue_key(0, "2026-12-01", "me"), NODES, epoch=1)
    assert (ahead.higher, ahead.older, ahead.ready) == (1, 2, ["urgent"])
    assert (
        ahead.message
        == "waiting: 1 session of higher priority and 2 older of the same priority ahead"
    )
    q.remove("urgent")
    ahead = q.ahead(queue_key(0, "2026-12-01", "me"), NODES, epoch=1)
    assert (ahead.higher, ahead.older, ahead.ready) == (0, 2, ["old"])
    assert tested == ["urgent", "older-unfit", "old"]  # the unfit one tested once this epoch
    first = q.ahead(queue_key(9, "2026-12-01", "first"), NODES, epoch=1)
    assert (first.higher, first.older, first.ready, first.message) == (0, 0, [], "")


def test_a_pass_walks_only_the_waiters_not_yet_seen_unfit_until_capacity_is_given_back() -> None:
    """10,000 waiting Sessions made every pass walk all of those ahead of it: now each
    waiter is looked at once per capacity epoch, whatever the number of passes."""
    q, tested = WaitQueue(), []
    n = 1_000
    for i in range(n):
        q.put(f"s{i:04}", waiter(0, f"2026-01-01T00:00:{i:04}", f"s{i:04}", set(), tested))
    for i in range(n):  # every waiting Session's pass, back to front, asks who is ahead
        ahead = q.ahead(queue_key(0, f"2026-01-01T00:00:{i:04}", f"s{i:04}"), NODES, epoch=1)
        assert ahead.older == i and ahead.ready == []
    assert len(tested) == n - 1 and q.walked == n - 1  # not n * (n - 1) / 2
    # a waiter put back known unfit at this epoch is not walked again; a new one is
    q.put("s0005", Waiter(queue_key(0, "2026-01-01T00:00:0005", "s0005"), lambda _: True, 1))
    q.put("new", waiter(0, "2026-01-01T00:00:0500x", "new", {"new"}, tested))
    assert q.ahead(queue_key(0, "2027", "last"), NODES, epoch=1).ready == ["new"]
    assert q.walked == n  # only "new"
    # capacity given back (a new epoch): every waiter may fit again, each tested once more
    tested.clear()
    assert q.ahead(queue_key(0, "2027", "last"), NODES, epoch=2).ready == ["s0005"]
    assert tested == [f"s{i:04}" for i in range(5)]
    q.remove("s0005")
    q.remove("new")
    assert q.ahead(queue_key(0, "2027", "last"), NODES, epoch=2).ready == []
    assert len(tested) == n - 1 and len(q) == n - 1
