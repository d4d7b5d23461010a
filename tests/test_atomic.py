"""Atomic writes: the target is the old file or the new one, never a torn one; no temp file is left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from raysim import atomic
from raysim.atomic import atomic_write_bytes, atomic_write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_and_replaces_leaving_only_the_target(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_bytes(target, b"\x00first")
    assert target.read_bytes() == b"\x00first"
    atomic_write_text(target, "second: é\n")
    assert target.read_bytes() == "second: é\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    old = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh"
        atomic_write_text(fresh, "x")
        assert mode(fresh) == 0o640  # as open(path, "w") would make it, not a temp file's 0o600
    finally:
        os.umask(old)
    kept = tmp_path / "kept"
    kept.write_text("old")
    kept.chmod(0o604)
    atomic_write_text(kept, "new")
    assert mode(kept) == 0o604 and kept.read_text() == "new"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_missing_directory_is_an_error_not_created(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "f", b"x")
    assert list(tmp_path.iterdir()) == []
