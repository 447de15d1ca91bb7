"""Live feedback from the gateway turned into labels: what `rlhfkit.serve.store.window` returns -> preference pairs
(side-by-side choices, and thumbs up against thumbs down on the same prompt) plus the thumbs left unpaired (KTO-style
rows `{prompt, completion, label}`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..data.records import PreferencePair


@dataclass
class LiveLabels:
    pairs: list[PreferencePair] = field(default_factory=list)
    unpaired: list[dict[str, Any]] = field(default_factory=list)  # {prompt, completion, label, id}
    counts: dict[str, int] = field(default_factory=dict)


def entry_prompt(entry: dict[str, Any]) -> str | list[dict[str, str]]:
    """The prompt of a logged request as a record's prompt: a completion's text, a one-message chat's content, or
    the chat's messages."""
    prompt = entry["prompt"]
    if isinstance(prompt, list):
        users = [m for m in prompt if m.get("role") == "user"]
        if len(prompt) == 1 and users:
            return content_text(users[0].get("content"))
        return [{"role": m["role"], "content": content_text(m.get("content"))} for m in prompt]
    return prompt


def content_text(content: Any) -> str:
    if isinstance(content, list):  # text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def prompt_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)


def labels_from_window(rows: list[dict[str, Any]]) -> LiveLabels:
    """Pairs and unpaired thumbs from a window of the audit log; only answered (status ok) entries count. A choice
    is a pair when both of its responses are in the window; an entry's latest thumbs rating is the one that counts."""
    by_id = {row["id"]: row for row in rows if row.get("status") == "ok" and row.get("response", "").strip()}
    out = LiveLabels()
    seen_choices: set[tuple[str, str]] = set()
    rating: dict[str, str] = {}
    for row in by_id.values():
        for item in row.get("feedback", []):
            if item["kind"] == "thumbs" and row["id"]:
                rating[row["id"]] = item["rating"]  # oldest first: the last one wins
            elif item["kind"] == "choice":
                key = (item["chosen"], item["rejected"])
                if key in seen_choices:
                    continue
                seen_choices.add(key)
                chosen, rejected = by_id.get(item["chosen"]), by_id.get(item["rejected"])
                if chosen is None or rejected is None or chosen["response"] == rejected["response"]:
                    out.counts["choices_left_out"] = out.counts.get("choices_left_out", 0) + 1
                    continue
                out.pairs.append(
                    PreferencePair(
                        prompt=entry_prompt(chosen),
                        chosen=chosen["response"],
                        rejected=rejected["response"],
                        id=f"choice-{chosen['id']}-{rejected['id']}",
                        annotator=f"user:{chosen.get('key') or 'anonymous'}",
                        metadata={"source": "choice", "entries": [chosen["id"], rejected["id"]]},
                    )
                )
    out.counts["choices"] = len(out.pairs)
    # thumbs: an up and a down answer to the same prompt make a pair; the rest stay unpaired
    ups: dict[str, list[dict]] = defaultdict(list)
    downs: dict[str, list[dict]] = defaultdict(list)
    for entry_id, value in rating.items():
        row = by_id[entry_id]
        (ups if value == "up" else downs)[prompt_key(entry_prompt(row))].append(row)
    thumbs_pairs = 0
    for key in sorted(set(ups) | set(downs)):
        good, bad = ups.get(key, []), downs.get(key, [])
        for up, down in zip(good, bad):
            if up["response"] == down["response"]:
                continue
            thumbs_pairs += 1
            out.pairs.append(
                PreferencePair(
                    prompt=entry_prompt(up),
                    chosen=up["response"],
                    rejected=down["response"],
                    id=f"thumbs-{up['id']}-{down['id']}",
                    annotator=f"user:{up.get('key') or 'anonymous'}",
                    metadata={"source": "thumbs", "entries": [up["id"], down["id"]]},
                )
            )
        paired = min(len(good), len(bad))
        for row, label in [(r, True) for r in good[paired:]] + [(r, False) for r in bad[paired:]]:
            out.unpaired.append(
                {"id": row["id"], "prompt": entry_prompt(row), "completion": row["response"], "label": label}
            )
    out.counts.update(
        thumbs_up=sum(v == "up" for v in rating.values()),
        thumbs_down=sum(v == "down" for v in rating.values()),
        thumbs_pairs=thumbs_pairs,
        unpaired=len(out.unpaired),
    )
    return out
