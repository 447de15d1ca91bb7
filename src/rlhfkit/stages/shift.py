"""Stage `shift` (a flywheel round): run the configured distribution-shift checks on this round's labels; writes
shift.json with every verdict, and `shifted`: whether any check says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ..atomic import write_json
from ..config import Strict, save_config
from ..console import console
from ..data.records import load_records
from ..evaluate.shift import ShiftInputs, load_check


class ShiftCheck(Strict):
    check: str = Field(..., description="reward_accuracy, embedding, or module:function(inputs, **options)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the check (max_drop, ...)")


class ShiftConfig(Strict):
    """Distribution-shift checks of one round's labels against what the production reward model learned."""

    newest: str = Field(..., description="this round's held-out labelled pairs")
    older: str | None = Field(None, description="held-out pairs of the earlier rounds in the window")
    reference: str | None = Field(None, description="the pairs the production reward model was trained on")
    reward_model: str | None = Field(None, description="the production reward model (null in the first round)")
    checks: list[ShiftCheck] = Field(
        default_factory=lambda: [ShiftCheck(check="reward_accuracy")], description="the checks, in order"
    )
    output_dir: str = Field("runs/shift", description="writes shift.json")


def pairs_of(path: str | None) -> list:
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return []
    return load_records(path, "preference")


def run(config: ShiftConfig) -> dict:
    out = Path(config.output_dir)
    inputs = ShiftInputs(
        newest=pairs_of(config.newest),
        older=pairs_of(config.older),
        reference=pairs_of(config.reference),
        reward_model=config.reward_model,
    )
    save_config(config, out)
    verdicts = [load_check(c.check)(inputs, **c.options).to_dict() for c in config.checks]
    shifted = any(v["shifted"] for v in verdicts)
    result = {"stage": "shift", "shifted": shifted, "checks": verdicts}
    write_json(out / "shift.json", result)
    for v in verdicts:
        word = {True: "SHIFT", False: "no shift", None: "n/a"}[v["shifted"]]
        console.print(f"shift check {v['check']}: {word}: {v['detail']}")
    return result
