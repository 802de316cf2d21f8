"""The store's rules, written once for every backend: ``ObjectStore``.

What a write means does not depend on the database, so it lives here:

- ``generation`` moves only when ``spec`` changes; status writes and writes
  that change nothing write nothing (no rv bump, no change row) — what makes
  a resync of converged objects free and ``gu apply`` of unchanged files a
  no-op;
- optimistic concurrency: a mutating call may carry the rv the caller read, a
  stale one raises ``Conflict`` (HTTP 409) instead of overwriting;
- deletion goes through finalizers: ``delete`` marks ``deletionTimestamp``
  while finalizers remain, the object goes when the last one is removed;
- ``apply`` creates or updates a batch atomically, prunes its apply set, and
  rolls a dry run back.

A backend subclasses :class:`ObjectStore` and provides the primitives:
``transaction()`` (atomic, nesting, bumping rvs only through ``_next_rv``),
``try_get`` and ``_fetch`` (inside a transaction), ``_write`` (insert or
replace a row and log the change), ``_remove`` (delete a row),
``_log_change``, ``_apply_set_members`` — plus the reads, meta and events of
the ``Store`` Protocol.
"""

from __future__ import annotations

import builtins
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from controller.store.types import (
    APPLY_SET_ANNOTATION,
    AlreadyExists,
    ApplyAction,
    ApplyResult,
    ChangeType,
    Conflict,
    NotFound,
    now,
)


class ObjectStore(ABC):
    """The backend-independent half of a store (see the module docstring)."""

    #: the kinds whose writes this process remembers (``written_after``)
    WRITES_KEPT: frozenset[str] = frozenset({"Provider"})

    def __init__(self) -> None:
        self._written: dict[tuple[str, str], int] = {}  # (kind, name) → rv of the newest

    def written_after(self, kind: str, name: str, rv: int) -> bool:
        """Whether this process wrote ``kind/name`` (a kind of ``WRITES_KEPT``) at an rv
        above ``rv``, committed, pending or rolled back: what this process knows of
        (a store several hubs share is written by the others too)."""
        if kind not in self.WRITES_KEPT:
            raise ValueError(f"writes of {kind} are not kept (only {sorted(self.WRITES_KEPT)})")
        return self._written.get((kind, name), 0) > rv

    def _keep_write(self, obj: dict[str, Any]) -> None:
        """(The store calls this for every change it logs.)"""
        kind = obj["kind"]
        if kind in self.WRITES_KEPT:
            self._written[(kind, obj["metadata"]["name"])] = obj["metadata"]["resourceVersion"]

    # ------------------------------------------------------------ primitives

    @abstractmethod
    def transaction(self, savepoint: bool = False) -> AbstractContextManager[None]:
        """Group writes into one atomic, durable transaction (nests; nested with
        ``savepoint``, an exception undoes the block's writes only)."""

    @abstractmethod
    def try_get(self, kind: str, name: str) -> dict[str, Any] | None:
        """One object, or None (safe outside a transaction)."""

    @abstractmethod
    def _fetch(self, kind: str, name: str) -> dict[str, Any] | None:
        """One object, read inside the current transaction."""

    @abstractmethod
    def _fetch_many(self, kind: str, names: builtins.list[str]) -> dict[str, dict[str, Any]]:
        """The objects of ``kind`` named ``names`` that exist, by name, read inside the
        current transaction in one query (on PostgreSQL each ``_fetch`` is a round trip)."""

    def get_many(self, kind: str, names: Iterable[str]) -> builtins.list[dict[str, Any]]:
        """The objects of ``kind`` named ``names`` that exist, sorted by name."""
        found = self._fetch_many(kind, sorted(set(names)))
        return [found[name] for name in sorted(found)]

    _insert_refuses_duplicates = False
    """True: ``_write`` of an ADDED object raises ``AlreadyExists`` if the row exists, and
    the transaction goes on (so ``create`` need not read first; SQLite). PostgreSQL
    aborts a transaction at a failed statement: there ``create`` reads first."""

    @abstractmethod
    def _write(
        self,
        obj: dict[str, Any],
        change: ChangeType,
        apply_set: str | None,
        spec_changed: bool = True,
    ) -> None:
        """Insert or replace ``obj`` (already carrying its new rv) and log the change.
        ``spec_changed`` False: a MODIFIED object's spec is the stored one (a store may
        then leave the spec and what is indexed by it as they are)."""

    @abstractmethod
    def _remove(self, kind: str, name: str) -> None:
        """Delete the row of an object (the caller logs the DELETED change)."""

    @abstractmethod
    def _log_change(
        self, obj: dict[str, Any], change: ChangeType, encoded: str | None = None
    ) -> None:
        """Append ``obj`` as it now is to the change log, at its resourceVersion
        (``encoded``: its JSON, if the caller has it already)."""

    @abstractmethod
    def _next_rv(self) -> int:
        """The next resourceVersion of the current transaction."""

    @abstractmethod
    def _apply_set_members(self, apply_set: str) -> builtins.list[dict[str, Any]]:
        """The objects carrying ``apply_set``, by kind then name (inside a transaction)."""

    # ------------------------------------------------------------ the rules

    @staticmethod
    def _check_rv(current: dict[str, Any], expected_rv: int | None) -> None:
        if expected_rv is not None and current["metadata"]["resourceVersion"] != expected_rv:
            meta = current["metadata"]
            raise Conflict(
                f"{current['kind']}/{meta['name']} was changed (resourceVersion "
                f"{meta['resourceVersion']}, you had {expected_rv}): read it again and retry"
            )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One object; raises NotFound."""
        obj = self.try_get(kind, name)
        if obj is None:
            raise NotFound(f"{kind}/{name} not found")
        return obj

    def create(self, obj: dict[str, Any], *, apply_set: str | None = None) -> dict[str, Any]:
        """Create a new object from ``metadata`` (name, labels, annotations,
        finalizers), ``spec`` and optional ``status``; raises AlreadyExists."""
        with self.transaction():
            kind, name = obj["kind"], obj["metadata"]["name"]
            if not self._insert_refuses_duplicates and self._fetch(kind, name) is not None:
                raise AlreadyExists(f"{kind}/{name} already exists")
            new = self._new_object(obj, apply_set)
            self._write(new, "ADDED", apply_set)
            return new

    def _new_object(self, obj: dict[str, Any], apply_set: str | None) -> dict[str, Any]:
        meta = obj["metadata"]
        annotations = dict(meta.get("annotations") or {})
        if apply_set:
            annotations[APPLY_SET_ANNOTATION] = apply_set
        return {
            "apiVersion": "gu/v1",
            "kind": obj["kind"],
            "metadata": {
                "name": meta["name"],
                "labels": dict(meta.get("labels") or {}),
                "annotations": annotations,
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "resourceVersion": self._next_rv(),
                "creationTimestamp": now(),
                "finalizers": list(meta.get("finalizers") or []),
            },
            "spec": obj.get("spec") or {},
            "status": obj.get("status") or {},
        }

    def replace(self, obj: dict[str, Any], *, expected_rv: int | None = None) -> dict[str, Any]:
        """Write labels, annotations and spec of an existing object; keeps status.

        ``generation`` moves only if spec changed; nothing is written if nothing changed.
        """
        with self.transaction():
            kind, name = obj["kind"], obj["metadata"]["name"]
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            meta = obj["metadata"]
            return self._update(
                cur,
                spec=obj.get("spec") or {},
                labels=meta.get("labels") or {},
                annotations=meta.get("annotations") or {},
            )

    def _update(
        self,
        cur: dict[str, Any],
        *,
        spec: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        status: dict[str, Any] | None = None,
        finalizers: builtins.list[str] | None = None,
        deleted: str | None = None,
    ) -> dict[str, Any]:
        meta = cur["metadata"]
        new_meta = dict(meta)
        changed = False
        new = dict(cur)
        if spec is not None and spec != cur["spec"]:
            new["spec"] = spec
            new_meta["generation"] = meta["generation"] + 1
            changed = True
        for key, value in (("labels", labels), ("annotations", annotations)):
            if value is not None and value != meta[key]:
                new_meta[key] = dict(value)
                changed = True
        if status is not None and status != cur["status"]:
            new["status"] = status
            changed = True
        if finalizers is not None and finalizers != meta["finalizers"]:
            new_meta["finalizers"] = list(finalizers)
            changed = True
        if deleted is not None and not meta.get("deletionTimestamp"):
            new_meta["deletionTimestamp"] = deleted
            changed = True
        if not changed:
            return cur
        if new_meta.get("deletionTimestamp") and not new_meta["finalizers"]:
            # the last finalizer went: the object is really gone now
            self._remove(cur["kind"], meta["name"])
            new_meta["resourceVersion"] = self._next_rv()
            new["metadata"] = new_meta
            self._log_change(new, "DELETED")
            return new
        new_meta["resourceVersion"] = self._next_rv()
        new["metadata"] = new_meta
        self._write(
            new,
            "MODIFIED",
            new_meta["annotations"].get(APPLY_SET_ANNOTATION),
            spec_changed=new["spec"] is not cur["spec"],
        )
        return new

    def update_status(
        self, kind: str, name: str, status: dict[str, Any], *, expected_rv: int | None = None
    ) -> dict[str, Any]:
        """Replace ``status``; never moves ``generation``; writes nothing if it is equal."""
        with self.transaction():
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            return self._update(cur, status=status)

    def set_finalizers(
        self,
        kind: str,
        name: str,
        finalizers: builtins.list[str],
        *,
        expected_rv: int | None = None,
    ) -> dict[str, Any]:
        """Replace the finalizers; an object being deleted goes once they are empty."""
        with self.transaction():
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            return self._update(cur, finalizers=finalizers)

    def delete(self, kind: str, name: str, *, expected_rv: int | None = None) -> dict[str, Any]:
        """Delete: at once without finalizers, else mark ``deletionTimestamp`` and let
        the controllers remove their finalizers. Returns the object as it now is."""
        with self.transaction():
            cur = self._fetch(kind, name)
            if cur is None:
                raise NotFound(f"{kind}/{name} not found")
            self._check_rv(cur, expected_rv)
            if cur["metadata"]["finalizers"]:
                return self._update(cur, deleted=now())
            self._remove(kind, name)
            gone = dict(cur)
            gone["metadata"] = dict(cur["metadata"], resourceVersion=self._next_rv())
            self._log_change(gone, "DELETED")
            return gone

    def apply(
        self,
        objects: Iterable[dict[str, Any]],
        *,
        apply_set: str | None = None,
        prune: bool = False,
        prune_kinds: Iterable[str] = (),
        dry_run: bool = False,
        finalizers: Callable[[str], builtins.list[str]] | None = None,
    ) -> builtins.list[ApplyResult]:
        """Create or update every object atomically: all of them or none.

        An object equal to what is stored (spec, labels, annotations) is
        "unchanged" and not written. With ``prune``, objects of ``prune_kinds``
        carrying this apply set that are not in ``objects`` are deleted.
        ``dry_run`` computes the same results and rolls back.
        ``finalizers(kind)`` gives the finalizers a newly created object starts with.
        """
        objs = list(objects)
        results: builtins.list[ApplyResult] = []
        try:
            # (a dry run inside a caller's transaction undoes its writes in a savepoint)
            with self.transaction(savepoint=dry_run):
                seen: set[tuple[str, str]] = set()
                stored = self._stored(objs)  # (one query a kind, not one an object)
                for obj in objs:
                    key = (obj["kind"], obj["metadata"]["name"])
                    cur = self._fetch(*key) if key in seen else stored.get(key)
                    results.append(self._apply_one(obj, apply_set, finalizers, cur))
                    seen.add(key)
                if prune and apply_set:
                    results.extend(self._prune(apply_set, set(prune_kinds), seen))
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return results

    def _stored(self, objs: builtins.list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        """What is stored of ``objs``, by (kind, name), read inside the transaction."""
        by_kind: dict[str, builtins.list[str]] = {}
        for obj in objs:
            by_kind.setdefault(obj["kind"], []).append(obj["metadata"]["name"])
        return {
            (kind, name): found
            for kind, names in by_kind.items()
            for name, found in self._fetch_many(kind, names).items()
        }

    def _apply_one(
        self,
        obj: dict[str, Any],
        apply_set: str | None,
        finalizers: Callable[[str], builtins.list[str]] | None,
        cur: dict[str, Any] | None,
    ) -> ApplyResult:
        kind, meta = obj["kind"], obj["metadata"]
        if cur is None:
            fresh = dict(obj)
            if finalizers is not None:
                fresh["metadata"] = dict(meta, finalizers=finalizers(kind))
            new = self._new_object(fresh, apply_set)
            new["status"] = {}
            self._write(new, "ADDED", apply_set)
            return ApplyResult(kind, meta["name"], "created", 1, new["metadata"]["resourceVersion"])
        annotations = dict(meta.get("annotations") or {})
        if apply_set:
            annotations[APPLY_SET_ANNOTATION] = apply_set
        elif APPLY_SET_ANNOTATION in cur["metadata"]["annotations"]:
            annotations[APPLY_SET_ANNOTATION] = cur["metadata"]["annotations"][APPLY_SET_ANNOTATION]
        new = self._update(
            cur,
            spec=obj.get("spec") or {},
            labels=meta.get("labels") or {},
            annotations=annotations,
        )
        action: ApplyAction = "unchanged" if new is cur else "configured"
        return ApplyResult(
            kind,
            meta["name"],
            action,
            new["metadata"]["generation"],
            new["metadata"]["resourceVersion"],
        )

    def _prune(
        self, apply_set: str, kinds: set[str], keep: set[tuple[str, str]]
    ) -> builtins.list[ApplyResult]:
        out: builtins.list[ApplyResult] = []
        for obj in self._apply_set_members(apply_set):
            key = (obj["kind"], obj["metadata"]["name"])
            if key in keep or (kinds and obj["kind"] not in kinds):
                continue
            if obj["metadata"].get("deletionTimestamp"):
                continue
            gone = self.delete(*key)
            out.append(
                ApplyResult(
                    key[0],
                    key[1],
                    "pruned",
                    obj["metadata"]["generation"],
                    gone["metadata"]["resourceVersion"],
                )
            )
        return out


class _DryRun(Exception):
    """Raised inside a transaction to roll a dry run back."""


__all__ = ["ObjectStore"]
