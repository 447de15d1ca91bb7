"""Data where people keep it: save_to_disk folders, Parquet / CSV / JSON / Arrow files and Hub datasets, read through
`datasets`, renamed by `columns`, validated like JSONL (errors name the source and the row)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from rlhfkit.data.importers import import_preferences
from rlhfkit.data.records import load_records, write_jsonl
from rlhfkit.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
COLUMNS = {"prompt": "question", "chosen": "answer_good", "rejected": "answer_bad"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def rows(n: int = 12) -> list[dict]:
    return [
        {
            "question": f"Review {i}: the harbor hotel.",
            "answer_good": f" Lovely view and kind staff {i}.",
            "answer_bad": f" Dirty room {i}.",
            "source": "test",
            "score": i / n,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("sources")
    table = datasets.Dataset.from_list(rows())
    table.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": table, "test": table.select(range(3))}).save_to_disk(str(root / "saved_dict"))
    table.to_parquet(str(root / "pairs.parquet"))
    table.to_csv(str(root / "pairs.csv"), index=False)
    table.to_json(str(root / "pairs.json"))
    arrow = datasets.Dataset.from_list(rows())
    arrow.save_to_disk(str(root / "arrow_src"))
    shutil.copy(next((root / "arrow_src").glob("*.arrow")), root / "pairs.arrow")
    write_jsonl(
        root / "pairs.jsonl",
        [{"prompt": r["question"], "chosen": r["answer_good"], "rejected": r["answer_bad"]} for r in rows()],
    )
    return root


@pytest.mark.parametrize("name", ["saved", "saved_dict", "pairs.parquet", "pairs.csv", "pairs.json", "pairs.arrow"])
def test_every_source_reads_as_the_same_pairs_as_the_jsonl(sources, name):
    expected = load_records(sources / "pairs.jsonl", "preference")
    got = load_records(sources / name, "preference", COLUMNS)
    assert [(p.prompt, p.chosen, p.rejected) for p in got] == [(p.prompt, p.chosen, p.rejected) for p in expected]


def test_a_bad_row_is_named_by_source_and_row(sources, tmp_path):
    import datasets

    bad = rows()
    bad[4]["answer_bad"] = bad[4]["answer_good"]
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad\.parquet:row 5: field 'rejected': identical to chosen"):
        load_records(tmp_path / "bad.parquet", "preference", COLUMNS)
    with pytest.raises(DataError, match=r"pairs\.parquet:row 1: field 'chosen': missing"):
        load_records(sources / "pairs.parquet", "preference")
    with pytest.raises(
        DataError,
        match=r"columns\.chosen names column 'good', which this row does not have "
        r"\(it has: question, answer_good, answer_bad, source, score\)",
    ):
        load_records(sources / "pairs.parquet", "preference", {**COLUMNS, "chosen": "good"})
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_records(tmp_path / "plain", "preference")
    with pytest.raises(DataError, match="unknown file type '.xlsx'|file not found"):
        load_records(tmp_path / "pairs.xlsx", "preference")


@pytest.fixture
def hub_datasets(sources, tmp_path, monkeypatch):
    """A Hub dataset repository laid out in a Hugging Face cache, read offline."""
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "datasets--acme--reviews"
    data = repo / "snapshots" / COMMIT / "data"
    data.mkdir(parents=True)
    shutil.copy(sources / "pairs.parquet", data / "train-00000-of-00001.parquet")
    shutil.copy(sources / "pairs.parquet", data / "test-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_a_hub_dataset_id_with_config_and_split_reads_from_the_cache(hub_datasets):
    train = load_records("acme/reviews", "preference", COLUMNS)
    test = load_records("acme/reviews:default:test", "preference", COLUMNS)
    assert len(train) == len(test) == 12
    with pytest.raises(DataError, match=r"acme/missing: not in the Hugging Face cache .*hf download acme/missing"):
        load_records("acme/missing", "preference")


def test_importers_read_these_sources_too(tmp_path):
    import datasets

    if not SHARED.is_file():
        pytest.skip(f"HH-RLHF sample not found at {SHARED}")
    with gzip.open(SHARED, "rt") as handle:
        records = [json.loads(line) for _, line in zip(range(50), handle)]
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "hh.parquet"))
    from_parquet, report = import_preferences(tmp_path / "hh.parquet", "hh")
    write_jsonl(tmp_path / "hh.jsonl", records)
    from_jsonl, _ = import_preferences(tmp_path / "hh.jsonl", "hh")
    assert report.read == 50 and [p.chosen for p in from_parquet] == [p.chosen for p in from_jsonl]


def test_a_stage_trains_from_a_parquet_file_with_renamed_columns(sources, tmp_path):
    from rlhfkit.config import RewardTrainConfig
    from rlhfkit.stages import reward

    summary = reward.train(
        RewardTrainConfig(
            data=str(sources / "pairs.parquet"),
            columns=COLUMNS,
            output_dir=str(tmp_path / "rm"),
            max_steps=2,
            batch_size=4,
            eval_every=2,
            threads=1,
        )
    )
    assert summary["train_pairs"] + summary["val_pairs"] == 12
    assert (tmp_path / "rm" / "model" / "config.json").is_file()
