"""Stage `traffic` (a flywheel round's first step): the prompts and live feedback that reached the gateway in a time
window, plus a sample of the base prompt set.

Writes prompts.jsonl (live prompts first, deduplicated, then base prompts; metadata.source says which),
feedback_pairs.jsonl (choices, and thumbs up against thumbs down on one prompt), feedback_unpaired.jsonl (the other
thumbs, as {prompt, completion, label}) and summary.json.
"""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

from pydantic import Field

from ..atomic import write_json
from ..config import Strict, save_config
from ..console import console
from ..data.records import PromptRecord, load_records, write_jsonl
from ..errors import ConfigError
from ..feedback.live import entry_prompt, labels_from_window, prompt_key
from ..resolve import resolve_prompts


class TrafficConfig(Strict):
    """A round's prompts and live feedback: the gateway's audit log in [since, until) plus base prompts."""

    db: str | None = Field(None, description="the gateway's store (SQLite path or database URL); null: no live traffic")
    since: str | None = Field(None, description="window start, ISO 8601 (null: from the first entry)")
    until: str = Field(..., description="window end (exclusive), ISO 8601; fixed when the round starts")
    routes: list[str] | None = Field(None, description="only entries answered by these routes (null: every route)")
    base_prompts: str = Field("default", description="base prompt JSONL, or 'default' for the embedded prompts")
    base_categories: list[str] | None = Field(
        None, description="keep only base prompts of these categories (null: all)"
    )
    num_prompts: int = Field(256, gt=0, description="prompts written in all (live first, then base)")
    live_share: float = Field(
        0.5, ge=0, le=1, description="most of num_prompts taken from live traffic (a sample when there are more)"
    )
    seed: int = Field(0, description="seed of the samples")
    output_dir: str = Field("runs/traffic", description="writes prompts.jsonl, feedback_pairs.jsonl, summary.json")


def moment(text: str | None, key: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{key}: '{text}' is not an ISO 8601 time (e.g. 2026-12-01T10:00:00+00:00)") from None


def run(config: TrafficConfig) -> dict:
    from ..serve.store import window

    out = Path(config.output_dir)
    rng = random.Random(config.seed)
    rows = []
    if config.db is not None:
        since = moment(config.since, "since") or datetime.fromtimestamp(0).astimezone()
        rows = window(config.db, since, moment(config.until, "until"))
        if config.routes is not None:
            rows = [row for row in rows if row["route"] in config.routes]
    live = LiveUnique(rows)
    wanted_live = int(round(config.num_prompts * config.live_share))
    live_prompts = live.prompts if len(live.prompts) <= wanted_live else rng.sample(live.prompts, wanted_live)
    base = load_records(resolve_prompts(config.base_prompts), "prompt")
    if config.base_categories is not None:
        base = [r for r in base if r.category in config.base_categories]
    seen = {prompt_key(p.prompt) for p in live_prompts}
    base = [r for r in base if prompt_key(r.prompt) not in seen]
    base_prompts = rng.sample(base, min(len(base), config.num_prompts - len(live_prompts)))
    records = [
        PromptRecord(prompt=p.prompt, id=f"live-{i}", category=p.category, metadata={"source": "live"})
        for i, p in enumerate(live_prompts)
    ] + [
        PromptRecord(prompt=r.prompt, id=f"base-{r.id}", category=r.category, metadata={"source": "base"})
        for r in base_prompts
    ]
    labels = labels_from_window(rows)
    save_config(config, out)
    write_jsonl(out / "prompts.jsonl", records)
    write_jsonl(out / "feedback_pairs.jsonl", labels.pairs)
    write_jsonl(out / "feedback_unpaired.jsonl", labels.unpaired)
    summary = {
        "stage": "traffic",
        "entries": len(rows),
        "live_prompts": len(live.prompts),
        "live_prompts_used": len(live_prompts),
        "base_prompts_used": len(base_prompts),
        "prompts": len(records),
        "feedback_pairs": len(labels.pairs),
        "feedback": labels.counts,
        "since": config.since,
        "until": config.until,
    }
    write_json(out / "summary.json", summary)
    console.print(
        f"traffic: {len(rows)} gateway entries in the window, {len(live.prompts)} distinct prompts "
        f"({len(live_prompts)} used) + {len(base_prompts)} base prompts; {len(labels.pairs)} pairs from live feedback "
        f"({labels.counts.get('choices', 0)} choices, {labels.counts.get('thumbs_pairs', 0)} from thumbs)"
    )
    return summary


class LiveUnique:
    """The distinct prompts of a window's answered entries, in the order they first arrived."""

    def __init__(self, rows: list[dict]):
        found: dict[str, PromptRecord] = {}
        for row in rows:
            if row.get("status") != "ok":
                continue
            prompt = entry_prompt(row)
            found.setdefault(prompt_key(prompt), PromptRecord(prompt=prompt))
        self.prompts = list(found.values())
