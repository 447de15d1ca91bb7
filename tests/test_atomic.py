"""Atomic directories: a crash while writing leaves the previous version whole; success replaces it whole."""

from pathlib import Path

import pytest

from rlhfkit.atomic import atomic_dir


def test_success_replaces_the_old_directory_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with atomic_dir(target) as tmp:
        assert not (tmp / "old.bin").exists()
        (tmp / "new.bin").write_text("new")
        assert (target / "old.bin").read_text() == "old"  # untouched until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old folder left behind


def test_a_crash_while_writing_keeps_the_old_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "weights.bin").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_creates_missing_parents(tmp_path):
    with atomic_dir(tmp_path / "a" / "b") as tmp:
        (tmp / "x").write_text("1")
    assert Path(tmp_path / "a" / "b" / "x").read_text() == "1"
