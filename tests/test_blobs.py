"""Blob bookkeeping on the hub (``controller.blobs``) and the image store's size bound, with
a real SQLite store and a real image store on disk."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.data import PlacementData
from controller.blobs import (
    OutputRecord,
    inputs_errors,
    outputs_of,
    owner_key,
    owns,
    pin,
    record_output,
    sweep_outputs,
)
from controller.images import ImageStore, StoreFull
from controller.store import Store
from specs.images import hash_bytes, hash_file, pack_tar
from specs.kinds import Workload


def session(name: str, app: str = "a", inputs: list[str] | None = None) -> dict[str, object]:
    return {
        "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "app": app,
            "workload": {
                "runtime": "native",
                "image": {"hash": "sha3-256:" + "ab" * 32},
                "inputs": [{"hash": h, "path": f"in/{i}"} for i, h in enumerate(inputs or [])],
            },
        },
    }


def test_the_store_refuses_an_upload_past_its_bound_and_keeps_nothing_of_it(
    tmp_path: Path,
) -> None:
    images = ImageStore(tmp_path / "img", max_total_bytes=1000)
    first = images.put_stream([b"x" * 600])
    with pytest.raises(StoreFull, match="--store-max-gib"):
        images.put_stream([b"y" * 300, b"y" * 300])
    assert [i.hash for i in images.list()] == [first.hash]
    assert not list((tmp_path / "img" / "tmp").iterdir())
    images.delete(first.hash)
    assert images.used_bytes == 0
    images.put_stream([b"y" * 600])  # room again
    again = ImageStore(tmp_path / "img", max_total_bytes=1000)  # a restart counts what is there
    assert again.used_bytes == 600


def test_outputs_go_with_their_session_but_pushed_and_pinned_bytes_stay(
    store: Store, tmp_path: Path
) -> None:
    images = ImageStore(tmp_path / "img")
    out = images.put_stream([b"result of s-1"])
    pinned = images.put_stream([b"result of s-2"])
    pushed = images.put_stream([b"pushed by app a"])
    store.put_meta(owner_key("a", pushed.hash), str(pushed.size))
    store.create(session("s"))
    record_output(store, OutputRecord("s", "s-1", out.hash, out.size, 1, "a", "n1"), True)
    record_output(store, OutputRecord("s", "s-2", pinned.hash, pinned.size, 1, "a", "n2"), True)
    # the same bytes as a pushed blob came out again: no outputblob marker for them
    record_output(store, OutputRecord("s", "s-3", pushed.hash, pushed.size, 1, "a", "n3"), False)
    pin(store, pinned.hash, True)
    assert [r.placement for r in outputs_of(store, "s")] == ["s-1", "s-2", "s-3"]
    assert owns(store, "a", out.hash) and not owns(store, "b", out.hash)

    assert sweep_outputs(store, images) == 0  # the Session is there: nothing goes
    store.delete("Session", "s")
    assert sweep_outputs(store, images) == 3
    assert outputs_of(store, "s") == []
    assert not images.exists(out.hash)
    assert images.exists(pinned.hash) and images.exists(pushed.hash)
    assert not owns(store, "a", out.hash)


def test_inputs_must_exist_and_belong_to_the_sessions_app(store: Store, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "img")
    mine = images.put_stream([b"a's data"]).hash
    theirs = images.put_stream([b"b's data"]).hash
    store.put_meta(owner_key("a", mine), "8")
    store.put_meta(owner_key("b", theirs), "8")
    missing = "sha3-256:" + "cd" * 32
    errors = inputs_errors(store, images, [session("s", "a", [mine, theirs, missing])])
    assert [(e["path"], "belong" in e["message"] or "not on the hub" in e["message"])
            for e in errors] == [("spec.workload.inputs[1].hash", True),
                                 ("spec.workload.inputs[2].hash", True)]  # fmt: skip


def test_pack_tar_is_reproducible_and_counts_files(tmp_path: Path) -> None:
    for run in ("a", "b"):
        src = tmp_path / run / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "x.txt").write_text("x")
        (src / "y.bin").write_bytes(b"\0" * 5000)
    one = pack_tar(tmp_path / "a" / "src", tmp_path / "a.tar")
    two = pack_tar(tmp_path / "b" / "src", tmp_path / "b.tar")
    assert one == two and one[2] == 2
    assert one[0] == hash_file(tmp_path / "a.tar")


def test_placement_data_exposes_inputs_read_only_and_collects_outputs(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"input bytes")
    folder = tmp_path / "folder.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inside/file.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    folder.write_bytes(buf.getvalue())
    a, b = hash_bytes(blob.read_bytes()), hash_bytes(folder.read_bytes())
    workload = Workload.model_validate(
        {
            "runtime": "native",
            "image": {"hash": "sha3-256:" + "ab" * 32},
            "inputs": [{"hash": a, "path": "in/data.bin"},
                       {"hash": b, "path": "in/tree", "extract": True}],
            "outputs": {"path": "out", "maxMiB": 1},
        }
    )  # fmt: skip
    data = PlacementData(tmp_path / "data")
    mounts = data.prepare("p-1", workload, {a: blob, b: folder})
    assert [(m.path, m.read_only) for m in mounts] == [
        ("in/data.bin", True), ("in/tree", True), ("out", False)]  # fmt: skip
    assert mounts[0].source.read_bytes() == b"input bytes"
    assert mounts[0].source.stat().st_mode & 0o777 == 0o444
    assert (mounts[1].source / "inside" / "file.txt").read_text() == "hello"
    (mounts[2].source / "r.txt").write_text("result")
    assert data.outputs_size("p-1") == 6
    files, body = data.outputs_stream("p-1")
    packed = b"".join(body())
    assert files == 1 and packed == b"".join(body())  # reproducible: made anew for a retry
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert tar.getnames() == ["r.txt"]
    record = {"hash": hash_bytes(packed), "size": len(packed), "files": files}
    data.mark_uploaded("p-1", record)
    assert data.uploaded("p-1") == record and not data.outputs("p-1").exists()
    data.remove("p-1")
    assert not (tmp_path / "data" / "p-1").exists()
