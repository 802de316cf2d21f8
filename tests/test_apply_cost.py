"""An apply costs what it names, not what the store holds (controller/api/objects.py)."""

from __future__ import annotations

from controller.api.objects import app_keys
from controller.store import Store
from tests.helpers import kinds_listed


def test_the_keys_an_apply_may_take_away_are_read_from_the_apps_it_names(store: Store) -> None:
    """Without --prune an apply can change the keys of the Apps it names only: it reads
    those (it listed every App before and after each apply with an App in it)."""
    for i in range(30):
        store.create(
            {"kind": "App", "metadata": {"name": f"a{i}"}, "spec": {"publicKeys": [f"k{i}"]}}
        )
    listed = kinds_listed(store)
    assert app_keys(store, {"a3", "a7", "new"}) == {"a3": {"k3"}, "a7": {"k7"}}
    assert listed == []
    every = app_keys(store)  # (--prune: any App may go)
    assert len(every) == 30 and every["a29"] == {"k29"}
    assert listed == ["App"]
