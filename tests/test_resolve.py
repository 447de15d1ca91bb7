"""Model names: local directories, 'default', and Hub ids resolved from a Hugging Face cache laid out on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.errors import ModelError
from rlhfkit.resolve import resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, source: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/REF, snapshots/COMMIT/files}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "hub"
    snapshot = hub_cache(root, "acme/tiny-review", resolve_model_path("default"))
    return root, snapshot


@pytest.fixture
def offline_cache(cache, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_resolves_to_its_cached_snapshot(offline_cache):
    _, snapshot = offline_cache
    assert resolve_model_path("acme/tiny-review") == snapshot
    assert resolve_model_path(f"acme/tiny-review@{COMMIT}") == snapshot
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(resolve_model_path("acme/tiny-review"))
    tokenizer = load_tokenizer(resolve_model_path("acme/tiny-review"))
    assert model.config.model_type == "gpt2" and tokenizer.eos_token == "<|endoftext|>"


def test_an_uncached_hub_id_offline_is_one_clear_error(offline_cache):
    with pytest.raises(
        ModelError, match=r"model 'acme/missing': not in the Hugging Face cache .*hf download acme/missing"
    ):
        resolve_model_path("acme/missing")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        resolve_model_path("acme/tiny-review@no-such-branch")


def test_local_paths_still_win_and_bad_names_say_what_is_accepted(tmp_path, offline_cache, monkeypatch):
    local = tmp_path / "acme" / "tiny-review"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("acme/tiny-review") == Path("acme/tiny-review")  # a directory here beats the Hub id
    with pytest.raises(ModelError, match="not found .*a Hub id org/name"):
        resolve_model_path("no/such/dir")


def test_the_cli_trains_from_a_hub_id_and_refuses_an_uncached_one(cache, tmp_path):
    root, _ = cache
    env = {**os.environ, "HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "rlhfkit.cli"]
    common = ["max_steps=2", "batch_size=4", "eval_every=2", "val_fraction=0", "threads=1"]
    done = subprocess.run(
        [*cli, "sft", "model=acme/tiny-review", f"output_dir={tmp_path / 'sft'}", *common],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    refused = subprocess.run(
        [*cli, "sft", "model=acme/other", f"output_dir={tmp_path / 'x'}", *common],
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode != 0
    assert (
        refused.stderr.strip().splitlines()[-1].startswith("error: model 'acme/other': not in the Hugging Face cache")
    )
    assert "Traceback" not in refused.stderr
