"""Acceptance gate: an envelope of thresholds on a model's evaluation metrics (one `results` entry of eval.json).

Thresholds are written as a list (`{metric: mean_gold, op: ">=", value: 0.4}`), as a mapping
(`{mean_gold: ">= 0.4", distinct_2: ">= 0.08"}`) or as strings (`"mean_gold >= 0.4"`). A metric the results do not
have fails its row: a gate that cannot be checked does not pass.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import Strict
from ..errors import ConfigError

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(r"^\s*(>=|<=|>|<)\s*([^<>=\s]\S*)\s*$")
_THRESHOLD = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|>|<)\s*([^<>=\s]\S*)\s*$")


class Threshold(Strict):
    metric: str = Field(
        min_length=1,
        description="a key of the model's eval results: mean_gold, win_rate, kl, unsafe_rate, distinct_2, "
        "mean_length, ...",
    )
    op: Literal[">=", "<=", ">", "<"] = Field(description="comparison, measured OP value")
    value: float = Field(description="the bound")

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def _number(text: str, entry: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"gate threshold {entry}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"gate threshold {entry}: the bound must be a finite number, got '{text}'")
    return value


def parse_threshold(text: str) -> Threshold:
    """'mean_gold >= 0.4' -> Threshold; anything else is a ConfigError quoting the text."""
    match = _THRESHOLD.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(
            f"gate threshold {text!r}: expected 'METRIC OP VALUE' with OP one of >= <= > <, e.g. 'mean_gold >= 0.4'"
        )
    metric, op, value = match.groups()
    return Threshold(metric=metric, op=op, value=_number(value, repr(text)))


def parse_thresholds(spec: dict[str, Any]) -> list[Threshold]:
    """{'mean_gold': '>= 0.4'} -> [Threshold]; a bad entry is a ConfigError naming its metric and text."""
    thresholds = []
    for metric, condition in spec.items():
        entry = f"'{metric}: {condition}'"
        match = _CONDITION.match(condition) if isinstance(condition, str) else None
        if match is None:
            raise ConfigError(
                f"gate threshold {entry}: expected a condition like '>= 0.4' (OP VALUE, OP one of >= <= > <)"
            )
        op, value = match.groups()
        thresholds.append(Threshold(metric=str(metric), op=op, value=_number(value, entry)))
    return thresholds


class GateSettings(Strict):
    thresholds: list[Threshold] = Field(
        min_length=1,
        description="every threshold must pass; a list of "
        "{metric, op, value} or 'metric op value' strings, or a mapping metric: 'op value'",
    )

    @field_validator("thresholds", mode="before")
    @classmethod
    def _parse_short_forms(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return parse_thresholds(value)
        if isinstance(value, list):
            return [parse_threshold(item) if isinstance(item, str) else item for item in value]
        return value


@dataclass(frozen=True)
class GateRow:
    metric: str
    op: str
    value: float
    measured: float | None
    passed: bool
    reason: str | None = None  # why a row failed without a comparison (missing, not a number)


@dataclass(frozen=True)
class GateResult:
    rows: list[GateRow]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rows": [asdict(row) for row in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        return cls(rows=[GateRow(**row) for row in data["rows"]], passed=bool(data["passed"]))


def evaluate_gate(metrics: dict[str, Any], settings: GateSettings) -> GateResult:
    """Check each threshold against `metrics`; the gate passes when every row passes."""
    rows = []
    for t in settings.thresholds:
        measured = metrics.get(t.metric)
        if t.metric not in metrics:
            have = ", ".join(sorted(k for k, v in metrics.items() if _is_number(v))) or "none"
            rows.append(GateRow(t.metric, t.op, t.value, None, False, f"missing from the results; they have {have}"))
        elif not _is_number(measured):
            rows.append(GateRow(t.metric, t.op, t.value, None, False, f"not a number ({measured!r})"))
        elif not math.isfinite(measured):
            rows.append(GateRow(t.metric, t.op, t.value, None, False, f"measured {measured}"))
        else:
            measured = float(measured)
            rows.append(GateRow(t.metric, t.op, t.value, measured, OPS[t.op](measured, t.value)))
    return GateResult(rows=rows, passed=all(row.passed for row in rows))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_gate(result: GateResult) -> str:
    """Plain-text table: metric, op, bound, measured, PASS/FAIL (with the reason when nothing was measured)."""
    table = [("metric", "op", "bound", "measured", "result")]
    for row in result.rows:
        measured = f"{row.measured:.4g}" if row.measured is not None else "-"
        verdict = "PASS" if row.passed else f"FAIL ({row.reason})" if row.reason else "FAIL"
        table.append((row.metric, row.op, f"{row.value:g}", measured, verdict))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in table]
    passed = sum(row.passed for row in result.rows)
    lines.append(f"gate: {'PASS' if result.passed else 'FAIL'} ({passed}/{len(result.rows)} thresholds pass)")
    return "\n".join(lines)
