"""`rlhfkit shift`, the distribution-shift monitor, on the default task: a reward model trained on the pairs of all
review categories but three is shown (i) the pairs of those three and (ii) a random held-back split of its own
categories. The monitor must flag (i) and not (ii), name (i)'s prompts as the farthest out, and write every figure.

One pairs file and one reward model per module (about 25 s on one thread); each monitor run is about 10 s."""

from __future__ import annotations

import html
import json
import math
import random
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.config import PairsConfig, RewardTrainConfig
from rlhfkit.evaluate import shift as measures
from rlhfkit.report.html import section_shift
from rlhfkit.stages import pairs, reward

HELD_OUT = {"laptop", "book", "game"}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shift")
    pairs.run(PairsConfig(output_dir=str(root / "pairs"), num_prompts=400, seed=0, threads=1))
    rows = [json.loads(line) for line in (root / "pairs" / "pairs.jsonl").read_text().splitlines()]
    inside = [r for r in rows if r["category"] not in HELD_OUT]
    random.Random(0).shuffle(inside)
    cut = len(inside) // 4
    files = {"train": inside[cut:], "in_distribution": inside[:cut], "held_out": [r for r in rows if r not in inside]}
    paths = {}
    for name, records in files.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    reward.train(
        RewardTrainConfig(
            data=str(paths["train"]), output_dir=str(root / "rm"), max_steps=40, batch_size=16, lr=3e-4, seed=0
        )
    )
    return {**paths, "rm": root / "rm", "root": root}


def monitor(split, new: str, monkeypatch, capsys, *extra: str) -> tuple[int, dict, str]:
    out = split["root"] / f"shift-{new}-{len(extra)}"
    argv = [
        "rlhfkit",
        "shift",
        f"reward_model={split['rm'] / 'model'}",
        f"reference={split['rm'] / 'train_pairs.jsonl'}",
        f"baseline={split['rm'] / 'val_pairs.jsonl'}",
        f"new={split[new]}",
        "gold=default",
        f"output_dir={out}",
        *extra,
    ]
    monkeypatch.setattr("sys.argv", argv)
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, json.loads((out / "shift.json").read_text()), captured.out + captured.err


def test_held_out_categories_are_flagged_and_a_random_split_is_not(split, monkeypatch, capsys):
    code, held, printed = monitor(split, "held_out", monkeypatch, capsys)
    assert code == 0  # the verdict is data
    assert held["shifted"] and "SHIFTED" in printed
    checks = {c["check"]: c for c in held["checks"]}
    assert checks["distance"]["shifted"]
    categories = {json.loads(line)["prompt"]: json.loads(line)["category"] for line in split["held_out"].open()}
    assert {categories.get(row["prompt"]) for row in held["farthest"]} <= HELD_OUT  # the farthest are the new ones
    # the report's section: the verdict, every set's figures, each check, the farthest prompts
    page = section_shift(split["root"] / "shift-held_out-0", {})
    assert 'class="fail">SHIFTED' in page and "<td>rm_accuracy</td>" in page and "<td>distance</td>" in page
    assert html.escape(held["farthest"][0]["prompt"]) in page and "Not in this run folder" not in page

    code, inside, printed = monitor(split, "in_distribution", monkeypatch, capsys)
    assert code == 0 and not inside["shifted"] and "no shift" in printed
    assert not any(c["shifted"] for c in inside["checks"])
    assert held["sets"]["new"]["distance"] > inside["sets"]["new"]["distance"] + 0.2
    for result in (held, inside):  # every figure on every set, the gold judge's included
        for name in ("reference", "baseline", "new"):
            figures = result["sets"][name]
            for key in ("distance", "rm_accuracy", "confidence", "gold_agreement"):
                assert math.isfinite(figures[key]), (name, key)
        assert any("not an ensemble" in note for note in result["notes"])


def test_fail_on_shift_exits_1_and_keeps_the_report(split, monkeypatch, capsys):
    code, result, _ = monitor(split, "held_out", monkeypatch, capsys, "fail_on_shift=true")
    assert code == 1 and result["shifted"] and result["exit_code"] == 1


def test_prompts_only_give_distances_and_say_why_nothing_else(split, monkeypatch, capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n" for line in split["held_out"].open())
    )
    split = {**split, "prompts": prompts}
    code, result, _ = monitor(split, "prompts", monkeypatch, capsys)
    assert code == 0 and result["shifted"]
    assert "rm_accuracy" not in result["sets"]["new"]
    assert any("prompts, not pairs" in note for note in result["notes"])


def test_measures_by_hand():
    # confidence: mean |2 sigmoid(m) - 1|; sigmoid(log 3) = 0.75 -> 0.5, sigmoid(0) -> 0
    assert measures.confidence([math.log(3), -math.log(3), 0.0, math.nan]) == pytest.approx(1 / 3)
    # agreement: the pair the gold judge scores level is left out; 2 of 3 ordered as gold orders them
    assert measures.agreement([1.0, -1.0, 2.0, 0.5], [0.3, 0.2, 0.0, 0.1]) == pytest.approx(2 / 3)
    # disagreement: members at P = 0.75 and 0.25 on one pair (s.d. 0.25), identical on the other (0)
    assert measures.disagreement([[math.log(3), 0.0], [-math.log(3), 0.0]]) == pytest.approx(0.125)
    import torch

    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    assert measures.nearest_distances(vectors[:1], vectors[1:]) == pytest.approx([1 - math.sqrt(0.5)])
    assert measures.nearest_distances(vectors, vectors, leave_one_out=True) == pytest.approx([1 - math.sqrt(0.5)] * 3)


def test_ensemble_directory_gives_disagreement(split, tmp_path):
    """An ensemble (ensemble.json naming member directories) is scored member by member: its margin is the mean,
    and two identical members disagree by exactly 0."""
    import shutil

    from rlhfkit.data.records import load_records

    ensemble = tmp_path / "ensemble"
    for name in ("m0", "m1"):
        shutil.copytree(split["rm"] / "model", ensemble / name)
    (ensemble / "ensemble.json").write_text(json.dumps({"members": ["m0", "m1"]}))
    some = load_records(split["held_out"], "preference")[:8]
    single, _ = measures.reward_margins(measures.reward_scorers(str(split["rm"] / "model")), some)
    margins, members = measures.reward_margins(measures.reward_scorers(str(ensemble)), some)
    assert len(members) == 2
    assert margins == pytest.approx(single)
    assert measures.disagreement(members) == pytest.approx(0.0)
