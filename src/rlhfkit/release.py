"""`rlhfkit export CHECKPOINT OUT`: a checkpoint as a clean Hugging Face directory to hand on: a LoRA adapter merged
into its base, the weights cast to one dtype, the tokenizer, and the model card with what the checkpoint registry
knows of it (evaluation, gate result, lineage); pushed to the Hub when asked and online."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .cards import registry_section
from .errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_for_export(checkpoint: Path):
    """(model, tokenizer) of a model directory, an adapter-only LoRA save merged into its base."""
    from .models.loading import load_causal_lm, load_reward_model, load_tokenizer
    from .resolve import resolve_model_path
    from .scoring import is_ensemble, is_reward_model

    adapter_config = checkpoint / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        base_name = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base_name:
            raise ModelError(f"{adapter_config}: no base_model_name_or_path; cannot tell which model it adapts")
        tokenizer = load_tokenizer(checkpoint)
        base = load_causal_lm(resolve_model_path(base_name))
        return PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload(), tokenizer
    path = resolve_model_path(str(checkpoint))
    if is_ensemble(path):
        raise ModelError(
            f"'{checkpoint}' is a reward-model ensemble (ensemble.json), not one model: export a member "
            f"({checkpoint}/member-0) or copy the whole folder"
        )
    tokenizer = load_tokenizer(path)
    if is_reward_model(path):
        return load_reward_model(path, tokenizer), tokenizer
    return load_causal_lm(path), tokenizer


def registered(checkpoint: Path, root: Path | None):
    """The registry's record of the checkpoint (root: its run root, by default two folders up), or None."""
    from .evaluate.registry import FILENAME, Registry

    root = root or checkpoint.resolve().parent.parent
    if not (root / FILENAME).is_file():
        return None
    target = checkpoint.resolve()
    return next((c for c in Registry(root).list() if Path(c.path).resolve() == target), None)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    dtype: str = "float32",
    root: str | Path | None = None,
    push_to_hub: str | None = None,
) -> Path:
    from .models.loading import save_model

    checkpoint, out = Path(checkpoint), Path(out)
    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if not checkpoint.is_dir():
        raise ModelError(f"checkpoint '{checkpoint}' is not a model directory")
    if out.resolve() == checkpoint.resolve():
        raise ModelError(f"OUT '{out}' is the checkpoint itself; export into a new folder")
    model, tokenizer = load_for_export(checkpoint)
    model = model.to(DTYPES[dtype])
    card = (checkpoint / "README.md").read_text() if (checkpoint / "README.md").is_file() else default_card(checkpoint)
    record = registered(checkpoint, Path(root) if root else None)
    if record is not None:
        card = card.rstrip() + "\n\n" + registry_section(record)
    card = card.rstrip() + f"\n\nExported by `rlhfkit export` from `{checkpoint}` in {dtype}.\n"
    save_model(model, tokenizer, out, card=card)
    if push_to_hub:
        push(out, push_to_hub)
    return out


def default_card(checkpoint: Path) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="transformers", tags=["rlhfkit"])
    return f"---\n{data.to_yaml()}\n---\n\n# {checkpoint.name}\n\nExported with rlhfkit.\n"


def push(folder: Path, repo_id: str) -> None:
    from huggingface_hub import create_repo, upload_folder
    from huggingface_hub.errors import HfHubHTTPError

    try:
        create_repo(repo_id, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=str(folder))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(
            f"--push-to-hub {repo_id}: {str(exc).splitlines()[0]} (the export in {folder} is kept; "
            "online, log in with `hf auth login` or set HF_TOKEN)"
        ) from None
