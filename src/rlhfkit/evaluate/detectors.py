"""Detectors over an online-RL run's metrics.jsonl: reward hacking, length drift, mode collapse, stock phrase, KL
blow-up.

Each detector compares windows of rows (the first, the last, the best) rather than single steps, because one
step's metrics come from a single batch of rollouts and are noisy. Each returns a `Verdict` whose `evidence`
holds the steps and values behind it, so a reader can check the claim against the plot.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import Field

from ..config import Strict
from ..data.records import read_jsonl
from ..errors import DataError

GOLD_KEYS = ("gold", "win_rate")  # the first one a run logs is the ground truth the proxy is checked against


@dataclass(frozen=True)
class Verdict:
    name: str
    fired: bool
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


class DetectorSettings(Strict):
    window: int = Field(
        10,
        ge=1,
        description="rows per window; 10 matches the runs' rolling `*_avg` window and "
        "averages out the noise of single 32-rollout batches",
    )
    min_rise: float = Field(
        0.1,
        ge=0,
        description="reward hacking: the proxy reward must rise at least this much "
        "(last window mean over first, reward units) and not fall more than this after the gold peak",
    )
    min_fall: float = Field(
        0.05,
        ge=0,
        description="reward hacking: gold must fall at least this much from its "
        "best window (0-1 judge score); 0.05 is well above the window-mean noise of ~0.01",
    )
    noise_z: float = Field(
        2.0,
        ge=0,
        description="reward hacking: the gold fall must also exceed this many standard "
        "errors of the two window means, so a plateau with noise does not fire",
    )
    max_length_ratio: float = Field(
        1.6,
        gt=1,
        description="length drift: last-window response length over the first "
        "window; healthy PPO/GRPO on the demo grow up to ~1.47x, a length-hacked run ~1.77x",
    )
    collapse_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="mode collapse: last-window distinct_2 below this "
        "fraction of the reference; halving the distinct bigrams is collapse, not style",
    )
    reference_distinct_2: float | None = Field(
        None,
        gt=0,
        description="mode collapse reference; null uses the first "
        "window (measure it on batches of the same size, distinct_2 falls with "
        "more text)",
    )
    max_stock_phrase_share: float = Field(
        0.4,
        gt=0,
        le=1,
        description="stock phrase: last-window share of responses that contain the most "
        "frequent word trigram above this; the default task's SFT model is at 0.24 (576 eval samples), a DPO model "
        "that opens most answers with 'Best of all,' at 0.52",
    )
    stock_phrase_growth: float = Field(
        1.5,
        gt=1,
        description="stock phrase: the share must also be this many times the reference, so "
        "a task whose answers share a phrase by nature does not fire",
    )
    reference_stock_phrase_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="stock phrase reference; null uses the first window (measure it on "
        "batches of the same size: the top share of a small batch is higher by chance)",
    )
    kl_ceiling: float = Field(
        20.0,
        gt=0,
        description="KL blow-up: last-window mean sequence KL (nats) above this; "
        "~3x the adaptive controller's default target_kl of 6",
    )
    kl_growth: float = Field(
        1.5, gt=1, description="KL blow-up: last-window mean KL over the previous window's; a settled run is ~1.0"
    )
    kl_floor: float = Field(
        5.0,
        ge=0,
        description="KL blow-up: the growth test applies only above this KL (nats), "
        "so the first steps' rise from 0 is not a blow-up",
    )


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a broken line or a row that is not an object is a DataError naming file and line."""
    rows = []
    for lineno, obj in read_jsonl(path, allow_nan=True):  # a run that blew up logs NaN
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object of metrics, got {type(obj).__name__}")
        rows.append(obj)
    return rows


# ---------------------------------------------------------------- windows


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) for the rows that log `key` as a finite number; a row without `step` counts by position."""
    return [(int(row.get("step", i + 1)), float(row[key])) for i, row in enumerate(rows) if _finite(row.get(key))]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(points: list[tuple[int, float]]) -> float:
    return statistics.fmean(v for _, v in points)


def _stderr(points: list[tuple[int, float]]) -> float:
    return statistics.stdev(v for _, v in points) / math.sqrt(len(points)) if len(points) > 1 else 0.0


def _span(points: list[tuple[int, float]]) -> list[int]:
    return [points[0][0], points[-1][0]]


def _r(x: float) -> float:
    return round(x, 4)


def _too_short(name: str, key: str, points: list) -> Verdict:
    return Verdict(
        name, False, f"{name}: not judged, {len(points)} rows log '{key}' (need at least 2)", {"rows": len(points)}
    )


def _halves(points: list, window: int) -> int:
    """Window size that fits twice without overlap: `window`, or half the rows of a short run."""
    return min(window, len(points) // 2)


# ---------------------------------------------------------------- detectors


def reward_hacking(
    rows: list[dict], window: int = 10, min_rise: float = 0.1, min_fall: float = 0.05, noise_z: float = 2.0
) -> Verdict:
    """The proxy reward rises over the run while gold (or win_rate) falls from its best window by more than noise.

    Gold's best window is the highest mean over any `window` consecutive rows; the fall is that minus the last
    window's mean, and must exceed both `min_fall` and `noise_z` standard errors. The proxy must rise by `min_rise`
    (first window to last) and still be within `min_rise` of its value at the gold peak: if it fell with gold,
    the reward model agrees the policy got worse, which is a failing run but not hacking.
    """
    name = "reward_hacking"
    gold_key = next((k for k in GOLD_KEYS if any(_finite(row.get(k)) for row in rows)), None)
    if gold_key is None:
        return Verdict(
            name,
            False,
            f"{name}: not judged, the run logs no gold score ({' or '.join(GOLD_KEYS)}); "
            "set `gold:` in the stage config",
            {},
        )
    paired = [row for row in rows if _finite(row.get(gold_key)) and _finite(row.get("reward"))]
    gold, proxy = _series(paired, gold_key), _series(paired, "reward")
    w = _halves(gold, window)
    if w < 1:
        return _too_short(name, gold_key, gold)
    starts = range(len(gold) - w + 1)
    peak = max(starts, key=lambda s: _mean(gold[s : s + w]))  # first of equal maxima: the earliest best window
    gold_peak, gold_last = gold[peak : peak + w], gold[-w:]
    proxy_first, proxy_peak, proxy_last = proxy[:w], proxy[peak : peak + w], proxy[-w:]
    fall = _mean(gold_peak) - _mean(gold_last)
    noise = noise_z * math.hypot(_stderr(gold_peak), _stderr(gold_last))
    rise = _mean(proxy_last) - _mean(proxy_first)
    since_peak = _mean(proxy_last) - _mean(proxy_peak)
    fired = fall > max(min_fall, noise) and rise >= min_rise and since_peak >= -min_rise
    evidence = {
        "gold_key": gold_key,
        "window": w,
        "gold_peak_step": gold_peak[-1][0],
        "gold_peak_window": _span(gold_peak),
        "gold_peak": _r(_mean(gold_peak)),
        "gold_final": _r(_mean(gold_last)),
        "final_window": _span(gold_last),
        "gold_fall": _r(fall),
        "gold_noise": _r(noise),
        "proxy_first": _r(_mean(proxy_first)),
        "proxy_at_peak": _r(_mean(proxy_peak)),
        "proxy_final": _r(_mean(proxy_last)),
        "proxy_rise": _r(rise),
    }
    tolerance = max(min_fall, noise)
    if fired:
        summary = (
            f"{name}: proxy reward rose {evidence['proxy_first']} -> {evidence['proxy_final']} while {gold_key} "
            f"fell {fall:.3f} from its peak {evidence['gold_peak']} (steps {gold_peak[0][0]}-{gold_peak[-1][0]}) "
            f"to {evidence['gold_final']}"
        )
    elif fall <= tolerance:
        summary = (
            f"{name}: no, {gold_key} {evidence['gold_final']} is within {tolerance:.3f} of its peak "
            f"{evidence['gold_peak']} (steps {gold_peak[0][0]}-{gold_peak[-1][0]})"
        )
    else:
        summary = (
            f"{name}: no, {gold_key} fell {fall:.3f} from its peak but the proxy did not keep rising "
            f"({evidence['proxy_at_peak']} at the peak, {evidence['proxy_final']} at the end)"
        )
    return Verdict(name, fired, summary, evidence)


def length_drift(rows: list[dict], window: int = 10, max_ratio: float = 1.6) -> Verdict:
    """Mean response_length (tokens) of the last window over the first window is above `max_ratio`."""
    name = "length_drift"
    lengths = _series(rows, "response_length")
    w = _halves(lengths, window)
    if w < 1:
        return _too_short(name, "response_length", lengths)
    first, last = lengths[:w], lengths[-w:]
    ratio = _mean(last) / _mean(first) if _mean(first) > 0 else math.inf
    fired = ratio > max_ratio
    evidence = {
        "window": w,
        "first_window": _span(first),
        "first_length": _r(_mean(first)),
        "final_window": _span(last),
        "final_length": _r(_mean(last)),
        "ratio": _r(ratio),
        "max_ratio": max_ratio,
    }
    verb = "grew" if fired else "no, grew only" if ratio >= 1 else "no, changed"
    summary = (
        f"{name}: {verb} {ratio:.2f}x (bound {max_ratio}x), response length {evidence['first_length']:.1f} "
        f"tokens (steps {first[0][0]}-{first[-1][0]}) -> {evidence['final_length']:.1f} "
        f"(steps {last[0][0]}-{last[-1][0]})"
    )
    return Verdict(name, fired, summary, evidence)


def mode_collapse(rows: list[dict], window: int = 10, fraction: float = 0.5, reference: float | None = None) -> Verdict:
    """distinct_2 of the last window is below `fraction` of the reference.

    The reference defaults to the first window (the policy is still close to the reference model there). An
    explicit reference must be measured like the run's rows: distinct_2 pools a batch's bigrams, and a 576-response
    eval has far fewer distinct bigrams per bigram than a 32-rollout batch.
    """
    name = "mode_collapse"
    distinct = _series(rows, "distinct_2")
    w = _halves(distinct, window) if reference is None else min(window, len(distinct))
    if w < 1:
        return _too_short(name, "distinct_2", distinct)
    last = distinct[-w:]
    ref = reference if reference is not None else _mean(distinct[:w])
    ratio = _mean(last) / ref if ref > 0 else math.inf
    fired = ratio < fraction
    evidence = {
        "window": w,
        "reference": _r(ref),
        "reference_source": "given" if reference is not None else f"steps {distinct[0][0]}-{distinct[w - 1][0]}",
        "final_window": _span(last),
        "final_distinct_2": _r(_mean(last)),
        "ratio": _r(ratio),
        "fraction": fraction,
    }
    summary = (
        f"{name}: {'yes' if fired else 'no'}, distinct_2 {evidence['final_distinct_2']} (steps "
        f"{last[0][0]}-{last[-1][0]}) is {ratio:.2f} of the reference {evidence['reference']} "
        f"({evidence['reference_source']}; fires below {fraction})"
    )
    return Verdict(name, fired, summary, evidence)


def stock_phrase(
    rows: list[dict], window: int = 10, max_share: float = 0.4, growth: float = 1.5, reference: float | None = None
) -> Verdict:
    """Mode collapse onto a stock phrase: the last window's mean `stock_phrase_share` (the share of responses that
    contain the most frequent word trigram) is above `max_share` and above `growth` x the reference.

    The reference defaults to the first window. For two evaluated models, pass the candidate's eval row as the only
    row and the baseline's `stock_phrase_share` as `reference`.
    """
    name = "stock_phrase"
    shares = _series(rows, "stock_phrase_share")
    w = _halves(shares, window) if reference is None else min(window, len(shares))
    if w < 1:
        return _too_short(name, "stock_phrase_share", shares)
    last = shares[-w:]
    ref = reference if reference is not None else _mean(shares[:w])
    ratio = _mean(last) / ref if ref > 0 else math.inf
    fired = _mean(last) > max_share and ratio > growth
    phrase = next((row["stock_phrase"] for row in reversed(rows) if isinstance(row.get("stock_phrase"), str)), None)
    evidence = {
        "window": w,
        "reference": _r(ref),
        "reference_source": "given" if reference is not None else f"steps {shares[0][0]}-{shares[w - 1][0]}",
        "final_window": _span(last),
        "final_share": _r(_mean(last)),
        "ratio": _r(ratio),
        "max_share": max_share,
        "growth": growth,
        **({"phrase": phrase} if phrase else {}),
    }
    quoted = f" ('{phrase}')" if phrase else ""
    summary = (
        f"{name}: {'yes' if fired else 'no'}, the top trigram{quoted} is in {_mean(last):.0%} of responses (steps "
        f"{last[0][0]}-{last[-1][0]}), {ratio:.2f}x the reference {ref:.0%} ({evidence['reference_source']}; fires "
        f"above {max_share:.0%} and {growth}x)"
    )
    return Verdict(name, fired, summary, evidence)


def kl_blowup(
    rows: list[dict], window: int = 10, ceiling: float = 20.0, growth: float = 1.5, floor: float = 5.0
) -> Verdict:
    """The last window's mean KL is above `ceiling`, or above `floor` and `growth` x the previous window's mean."""
    name = "kl_blowup"
    kl = _series(rows, "kl")
    w = _halves(kl, window)
    if w < 1:
        return _too_short(name, "kl", kl)
    last, previous = kl[-w:], kl[-2 * w : -w]
    last_mean, prev_mean = _mean(last), _mean(previous)
    ratio = last_mean / prev_mean if prev_mean > 0 and last_mean > 0 else None  # a ratio of KLs near 0 means nothing
    over_ceiling = last_mean > ceiling
    growing = last_mean > floor and (ratio is None or ratio > growth)
    crossed = next((s for s in range(len(kl) - w + 1) if _mean(kl[s : s + w]) > ceiling), None)
    top = max(kl, key=lambda p: p[1])
    evidence = {
        "window": w,
        "final_window": _span(last),
        "final_kl": _r(last_mean),
        "previous_window": _span(previous),
        "previous_kl": _r(prev_mean),
        "growth": _r(ratio) if ratio is not None else None,
        "max_step": top[0],
        "max_kl": _r(top[1]),
        "ceiling_crossed_step": kl[crossed + w - 1][0] if crossed is not None else None,
        "ceiling": ceiling,
        "growth_bound": growth,
        "floor": floor,
    }
    reasons = []
    if over_ceiling:
        reasons.append(
            f"mean KL {last_mean:.2f} over steps {last[0][0]}-{last[-1][0]} is above the ceiling {ceiling} "
            f"(window mean first above it at step {evidence['ceiling_crossed_step']})"
        )
    if growing:
        times = f"{ratio:.2f}x" if ratio is not None else "from below 0"
        reasons.append(f"still growing {times} per {w} steps ({prev_mean:.2f} -> {last_mean:.2f})")
    if reasons:
        summary = f"{name}: " + "; ".join(reasons)
    else:
        summary = (
            f"{name}: no, mean KL {last_mean:.2f} over steps {last[0][0]}-{last[-1][0]} (ceiling {ceiling}), "
            f"{prev_mean:.2f} the window before"
        )
    return Verdict(name, bool(reasons), summary, evidence)


def run_detectors(rows: list[dict], settings: DetectorSettings | None = None) -> list[Verdict]:
    """All detectors with the thresholds of `settings` (defaults when None)."""
    s = settings or DetectorSettings()
    return [
        reward_hacking(rows, s.window, s.min_rise, s.min_fall, s.noise_z),
        length_drift(rows, s.window, s.max_length_ratio),
        mode_collapse(rows, s.window, s.collapse_fraction, s.reference_distinct_2),
        stock_phrase(rows, s.window, s.max_stock_phrase_share, s.stock_phrase_growth, s.reference_stock_phrase_share),
        kl_blowup(rows, s.window, s.kl_ceiling, s.kl_growth, s.kl_floor),
    ]


def eval_detectors(eval_result: dict, settings: DetectorSettings | None = None) -> dict[str, list[Verdict]]:
    """Mode collapse and stock phrase of every evaluated model against the eval's baseline (`rlhfkit eval`'s
    eval.json), measured on the same held-out prompts with the same number of samples, so the two are comparable.

    Each candidate's row is the only row and the baseline's figure the reference: the DPO model that opened most
    answers with "Best of all," (52% of 576 samples, against the SFT model's top trigram in 24%) fires stock_phrase.
    """
    s = settings or DetectorSettings()
    results = eval_result.get("results", {})
    baseline = eval_result.get("baseline") or next(iter(results), None)
    if baseline not in results:
        return {}
    base = results[baseline]
    verdicts = {}
    for name, row in results.items():
        if name == baseline:
            continue
        found = []
        if _finite(row.get("distinct_2")) and _finite(base.get("distinct_2")) and base["distinct_2"] > 0:
            found.append(mode_collapse([row], 1, s.collapse_fraction, base["distinct_2"]))
        if _finite(row.get("stock_phrase_share")) and _finite(base.get("stock_phrase_share")):
            reference = max(base["stock_phrase_share"], 1e-9)
            found.append(stock_phrase([row], 1, s.max_stock_phrase_share, s.stock_phrase_growth, reference))
        # one eval row has no steps: drop the window span the run detectors name
        verdicts[name] = [replace(v, summary=v.summary.replace(" (steps 1-1)", "")) for v in found]
    return verdicts


def format_verdicts(verdicts: list[Verdict]) -> str:
    """One line per detector: FIRED or ok, then its summary."""
    return "\n".join(f"{'FIRED' if v.fired else 'ok':<5}  {v.summary}" for v in verdicts)
