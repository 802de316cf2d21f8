"""The store as the rest of the hub sees it: one typed Protocol, whatever the backend.

Everything above the store (API, reconcilers, heartbeats, enrolment) is written
against :class:`Store`; a backend is a class that satisfies it. The
backend-independent rules (generation, no-op writes, finalizers, optimistic
concurrency, atomic apply and prune) live once in
``controller.store.objects.ObjectStore``; a backend supplies only the primitive
reads and writes of its database (``controller.store.sqlite`` today;
PostgreSQL next, behind the same Protocol).

Objects cross this boundary as JSON-mode dicts (what the API serves); typed
models live at the edges.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from controller.store.types import ApplyResult, Change, ChangeText, Event

Obj = dict[str, Any]


@runtime_checkable
class Store(Protocol):
    """Durable, thread-safe object store with a change feed."""

    @property
    def resource_version(self) -> int:
        """The rv of the last committed write (0 for an empty store)."""
        ...

    def close(self) -> None:
        """Release the database; the store is unusable afterwards."""
        ...

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(rv)`` after every commit that wrote something (keep it short)."""
        ...

    def unsubscribe(self, callback: Callable[[int], None]) -> None:
        """Stop calling ``callback``."""
        ...

    def transaction(self, savepoint: bool = False) -> AbstractContextManager[None]:
        """Group writes into one atomic, durable transaction (nests).

        Nested with ``savepoint=True``, an exception leaving the block undoes the
        block's writes only (a SQL savepoint) before it propagates: a caller that
        catches it keeps the rest of the outer transaction (the reconcile engine's
        batches: one failed pass does not cost the others)."""
        ...

    def time_commits(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(seconds)`` after each transaction that wrote, with how long it
        took from its start to its durable commit (the hub's store write latency)."""
        ...

    def writer_waiting(self) -> bool:
        """Whether another process is waiting to write (a writer grouping work into one
        transaction then commits soon rather than late: ``Controller._group``)."""
        ...

    def undone_writes(self) -> int:
        """How many ``transaction(savepoint=True)`` blocks have had their writes undone
        (they raised after writing), ever. Their rvs are taken again by later writes:
        whoever read those writes inside the transaction (``ClusterState``) must forget
        them (``Controller._pass_of``)."""
        ...

    # reads
    def get(self, kind: str, name: str) -> Obj:
        """One object; raises NotFound."""
        ...

    def try_get(self, kind: str, name: str) -> Obj | None:
        """One object, or None."""
        ...

    def get_many(self, kind: str, names: Iterable[str]) -> builtins.list[Obj]:
        """The objects of ``kind`` named ``names`` that exist, sorted by name (one query)."""
        ...

    def list(self, kind: str, selector: dict[str, str | None] | None = None) -> builtins.list[Obj]:
        """Every object of ``kind`` (sorted by name) whose labels match ``selector``."""
        ...

    def names(self, kind: str) -> builtins.list[str]:
        """The names of every object of ``kind``, sorted (nothing decoded: for resyncs)."""
        ...

    def list_where(self, kind: str, json_path: str, value: Any) -> builtins.list[Obj]:
        """Objects of ``kind`` whose ``spec`` has ``value`` at ``json_path`` (``$.a.b``)."""
        ...

    def count(self, kind: str | None = None) -> int:
        """How many objects (of ``kind``)."""
        ...

    def changes(
        self, since: int, limit: int = 1000, kinds: AbstractSet[str] | None = None
    ) -> builtins.list[Change]:
        """Changes with rv > ``since``, oldest first; ``Gone`` if the log was compacted.
        With ``kinds``, only changes of those kinds (the others are skipped unread: a
        reader that wants few kinds does not decode the rest)."""
        ...

    def change_texts(self, since: int, limit: int = 1000) -> builtins.list[ChangeText]:
        """``changes``, undecoded (``ChangeText``): what a reader that passes objects on
        costs without a JSON decode (and a re-encode) of each."""
        ...

    def written_after(self, kind: str, name: str, rv: int) -> bool:
        """Whether this process wrote ``kind/name`` (a Provider: the kinds whose writes it
        keeps) at an rv above ``rv``, committed or not; other writers are not known."""
        ...

    def node_changes(self, node: str, since: int, limit: int = 1000) -> builtins.list[Change]:
        """The changes with rv > ``since`` of ``node``'s Placements and its Provider (an
        agent's watch), oldest first, by an index: O(its changes), not O(all)."""
        ...

    # writes
    def create(self, obj: Obj, *, apply_set: str | None = None) -> Obj:
        """Create a new object; raises AlreadyExists."""
        ...

    def replace(self, obj: Obj, *, expected_rv: int | None = None) -> Obj:
        """Write labels, annotations and spec of an existing object; keeps status."""
        ...

    def update_status(
        self, kind: str, name: str, status: Obj, *, expected_rv: int | None = None
    ) -> Obj:
        """Replace ``status``; never moves ``generation``; writes nothing if it is equal."""
        ...

    def set_finalizers(
        self,
        kind: str,
        name: str,
        finalizers: builtins.list[str],
        *,
        expected_rv: int | None = None,
    ) -> Obj:
        """Replace the finalizers; an object being deleted goes once they are empty."""
        ...

    def delete(self, kind: str, name: str, *, expected_rv: int | None = None) -> Obj:
        """Delete at once, or mark ``deletionTimestamp`` while finalizers remain."""
        ...

    def apply(
        self,
        objects: Iterable[Obj],
        *,
        apply_set: str | None = None,
        prune: bool = False,
        prune_kinds: Iterable[str] = (),
        dry_run: bool = False,
        finalizers: Callable[[str], builtins.list[str]] | None = None,
    ) -> builtins.list[ApplyResult]:
        """Create or update every object atomically: all of them or none."""
        ...

    # hub-internal values and events
    def put_meta(self, key: str, value: str) -> None:
        """Set a small hub-internal value (e.g. a hashed join token), durably."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A hub-internal value, or None."""
        ...

    def meta_items(self, prefix: str) -> builtins.list[tuple[str, str]]:
        """Every (key, value) whose key starts with ``prefix``."""
        ...

    def delete_meta(self, key: str) -> None:
        """Forget a hub-internal value."""
        ...

    def record_event(
        self,
        kind: str,
        name: str,
        reason: str,
        message: str,
        type_: str = "Normal",
        *,
        unless_repeated: bool = False,
    ) -> bool:
        """Append a human-readable event; keeps the newest 20 per object. With
        ``unless_repeated``, nothing is appended if the object's newest event (written
        in this transaction too) has the same reason and message. True if appended."""
        ...

    def events(self, kind: str, name: str) -> builtins.list[Event]:
        """Events of one object, oldest first."""
        ...


__all__ = ["Obj", "Store"]
