"""Where records come from: JSONL files (read here, line by line), and through Hugging Face `datasets` everything
else people keep data in: a folder written by `save_to_disk`, Parquet / CSV / JSON / Arrow files, and Hub datasets
named `org/name`, `org/name:config` or `org/name:config:split` (split `train` by default).

Every row then passes the same validation as a JSONL line (rlhfkit.data.records.parse_record); a row's place in an
error is `SOURCE:row N` (N from 1). `columns` renames a source's columns to the schema's fields first:
`{prompt: question, chosen: answer_good}` reads column `question` as `prompt`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError

TABLE_FILES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}
HUB_DATASET = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[\w.-]+){0,2}")


def is_jsonl(path: Path) -> bool:
    """JSONL is read here: `.jsonl`, `.jsonl.gz`, and any existing file that is not a table file `datasets` reads."""
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return True
    return path.is_file() and path.suffix.lower() not in TABLE_FILES


def source_rows(source: str) -> Iterator[tuple[str, Any]]:
    """(place, row as a dict) of each row of a non-JSONL source, through `datasets`."""
    path = Path(source).expanduser()
    dataset = open_dataset(source, path)
    for index, row in enumerate(dataset, start=1):
        yield f"row {index}", dict(row)


def open_dataset(source: str, path: Path):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading this needs the `datasets` package (pip install datasets)") from None
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            if not any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
                raise DataError(
                    f"{source}: a folder, but not one written by datasets' save_to_disk "
                    "(no dataset_info.json or dataset_dict.json)"
                )
            loaded = datasets.load_from_disk(str(path))
            return one_split(source, loaded, None)
        if path.is_file():
            builder = TABLE_FILES.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{source}: unknown file type '{path.suffix}'; give .jsonl, .jsonl.gz, .parquet, "
                    ".csv, .json or .arrow, or a save_to_disk folder"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if HUB_DATASET.fullmatch(source) and not source.startswith((".", "~", "/")):
            name, config, split = (source.split(":") + [None, None])[:3]
            local = hub_dataset_snapshot(source, name)
            return one_split(source, datasets.load_dataset(str(local), config, split=split or "train"), split)
    except DataError:
        raise
    except (FileNotFoundError, ConnectionError) as exc:
        raise DataError(
            f"{source}: cannot load it ({str(exc).splitlines()[0]}); offline, a Hub dataset must be in "
            "the datasets cache"
        ) from None
    except Exception as exc:  # datasets raises many kinds (DatasetNotFoundError, ValueError, ArrowInvalid, ...)
        raise DataError(
            f"{source}: cannot read it with datasets ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    raise DataError(
        f"{source}: file not found (give a JSONL file, a Parquet/CSV/JSON/Arrow file, a save_to_disk "
        "folder, or a Hub dataset org/name[:config[:split]])"
    )


def hub_dataset_snapshot(source: str, name: str) -> Path:
    """The local snapshot of Hub dataset repository `name` (huggingface_hub's cache, downloaded when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name, repo_type="dataset"))
    except LocalEntryNotFoundError:
        raise DataError(
            f"{source}: not in the Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE or "
            f"no network); download it where there is a network (`hf download {name} --repo-type "
            "dataset`) into this cache, or give a local file"
        ) from None
    except RepositoryNotFoundError:
        raise DataError(f"{source}: no such dataset on the Hub, or it is private (set HF_TOKEN)") from None


def one_split(source: str, loaded, split: str | None):
    """A Dataset as it is; of a DatasetDict, the one split it has, or `train`."""
    if not hasattr(loaded, "keys"):
        return loaded
    splits = list(loaded.keys())
    if split in splits:
        return loaded[split]
    if len(splits) == 1:
        return loaded[splits[0]]
    if "train" in splits:
        return loaded["train"]
    raise DataError(f"{source}: holds splits {', '.join(splits)}; name one (a Hub id takes org/name:config:split)")


def rename_columns(obj: Any, columns: dict[str, str], where: str) -> Any:
    """The row with each `columns` source column renamed to its schema field."""
    if not columns or not isinstance(obj, dict):
        return obj
    renamed = dict(obj)
    for field, column in columns.items():
        if column not in obj:
            raise DataError(
                f"{where}: columns.{field} names column '{column}', which this row does not have "
                f"(it has: {', '.join(map(str, obj)) or 'none'})"
            )
        renamed.pop(column)
        renamed[field] = obj[column]
    return renamed
