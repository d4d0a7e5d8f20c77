"""Atomic writes: the old file survives a failed write, and no temporary file is left behind."""

from __future__ import annotations

import os

import pytest

from autotune import atomic


def test_write_replaces_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.write_text(path, "first")
    atomic.write_text(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic.write_text(path, "old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
