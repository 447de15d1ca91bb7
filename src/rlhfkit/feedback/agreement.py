"""Inter-annotator agreement: percent agreement, Cohen's and Fleiss' kappa, Krippendorff's alpha, and a report
over a judgments file.

The metrics are pure functions of lists (or numpy arrays); a missing label is None or NaN.
- percent_agreement(a, b)       share of items two annotators labelled the same
- cohen_kappa(a, b)             Cohen (1960): (p_o - p_e) / (1 - p_e), two raters, nominal labels
- fleiss_kappa(counts)          Fleiss (1971): items x categories counts, the same number of raters per item
- krippendorff_alpha(data, level)  Krippendorff: annotators x items, missing values allowed, any number of raters

`load_judgments(path)` reads either file `rlhfkit pairs` writes:
- judgments.jsonl: {"pair_id": ID, "annotator": NAME, "choice": "a"|"b"|"tie"|"both_bad"}
  (or "label": any string or integer instead of "choice", for other annotation tasks)
- pairs.jsonl (a preference file): {"id": ID, ..., "metadata": {"votes": {NAME: CHOICE, ...}}}
`agreement_report(path)` computes every metric over it; `format_report(report)` renders it as plain text.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ..data.records import Where, read_jsonl, type_name
from ..errors import DataError

CHOICES = ("a", "b", "tie", "both_bad")
LEVELS = ("nominal", "ordinal", "interval", "ratio")


def is_missing(value: Any) -> bool:
    """None or a float NaN (numpy's included) marks a missing label."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return False


def _paired(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> list[tuple[Hashable, Hashable]]:
    """The (a, b) label pairs of items both annotators labelled."""
    labels_a, labels_b = list(labels_a), list(labels_b)
    if len(labels_a) != len(labels_b):
        raise ValueError(
            f"the two annotators' label lists differ in length ({len(labels_a)} vs {len(labels_b)}); "
            "give one entry per item, None where an annotator did not label it"
        )
    pairs = [(a, b) for a, b in zip(labels_a, labels_b) if not is_missing(a) and not is_missing(b)]
    if not pairs:
        raise ValueError("no item was labelled by both annotators")
    return pairs


def percent_agreement(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Share of items both annotators labelled on which they gave the same label."""
    pairs = _paired(labels_a, labels_b)
    return sum(a == b for a, b in pairs) / len(pairs)


def _chance_corrected(observed: float, expected: float) -> float:
    """(observed - expected) / (1 - expected); when chance agreement is certain (expected == 1, a single label
    used throughout) the ratio is 0/0, and we return 1.0 for perfect observed agreement, else 0.0."""
    if math.isclose(expected, 1.0, rel_tol=0.0, abs_tol=1e-12):
        return 1.0 if math.isclose(observed, 1.0, rel_tol=0.0, abs_tol=1e-12) else 0.0
    return (observed - expected) / (1 - expected)


def cohen_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Cohen's kappa (1960) for two raters and nominal labels of any hashable type.

    p_o is the observed agreement, p_e = sum_k p_a(k) p_b(k) the agreement expected from each rater's own label
    shares. Items either rater left missing are skipped. When p_e == 1 (both used one and the same label) the
    formula is 0/0: we return 1.0 if p_o == 1, else 0.0.
    """
    pairs = _paired(labels_a, labels_b)
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    shares_a = Counter(a for a, _ in pairs)
    shares_b = Counter(b for _, b in pairs)
    expected = sum(shares_a[k] * shares_b.get(k, 0) for k in shares_a) / (n * n)
    return _chance_corrected(observed, expected)


def fleiss_kappa(counts: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Fleiss' kappa (1971): counts[i][j] is how many raters put item i in category j.

    Every item needs the same number of raters n >= 2. P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean P_i,
    p_j = sum_i n_ij / (N n), P_e = sum_j p_j^2, kappa = (P - P_e) / (1 - P_e); when P_e == 1 (one category
    throughout) we return 1.0, as for Cohen's kappa.
    """
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"counts must be a non-empty items x categories table, got shape {table.shape}")
    if np.isnan(table).any() or (table < 0).any() or (table != np.round(table)).any():
        raise ValueError("counts must be non-negative whole numbers")
    raters = table.sum(axis=1)
    n = raters[0]
    if not (raters == n).all():
        bad = int(np.argmax(raters != n))
        raise ValueError(
            f"every item needs the same number of raters: item 0 has {n:g}, item {bad} has {raters[bad]:g}"
        )
    if n < 2:
        raise ValueError(f"Fleiss' kappa needs at least 2 raters per item, got {n:g}")
    items = table.shape[0]
    per_item = ((table**2).sum(axis=1) - n) / (n * (n - 1))
    category_shares = table.sum(axis=0) / (items * n)
    return _chance_corrected(float(per_item.mean()), float((category_shares**2).sum()))


def _difference_matrix(values: list, marginals: np.ndarray, level: str) -> np.ndarray:
    """Krippendorff's squared difference delta^2(c, k) between every two of the sorted distinct values."""
    size = len(values)
    if level == "nominal":
        return 1.0 - np.eye(size)
    v = np.asarray(values, dtype=float)
    if level == "interval":
        return (v[:, None] - v[None, :]) ** 2
    if level == "ratio":
        total = v[:, None] + v[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total == 0, 0.0, (v[:, None] - v[None, :]) / total)
        return ratio**2
    # ordinal: (sum of the marginals n_g from c to k inclusive, minus half of n_c and n_k)^2
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
    delta = np.zeros((size, size))
    for c in range(size):
        for k in range(c + 1, size):
            delta[c, k] = delta[k, c] = (cumulative[k + 1] - cumulative[c] - (marginals[c] + marginals[k]) / 2) ** 2
    return delta


def krippendorff_alpha(reliability_data: Sequence[Sequence[Any]] | np.ndarray, level: str = "nominal") -> float:
    """Krippendorff's alpha over annotators x items data, missing values as None or NaN.

    Built from the coincidence matrix o_ck = sum_u (number of c-k value pairs in unit u) / (m_u - 1), where m_u is
    the number of values unit u got; units with fewer than 2 values are dropped. With n_c = sum_k o_ck and
    n = sum_c n_c, alpha = 1 - D_o / D_e = 1 - (n - 1) sum o_ck delta^2_ck / sum n_c n_k delta^2_ck. Differences:
    nominal 0/1; ordinal (sum_{g=c..k} n_g - (n_c + n_k)/2)^2 over the sorted values; interval (c - k)^2;
    ratio ((c - k) / (c + k))^2 (non-negative values). When every pairable value is the same, D_o = D_e = 0 and
    the formula is 0/0: we return 1.0 (no disagreement). ValueError when no unit has 2 values.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    rows = [list(row) for row in reliability_data]
    if not rows:
        raise ValueError("reliability_data is empty; expected one row of labels per annotator")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"every annotator needs one entry per item: row 0 has {width}, row {i} has {len(row)}")
    units = []
    for j in range(width):
        present = [row[j] for row in rows if not is_missing(row[j])]
        if len(present) >= 2:
            units.append(present)
    if not units:
        raise ValueError("no item has two or more values; Krippendorff's alpha needs items labelled more than once")

    if level == "nominal":
        values = list(dict.fromkeys(v for unit in units for v in unit))
        index = {v: i for i, v in enumerate(values)}
    else:
        for unit in units:
            for v in unit:
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise ValueError(f"level {level!r} needs numeric values, got {v!r}")
                if level == "ratio" and v < 0:
                    raise ValueError(f"level 'ratio' needs non-negative values, got {v!r}")
        values = sorted({float(v) for unit in units for v in unit})
        index = {v: i for i, v in enumerate(values)}
        units = [[float(v) for v in unit] for unit in units]

    coincidences = np.zeros((len(values), len(values)))
    for unit in units:
        counts = np.zeros(len(values))
        for v in unit:
            counts[index[v]] += 1
        # ordered pairs of values from different coders in this unit, each unit weighted 1 / (m_u - 1)
        coincidences += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    marginals = coincidences.sum(axis=1)
    total = marginals.sum()
    delta = _difference_matrix(values, marginals, level)
    observed = float((coincidences * delta).sum())
    expected = float((np.outer(marginals, marginals) * delta).sum()) / (total - 1)
    if expected == 0:
        return 1.0
    return 1.0 - observed / expected


# ------------------------------------------------------------------------------------------ judgment files


@dataclass
class Judgment:
    pair_id: str | int
    annotator: str
    choice: Hashable  # "a" | "b" | "tie" | "both_bad", or any string/integer label from a "label" field
    line: int


def parse_choice(value: Any, field_name: str, where: Where) -> str:
    """A judgment's choice, one of CHOICES, or a DataError naming the field."""
    if not isinstance(value, str) or value not in CHOICES:
        shown = repr(value) if isinstance(value, str) else type_name(value)
        raise where.fail(field_name, f"expected one of {', '.join(repr(c) for c in CHOICES)}, got {shown}")
    return value


def parse_identifier(obj: dict, key: str, where: Where) -> str | int:
    """A required id field: a non-empty string or an integer."""
    if key not in obj:
        raise where.fail(key, "missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise where.fail(key, f"expected a non-empty string or an integer, got {type_name(value)}")
    return value


def _judgment_row(obj: dict, where: Where, line: int) -> list[Judgment]:
    pair_id = parse_identifier(obj, "pair_id", where)
    annotator = obj.get("annotator")
    if "annotator" not in obj:
        raise where.fail("annotator", "missing")
    if not isinstance(annotator, str) or not annotator.strip():
        raise where.fail("annotator", f"expected a non-empty string, got {type_name(annotator)}")
    if "choice" in obj:
        choice: Hashable = parse_choice(obj["choice"], "choice", where)
    elif "label" in obj:
        choice = obj["label"]
        if isinstance(choice, bool) or not isinstance(choice, (str, int)):
            raise where.fail("label", f"expected a string or an integer, got {type_name(choice)}")
    else:
        raise where.fail("choice", "missing (give 'choice': 'a', 'b', 'tie' or 'both_bad', or a 'label')")
    return [Judgment(pair_id, annotator, choice, line)]


def _preference_row(obj: dict, where: Where, line: int) -> list[Judgment]:
    # each row is one pair, so a row without an id is still its own item
    pair_id = parse_identifier(obj, "id", where) if obj.get("id") is not None else f"line-{line}"
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        problem = "missing" if metadata is None else f"expected an object, got {type_name(metadata)}"
        raise where.fail("metadata", f"{problem} (a preference file needs metadata.votes to measure agreement)")
    votes = metadata.get("votes")
    if not isinstance(votes, dict):
        problem = "missing" if votes is None else f"expected an object {{annotator: choice}}, got {type_name(votes)}"
        raise where.fail("metadata.votes", problem)
    return [
        Judgment(pair_id, name, parse_choice(choice, f"metadata.votes.{name}", where), line)
        for name, choice in votes.items()
    ]


def _file_format(obj: Any) -> str | None:
    if isinstance(obj, dict):
        if "pair_id" in obj or ("annotator" in obj and ("choice" in obj or "label" in obj)):
            return "judgments"
        if "metadata" in obj or "chosen" in obj or "rejected" in obj:
            return "preference"
    return None


def load_judgments(path: str | Path) -> list[Judgment]:
    """Every annotator's label from a judgments.jsonl or a preference file with metadata.votes (told apart by the
    first row's keys). A bad row raises DataError naming the file, line and field; so does a second label from
    the same annotator on the same pair."""
    judgments: list[Judgment] = []
    file_format = None
    seen: dict[tuple, int] = {}
    for lineno, obj in read_jsonl(path):
        where = Where(str(path), lineno)
        if not isinstance(obj, dict):
            raise where.fail(None, f"expected a JSON object, got {type_name(obj)}")
        if file_format is None:
            file_format = _file_format(obj)
            if file_format is None:
                raise where.fail(
                    None,
                    "cannot tell the file format: expected judgments rows with pair_id, annotator and "
                    "choice, or preference pairs with metadata.votes",
                )
        rows = _judgment_row(obj, where, lineno) if file_format == "judgments" else _preference_row(obj, where, lineno)
        for judgment in rows:
            key = (judgment.pair_id, judgment.annotator)
            if key in seen:
                raise where.fail(
                    "annotator",
                    f"{judgment.annotator!r} already labelled pair {judgment.pair_id!r} at line "
                    f"{seen[key]}; keep one judgment per annotator and pair",
                )
            seen[key] = lineno
        judgments.extend(rows)
    if not judgments:
        raise DataError(f"{path}: no judgments")
    return judgments


def _sort_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, str(value))


def agreement_report(path: str | Path) -> dict[str, Any]:
    """Every agreement metric over a judgments or preference file, as a JSON-ready dict.

    raw_agreement is the mean percent agreement over annotator pairs sharing >= 1 item; cohen_kappa maps
    "a|b" to Cohen's kappa for pairs sharing >= 2 items; Fleiss' kappa uses the items with the modal number of
    raters (fleiss_items of them, fleiss_raters each); Krippendorff's alpha (nominal) uses every item. A metric
    that cannot be computed (no shared items, no item labelled twice) is None.
    """
    judgments = load_judgments(path)
    items = sorted({j.pair_id for j in judgments}, key=_sort_key)
    annotators = sorted({j.annotator for j in judgments})
    labels = sorted({j.choice for j in judgments}, key=_sort_key)
    by_annotator: dict[str, dict] = {name: {} for name in annotators}
    for j in judgments:
        by_annotator[j.annotator][j.pair_id] = j.choice
    table = {name: [by_annotator[name].get(item) for item in items] for name in annotators}

    shared_items: dict[str, int] = {}
    pair_agreement: dict[str, float] = {}
    pair_kappa: dict[str, float] = {}
    for first, second in combinations(annotators, 2):
        key = f"{first}|{second}"
        shared = sum(a is not None and b is not None for a, b in zip(table[first], table[second]))
        if shared == 0:
            continue
        shared_items[key] = shared
        pair_agreement[key] = percent_agreement(table[first], table[second])
        if shared >= 2:
            pair_kappa[key] = cohen_kappa(table[first], table[second])

    raters_per_item = Counter(j.pair_id for j in judgments)
    size_counts = Counter(n for n in raters_per_item.values() if n >= 2)
    fleiss = fleiss_items = fleiss_raters = None
    if size_counts:
        # the most common panel size; on a tie, the larger panel
        fleiss_raters = max(size_counts, key=lambda n: (size_counts[n], n))
        column = {label: i for i, label in enumerate(labels)}
        counts = np.zeros((len(items), len(labels)))
        row = {item: i for i, item in enumerate(items)}
        for j in judgments:
            counts[row[j.pair_id], column[j.choice]] += 1
        used = [row[item] for item in items if raters_per_item[item] == fleiss_raters]
        fleiss, fleiss_items = fleiss_kappa(counts[used]), len(used)

    alpha_items = sum(n >= 2 for n in raters_per_item.values())
    alpha = krippendorff_alpha([table[name] for name in annotators], "nominal") if alpha_items else None

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "file": str(path),
        "items": len(items),
        "annotators": len(annotators),
        "annotator_names": annotators,
        "judgments": len(judgments),
        "label_counts": {str(label): sum(j.choice == label for j in judgments) for label in labels},
        "raw_agreement": mean(list(pair_agreement.values())),
        "shared_items": shared_items,
        "percent_agreement": pair_agreement,
        "cohen_kappa": pair_kappa,
        "mean_cohen_kappa": mean(list(pair_kappa.values())),
        "fleiss_kappa": fleiss,
        "fleiss_items": fleiss_items,
        "fleiss_raters": fleiss_raters,
        "krippendorff_alpha": alpha,
        "krippendorff_items": alpha_items,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    labels = ", ".join(f"{label} {count}" for label, count in report["label_counts"].items())
    fleiss_note = (
        f"({report['fleiss_items']} of {report['items']} items, those with {report['fleiss_raters']} raters)"
        if report["fleiss_kappa"] is not None
        else "(no item has 2 or more raters)"
    )
    alpha_note = f"({report['krippendorff_items']} items with 2 or more labels)"
    lines = [
        f"agreement: {report['file']}",
        f"  items       {report['items']}",
        f"  annotators  {report['annotators']}",
        f"  judgments   {report['judgments']}",
        f"  labels      {labels}",
        "",
        f"  raw agreement (mean over annotator pairs)  {num(report['raw_agreement'])}",
        f"  Cohen's kappa (mean over annotator pairs)  {num(report['mean_cohen_kappa'])}",
        f"  Fleiss' kappa                              {num(report['fleiss_kappa'])}  {fleiss_note}",
        f"  Krippendorff's alpha (nominal)             {num(report['krippendorff_alpha'])}  {alpha_note}",
    ]
    if report["shared_items"]:
        names = {key: key.replace("|", " | ") for key in report["shared_items"]}
        width = max(len("annotator pair"), *(len(name) for name in names.values()))
        lines += ["", f"  {'annotator pair':<{width}}  {'shared':>6}  {'agreement':>9}  {'kappa':>6}"]
        for key, name in names.items():
            lines.append(
                f"  {name:<{width}}  {report['shared_items'][key]:>6}  {num(report['percent_agreement'][key]):>9}  "
                f"{num(report['cohen_kappa'].get(key)):>6}"
            )
    return "\n".join(lines)
