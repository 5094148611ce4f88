"""Atomic outputs: nothing half-written, nothing overwritten without force, sane permissions."""

from __future__ import annotations

import os
import stat

import pytest

from diffex.errors import DiffexError
from diffex.fsutil import atomic_dir, atomic_file, verify_checksums, write_checksums


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_force_replaces_and_keeps_old_on_failure(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(DiffexError, match="--force"):
        with atomic_dir(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out", force=True):
            raise RuntimeError
    assert (tmp_path / "out" / "v").read_text() == "1"
    with atomic_dir(tmp_path / "out", force=True) as tmp:
        (tmp / "v").write_text("2")
    assert (tmp_path / "out" / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d"):
            pass
        with atomic_file(tmp_path / "f") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_atomic_file_failure_keeps_old(tmp_path):
    (tmp_path / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "f") as fh:
            fh.write("new")
            raise RuntimeError
    assert (tmp_path / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_checksums(tmp_path):
    (tmp_path / "a").write_text("1")
    write_checksums(tmp_path)
    verify_checksums(tmp_path)
    (tmp_path / "a").write_text("2")
    with pytest.raises(DiffexError, match="checksum differs"):
        verify_checksums(tmp_path)
    (tmp_path / "a").unlink()
    with pytest.raises(DiffexError, match="missing"):
        verify_checksums(tmp_path)
