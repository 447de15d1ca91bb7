"""Prompt coverage: the pure functions on hand-built embeddings, and `rlhfkit coverage` end to end on small prompt
files whose reference holds a category the prompts lack."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlhfkit import cli
from rlhfkit.evaluate.coverage import greedy_cover, kmeans, nearest_similarity, prompt_coverage
from rlhfkit.report.html import section_coverage

# unit vectors at known angles in the plane: cos(0) = 1, cos(60 deg) = 0.5, cos(90 deg) = 0
E0, E60, E90 = [1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]


def test_prompt_coverage_by_hand():
    # reference rows at 0, 60 and 90 degrees; one prompt at 0 degrees
    reference = [E0, E60, E90]
    assert nearest_similarity([E0], reference) == pytest.approx([1.0, 0.5, 0.0])
    assert prompt_coverage([E0], reference, 0.7) == pytest.approx(1 / 3)
    # the threshold is inclusive: the 60-degree row sits exactly at 0.5
    assert prompt_coverage([E0], reference, 0.5) == pytest.approx(2 / 3)
    assert prompt_coverage([E0], reference, 0.0) == pytest.approx(1.0)
    # a second prompt at 90 degrees covers its own row, and the 60-degree row through it (cos 30 deg = 0.87): the
    # nearest prompt counts, not the mean
    assert prompt_coverage([E0, E90], reference, 0.9) == pytest.approx(2 / 3)
    assert prompt_coverage([E0, E90], reference, 0.8) == pytest.approx(1.0)
    # cosine, not dot product: scaled rows give the same answer; duplicated prompts change nothing
    assert prompt_coverage([[5.0, 0.0], [5.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]], 0.9) == pytest.approx(0.5)
    # no prompts cover nothing
    assert prompt_coverage(np.zeros((0, 2)), reference, 0.1) == 0.0


def test_prompt_coverage_refuses_bad_inputs():
    with pytest.raises(ValueError, match="threshold"):
        prompt_coverage([E0], [E0], 1.5)
    with pytest.raises(ValueError, match="sizes differ"):
        prompt_coverage([[1.0, 0.0, 0.0]], [E0], 0.5)
    with pytest.raises(ValueError, match="all-zero row"):
        prompt_coverage([[0.0, 0.0]], [E0], 0.5)
    with pytest.raises(ValueError, match="empty"):
        prompt_coverage([E0], np.zeros((0, 2)), 0.5)


def test_greedy_cover_picks_the_largest_gain_first():
    # reference: three rows near the x axis (covered), two near y, one at 45 degrees
    reference = [E0, E0, E0, E90, E90, [math.sqrt(0.5), math.sqrt(0.5)]]
    covered = [True, True, True, False, False, False]
    # candidate 0 covers the 45-degree row only, candidate 1 both y rows, candidate 2 nothing new
    candidates = [[math.sqrt(0.5), math.sqrt(0.5)], E90, E0]
    picked, after = greedy_cover(candidates, reference, covered, threshold=0.9, target=1.0)
    assert picked == [1, 0]
    assert after == pytest.approx([5 / 6, 1.0])
    # the target stops it early; so does the limit; nothing left to gain stops it too
    assert greedy_cover(candidates, reference, covered, 0.9, target=0.8)[0] == [1]
    assert greedy_cover(candidates, reference, covered, 0.9, target=1.0, limit=1)[0] == [1]
    assert greedy_cover([E0], reference, covered, 0.9, target=1.0) == ([], [])


def test_kmeans_separates_two_directions():
    rows = [E0, [0.99, 0.1], E90, [0.1, 0.99], [0.98, 0.05]]
    labels = kmeans(rows, 2, seed=0)
    assert labels[0] == labels[1] == labels[4] != labels[2] == labels[3]
    assert len(set(kmeans(rows, 10).tolist())) <= 5  # k capped at the rows


# ----------------------------------------------------------------------------------------------- the command

HOTEL = ["We checked into the hotel by the station last week.", "Our hotel room overlooked the old harbour."]
PHONE = ["I bought this phone online yesterday.", "My new phone arrived in the post on Monday."]
GYM = ["I joined the gym near my office this spring.", "The gym downtown opened a new weights room."]


def write_prompts(path, texts, category):
    path.write_text(
        "".join(
            json.dumps({"prompt": t, "category": category, "id": f"{category}{i}"}) + "\n" for i, t in enumerate(texts)
        )
    )
    return str(path)


def test_coverage_command_finds_the_missing_category_and_fills_it(tmp_path, monkeypatch, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", HOTEL, "hotel")
    reference = tmp_path / "reference.jsonl"
    reference.write_text(
        "".join(json.dumps({"prompt": t}) + "\n" for t in HOTEL[::-1] + PHONE + ["Is this hotel pet friendly?"])
    )
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"prompt": t, "category": c, "id": f"{c}{i}"}) + "\n"
            for c, texts in (
                ("gym", GYM),
                ("phone", ["I ordered this phone from the shop last week.", "The phone I bought arrived on Monday."]),
            )
            for i, t in enumerate(texts)
        )
    )
    out = tmp_path / "coverage"
    monkeypatch.setattr(
        "sys.argv",
        [
            "rlhfkit",
            "coverage",
            f"prompts={prompts}",
            f"reference={reference}",
            f"pool={pool}",
            "threshold=0.6",
            "target=1.0",
            f"output_dir={out}",
        ],
    )
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert not stop.value.code
    printed = capsys.readouterr().err
    result = json.loads((out / "coverage.json").read_text())
    picked = [json.loads(line) for line in (out / "picked.jsonl").read_text().splitlines()]
    assert result["coverage"] < result["coverage_after"]
    assert picked and {p["category"] for p in picked} == {"phone"}  # the missing category, not the gym prompts
    # the phone reference prompts were uncovered, and clustered apart from the rest
    assert any("phone" in c["representative"] for c in result["uncovered_clusters"])
    assert "uncovered cluster" in printed and "picked" in printed
    page = section_coverage(out, {})  # the report's section: before and after, and the uncovered clusters
    assert f"<td>{result['coverage']:.4g}</td>" in page and f"<td>{result['coverage_after']:.4g}</td>" in page
    assert "Uncovered reference prompts" in page and "phone" in page and "Not in this run folder" not in page
