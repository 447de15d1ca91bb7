"""The embedded default's cache key: a build by other code is never reused."""

from __future__ import annotations

import shutil

from rlhfkit.demo import build


def test_cache_key_covers_the_builder_code(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path / "home"))
    builder = tmp_path / "build.py"
    shutil.copy(build.BUILDER_SOURCES[0], builder)
    monkeypatch.setattr(build, "BUILDER_SOURCES", (builder, build.BUILDER_SOURCES[1]))
    before = build.default_dir()
    assert before == build.default_dir(), "an unchanged builder must reuse its cache folder"
    builder.write_text(builder.read_text().replace("epochs: int = 3", "epochs: int = 3  # edited"))
    assert build.default_dir() != before, "a changed builder (even a comment) must build into a new folder"
    assert build.default_dir(build.Recipe(seed=1)) != build.default_dir(), "a changed recipe must too"
