"""Model cards in every saved model (the Hub's format, read back with huggingface_hub), and `rlhfkit export`: LoRA
merged, one dtype, the card with the registry's record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from rlhfkit.config import SFTConfig
from rlhfkit.evaluate.gate import GateResult, GateRow
from rlhfkit.evaluate.registry import Registry
from rlhfkit.resolve import resolve_model_path
from rlhfkit.stages import sft

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"max_steps": 2, "batch_size": 4, "eval_every": 2, "threads": 1}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """SFT with a LoRA adapter saved adapter-only, inside a run root."""
    root = tmp_path_factory.mktemp("root")
    lora = {"r": 4, "alpha": 8, "merge": False}
    sft.run(SFTConfig(output_dir=str(root / "sft"), lora=lora, run_name="card-test", **TINY))
    return root


def test_a_saved_model_carries_a_hub_model_card(lora_run):
    card = ModelCard.load(lora_run / "sft" / "model" / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags == ["rlhfkit", "sft"]
    assert "Trained with rlhfkit's `sft` stage" in card.text
    assert "- model: `default`" in card.text and "- data: `default`" in card.text
    assert "- val_loss:" in card.text  # the summary's figures
    assert "run_name: card-test" in card.text and "  r: 4" in card.text  # the resolved config


def test_a_hub_id_start_is_the_cards_base_model(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "models--acme--tiny-review"
    shutil.copytree(resolve_model_path("default"), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    sft.run(SFTConfig(model="acme/tiny-review@main", output_dir=str(tmp_path / "sft"), **TINY))
    assert ModelCard.load(tmp_path / "sft" / "model" / "README.md").data.base_model == "acme/tiny-review"
    # a stage started from that SFT folder keeps naming the Hub model its chain began with
    sft.run(SFTConfig(model=str(tmp_path / "sft" / "model"), output_dir=str(tmp_path / "again"), **TINY))
    assert ModelCard.load(tmp_path / "again" / "model" / "README.md").data.base_model == "acme/tiny-review"


def test_export_merges_the_adapter_casts_and_adds_the_registry_record(lora_run, tmp_path):
    checkpoint = lora_run / "sft" / "model"
    assert (checkpoint / "adapter_config.json").is_file()
    gate = GateResult(rows=[GateRow("mean_gold", ">=", 0.4, 0.71, True)], passed=True)
    Registry(lora_run).register(checkpoint, metrics={"mean_gold": 0.71}, gate=gate, lineage={"sft": "default"})
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "export", str(checkpoint), str(out), "--dtype", "bfloat16"],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not (out / "adapter_config.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype.is_floating_point
    card = ModelCard.load(out / "README.md")
    assert card.data.tags == ["rlhfkit", "sft"]
    assert "### Gate: PASSED" in card.text and "| mean_gold | >= 0.4 | 0.71 | pass |" in card.text
    assert '"sft": "default"' in card.text and "Exported by `rlhfkit export`" in card.text


def test_export_refuses_what_it_cannot_do(tmp_path, lora_run):
    cli = [sys.executable, "-m", "rlhfkit.cli", "export"]
    missing = subprocess.run([*cli, str(tmp_path / "nope"), str(tmp_path / "o")], capture_output=True, text=True)
    assert missing.returncode != 0 and "is not a model directory" in missing.stderr
    model = str(lora_run / "sft" / "model")
    bad = subprocess.run([*cli, model, str(tmp_path / "o"), "--dtype", "int3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--dtype int3: expected one of float32, bfloat16, float16" in bad.stderr
