"""Agreement metrics against worked examples from the literature, and the report over judgment files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rlhfkit.errors import DataError
from rlhfkit.feedback.agreement import (
    agreement_report,
    cohen_kappa,
    fleiss_kappa,
    format_report,
    krippendorff_alpha,
    load_judgments,
    percent_agreement,
)

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders x 12 units, missing values
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]

# Fleiss (1971) as tabulated in Wikipedia's "Fleiss' kappa": 10 items, 14 raters, 5 categories
FLEISS_1971 = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


# ----------------------------------------------------------------------------------------------- percent agreement


def test_percent_agreement_simple_cases():
    assert percent_agreement(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == 1.0
    assert percent_agreement(["a", "b", "a", "b"], ["a", "a", "a", "a"]) == 0.5
    assert percent_agreement([1, 2, 3], [3, 1, 2]) == 0.0


def test_percent_agreement_skips_none_and_nan():
    # only items 0 and 3 are labelled by both; they agree on item 0 only
    assert percent_agreement(["a", None, "b", "a"], ["a", "b", float("nan"), "b"]) == 0.5
    assert percent_agreement(np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, 2.0])) == 1.0


def test_percent_agreement_errors():
    with pytest.raises(ValueError, match="length"):
        percent_agreement(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="both"):
        percent_agreement(["a", None], [None, "b"])


# ----------------------------------------------------------------------------------------------- Cohen's kappa


def test_cohen_kappa_wikipedia_example():
    # 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o = 0.7, p_e = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-9)
    assert cohen_kappa(b, a) == pytest.approx(0.4, abs=1e-9)


def test_cohen_kappa_perfect_chance_and_opposite():
    assert cohen_kappa(["a", "b", "c", "a"], ["a", "b", "c", "a"]) == 1.0
    # p_o = 0.5 = p_e: exactly what chance predicts
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0, abs=1e-12)
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_cohen_kappa_single_label_convention():
    # p_e == 1: 0/0, documented as 1.0 for perfect agreement
    assert cohen_kappa(["a", "a", "a"], ["a", "a", "a"]) == 1.0


def test_cohen_kappa_skips_missing_and_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a = rng.choice(["a", "b", "tie"], size=200).tolist()
    b = [x if rng.random() < 0.6 else rng.choice(["a", "b", "tie"]) for x in a]
    assert cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b), abs=1e-12)
    with_gaps = [None] + a + [float("nan")]
    assert cohen_kappa(with_gaps, ["a"] + b + ["b"]) == pytest.approx(cohen_kappa(a, b))
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


# ----------------------------------------------------------------------------------------------- Fleiss' kappa


def test_fleiss_kappa_fleiss_1971_example():
    assert fleiss_kappa(FLEISS_1971) == pytest.approx(0.210, abs=5e-4)
    assert fleiss_kappa(np.array(FLEISS_1971)) == pytest.approx(0.20993, abs=1e-5)


def test_fleiss_kappa_perfect_and_errors():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa([[3, 0], [1, 1]])
    with pytest.raises(ValueError, match="at least 2"):
        fleiss_kappa([[1, 0], [0, 1]])
    with pytest.raises(ValueError):
        fleiss_kappa([[2, -1]])


def test_fleiss_kappa_equals_cohen_style_two_rater_case():
    # with 2 raters Fleiss' kappa is Scott's pi: (p_o - p_e) / (1 - p_e), p_e from the pooled shares
    counts = [[2, 0], [1, 1], [0, 2], [2, 0]]
    p_o = 3 / 4
    p_a = 5 / 8
    p_e = p_a**2 + (1 - p_a) ** 2
    assert fleiss_kappa(counts) == pytest.approx((p_o - p_e) / (1 - p_e))


# ----------------------------------------------------------------------------------------------- Krippendorff's alpha


@pytest.mark.parametrize(
    "level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)]
)
def test_krippendorff_alpha_2011_example(level, expected):
    assert krippendorff_alpha(KRIPPENDORFF_2011, level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_nan_array_and_exact_values():
    data = np.array([[np.nan if v is None else v for v in row] for row in KRIPPENDORFF_2011], dtype=float)
    # NaN marks a missing value as None does; more decimals than the paper prints
    assert krippendorff_alpha(data, "nominal") == pytest.approx(0.743421, abs=1e-6)
    assert krippendorff_alpha(data, "interval") == pytest.approx(0.849107, abs=1e-6)


def test_krippendorff_alpha_two_coders_nominal_matches_hand_computation():
    # 2 coders, no missing values: alpha = 1 - (n - 1) * sum o_ck(c!=k) / sum n_c n_k(c!=k)
    a = ["x", "x", "y", "y", "x"]
    b = ["x", "y", "y", "y", "x"]
    # o_xx = 4, o_yy = 4, o_xy = o_yx = 1; n_x = 5, n_y = 5, n = 10
    assert krippendorff_alpha([a, b]) == pytest.approx(1 - 9 * 2 / (2 * 25))


def test_krippendorff_alpha_conventions_and_errors():
    assert krippendorff_alpha([[1, 1, None], [1, 1, 1]], "interval") == 1.0  # no disagreement, D_e == 0
    assert krippendorff_alpha([[1, 2, 7], [1, 2, None]], "nominal") == 1.0  # the single-valued item is dropped
    with pytest.raises(ValueError, match="two or more"):
        krippendorff_alpha([[1, None], [None, 2]])
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(KRIPPENDORFF_2011, "cardinal")
    with pytest.raises(ValueError, match="numeric"):
        krippendorff_alpha([["a", "b"], ["a", "a"]], "interval")
    with pytest.raises(ValueError, match="one entry per item"):
        krippendorff_alpha([[1, 2], [1]])


# ----------------------------------------------------------------------------------------------- judgment files

# 3 annotators, 6 pairs; z skipped pair p5
VOTES = {
    "p1": {"x": "a", "y": "a", "z": "a"},
    "p2": {"x": "a", "y": "b", "z": "a"},
    "p3": {"x": "b", "y": "b", "z": "b"},
    "p4": {"x": "b", "y": "b", "z": "a"},
    "p5": {"x": "a", "y": "a"},
    "p6": {"x": "b", "y": "a", "z": "b"},
}


def write_rows(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def judgments_file(tmp_path) -> str:
    rows = [
        {"pair_id": pid, "annotator": name, "choice": choice, "shown_first": "a"}
        for pid, votes in VOTES.items()
        for name, choice in votes.items()
    ]
    return write_rows(tmp_path / "judgments.jsonl", rows)


def preference_file(tmp_path) -> str:
    rows = [
        {
            "prompt": "p",
            "chosen": "c",
            "rejected": "r",
            "id": pid,
            "annotator": "panel",
            "metadata": {"agreement": 1.0, "votes": votes},
        }
        for pid, votes in VOTES.items()
    ]
    return write_rows(tmp_path / "pairs.jsonl", rows)


def check_hand_computed(report: dict) -> None:
    assert report["items"] == 6 and report["annotators"] == 3 and report["judgments"] == 17
    assert report["label_counts"] == {"a": 9, "b": 8}
    # x|y: 4/6 agree, shares a/b 3/3 each -> p_e 0.5, kappa 1/3
    # x|z: 4/5 agree over 5 shared, x a2 b3, z a3 b2 -> p_e 0.48, kappa 0.32/0.52
    # y|z: 2/5 agree, y a2 b3, z a3 b2 -> p_e 0.48, kappa -0.08/0.52
    assert report["shared_items"] == {"x|y": 6, "x|z": 5, "y|z": 5}
    assert report["percent_agreement"] == pytest.approx({"x|y": 4 / 6, "x|z": 0.8, "y|z": 0.4})
    assert report["raw_agreement"] == pytest.approx((4 / 6 + 0.8 + 0.4) / 3)
    assert report["cohen_kappa"] == pytest.approx({"x|y": 1 / 3, "x|z": 0.32 / 0.52, "y|z": -0.08 / 0.52})
    assert report["mean_cohen_kappa"] == pytest.approx(31 / 117)
    # Fleiss over the 5 items with 3 raters: P = 3/5, p_a = 7/15, P_e = 113/225 -> kappa = 22/112
    assert report["fleiss_raters"] == 3 and report["fleiss_items"] == 5
    assert report["fleiss_kappa"] == pytest.approx(22 / 112)
    # Krippendorff over all 6: o_aa 6, o_bb 5, o_ab = o_ba = 3; n_a 9, n_b 8 -> 1 - 16*6/(2*9*8) = 1/3
    assert report["krippendorff_items"] == 6
    assert report["krippendorff_alpha"] == pytest.approx(1 / 3)


def test_agreement_report_on_judgments_file(tmp_path):
    path = judgments_file(tmp_path)
    judgments = load_judgments(path)
    assert len(judgments) == 17 and judgments[0].pair_id == "p1" and judgments[0].line == 1
    report = agreement_report(path)
    check_hand_computed(report)
    json.dumps(report)  # JSON-ready
    text = format_report(report)
    assert "Fleiss' kappa" in text and "0.196" in text and "x | z" in text and "5 of 6 items" in text


def test_agreement_report_on_preference_file_with_votes(tmp_path):
    check_hand_computed(agreement_report(preference_file(tmp_path)))


def test_load_judgments_accepts_tie_both_bad_and_label_rows(tmp_path):
    path = write_rows(
        tmp_path / "j.jsonl",
        [
            {"pair_id": 1, "annotator": "x", "choice": "tie"},
            {"pair_id": 1, "annotator": "y", "choice": "both_bad"},
            {"pair_id": 2, "annotator": "x", "label": "helpful"},
            {"pair_id": 2, "annotator": "y", "label": 3},
        ],
    )
    assert [j.choice for j in load_judgments(path)] == ["tie", "both_bad", "helpful", 3]
    report = agreement_report(path)
    assert report["raw_agreement"] == 0.0 and report["cohen_kappa"] == {"x|y": 0.0}


def test_report_when_no_pair_is_shared(tmp_path):
    path = write_rows(
        tmp_path / "j.jsonl",
        [{"pair_id": "p1", "annotator": "x", "choice": "a"}, {"pair_id": "p2", "annotator": "y", "choice": "b"}],
    )
    report = agreement_report(path)
    assert report["raw_agreement"] is None and report["fleiss_kappa"] is None and report["krippendorff_alpha"] is None
    assert "n/a" in format_report(report)


GOOD = {"pair_id": "p1", "annotator": "x", "choice": "a"}


@pytest.mark.parametrize(
    "bad_row, field",
    [
        ({"annotator": "x", "choice": "a", "pair_id": None}, "pair_id"),
        ({"pair_id": "p2", "choice": "a"}, "annotator"),
        ({"pair_id": "p2", "annotator": 7, "choice": "a"}, "annotator"),
        ({"pair_id": "p2", "annotator": "x"}, "choice"),
        ({"pair_id": "p2", "annotator": "x", "choice": "A"}, "choice"),
        ({"pair_id": "p2", "annotator": "x", "choice": 1}, "choice"),
        ({"pair_id": "p2", "annotator": "x", "label": [1]}, "label"),
        ({"pair_id": "p1", "annotator": "x", "choice": "b"}, "annotator"),  # second judgment on p1 by x
    ],
)
def test_bad_judgment_rows_name_file_line_and_field(tmp_path, bad_row, field):
    path = write_rows(tmp_path / "j.jsonl", [GOOD, bad_row])
    with pytest.raises(DataError, match=rf"j\.jsonl:2: field '{field}'"):
        load_judgments(path)


def test_broken_json_and_empty_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match=r"j\.jsonl:2: not valid JSON"):
        load_judgments(write_rows(tmp_path / "j.jsonl", [GOOD, '{"pair_id": "p2", ']))
    with pytest.raises(DataError, match="no judgments"):
        load_judgments(write_rows(tmp_path / "empty.jsonl", []))
    with pytest.raises(DataError, match=r"odd\.jsonl:1: cannot tell the file format"):
        load_judgments(write_rows(tmp_path / "odd.jsonl", [{"prompt": "hi"}]))
    with pytest.raises(DataError, match="file not found"):
        load_judgments(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "metadata, field",
    [
        (None, "metadata"),
        ({"agreement": 1.0}, "metadata.votes"),
        ({"votes": ["a", "b"]}, "metadata.votes"),
        ({"votes": {"x": "a", "y": "maybe"}}, "metadata.votes.y"),
    ],
)
def test_bad_preference_rows_name_file_line_and_field(tmp_path, metadata, field):
    good = {"prompt": "p", "chosen": "c", "rejected": "r", "id": "p1", "metadata": {"votes": {"x": "a"}}}
    bad = {"prompt": "p", "chosen": "c", "rejected": "r", "id": "p2"}
    if metadata is not None:
        bad["metadata"] = metadata
    path = write_rows(tmp_path / "pairs.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: field '{re.escape(field)}'"):
        load_judgments(path)


def test_agreement_command_prints_and_writes_json(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "judgments.jsonl"
    rows = [
        ("p1", "ann1", "a"),
        ("p1", "ann2", "a"),
        ("p2", "ann1", "b"),
        ("p2", "ann2", "a"),
        ("p3", "ann1", "b"),
        ("p3", "ann2", "b"),
    ]
    path.write_text("".join(json.dumps({"pair_id": p, "annotator": a, "choice": c}) + "\n" for p, a, c in rows))
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "agreement", str(path), "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Cohen's kappa" in result.stdout and "Fleiss' kappa" in result.stdout and "Krippendorff" in result.stdout
    report = json.loads(out.read_text())
    assert abs(report["raw_agreement"] - 2 / 3) < 1e-9
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"pair_id": "p1", "annotator": "x"}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", "agreement", str(bad)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "bad.jsonl:1" in result.stderr and "Traceback" not in result.stderr
