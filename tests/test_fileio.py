"""specs.fileio: whole-file replacement that leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from specs.fileio import write_atomic


def test_write_atomic_replaces_the_file_with_exactly_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    old = os.umask(0o077)  # a umask that would strip 0644 down to 0600
    try:
        write_atomic(path, b"one", 0o644)
        assert path.read_bytes() == b"one"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        write_atomic(path, b"two" * 100_000)  # default 0600, larger than one write
    finally:
        os.umask(old)
    assert path.read_bytes() == b"two" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temp left


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()  # a folder where the file should go: the rename fails
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert (target / "inside").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
