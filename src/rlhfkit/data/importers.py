"""Import preference data published in other layouts as PreferencePair records, and thumbs up/down as
UnpairedExample records (KTO).

Formats:
- trl:           the TRL preference layout: prompt/chosen/rejected as text or chat messages, or chosen/rejected
                 as whole conversations with an implicit prompt (exactly what `parse_record(..., "preference")`
                 accepts). Any malformed row fails the whole import.
- hh:            Anthropic HH-RLHF: {"chosen": TRANSCRIPT, "rejected": TRANSCRIPT}, turns starting with
                 "\\n\\nHuman: " and "\\n\\nAssistant: ". The prompt is the longest common prefix of the two
                 transcripts cut back to end right after its last "\\n\\nAssistant:"; each response is the rest
                 of its transcript with one leading space removed.
- ultrafeedback: the binarized UltraFeedback layout: prompt (text), chosen/rejected (messages, user then
                 assistant, or text), score_chosen/score_rejected (numbers). margin = score_chosen - score_rejected;
                 a pair scored the wrong way round is swapped; a tie is skipped. Or the raw openbmb/UltraFeedback
                 layout: instruction (text), completions (each a response with fine-grained annotations of
                 helpfulness, honesty, instruction_following and truthfulness, each with a Rating 1-5 or N/A, and
                 fine-grained_score / overall_score): chosen is the completion scored highest, rejected the one
                 scored lowest, and `labels` compares their Rating per aspect (N/A: no label for that aspect).
- trl-unpaired:  TRL's unpaired preference layout (KTO): prompt/completion as text or chat messages, label
                 true|false (exactly what `parse_record(..., "unpaired")` accepts).
- pairs-unpaired: preference pairs (the rlhfkit/TRL layout) as thumbs: each pair becomes its chosen response
                 labelled true and its rejected one labelled false (ids `ID:chosen`, `ID:rejected`).

Structural problems (missing field, wrong type, not a transcript) are a DataError naming file, line and field,
and nothing is imported. Content problems in real data (an empty reply, two identical replies, a tie) skip the
row and are listed in the ImportReport with their line numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .records import (
    PreferencePair,
    Record,
    UniqueIds,
    UnpairedExample,
    Where,
    parse_messages,
    parse_prompt,
    parse_record,
    read_rows,
    type_name,
)

FORMATS = ("trl", "hh", "ultrafeedback")  # to preference pairs
UNPAIRED_FORMATS = ("trl-unpaired", "pairs-unpaired")  # to unpaired thumbs up/down

HH_ASSISTANT = "\n\nAssistant:"
_MAX_LINES_SHOWN = 10


@dataclass
class ImportReport:
    source: str
    format: str
    read: int = 0
    imported: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    swapped: list[int] = field(default_factory=list)  # lines whose chosen/rejected were swapped (ultrafeedback)

    def as_dict(self) -> dict[str, Any]:
        """Everything, every skipped and swapped line included: what `data import` writes beside its output."""
        return {
            "source": self.source,
            "format": self.format,
            "read": self.read,
            "imported": self.imported,
            "skipped": [{"line": line, "reason": reason} for line, reason in self.skipped],
            "swapped": self.swapped,
        }

    def summary(self) -> str:
        """One line: what was imported, and which lines were skipped or swapped and why (at most
        _MAX_LINES_SHOWN per reason; as_dict has them all)."""
        text = f"imported {self.imported} of {self.read} records from {self.source}"
        if self.imported > self.read:  # pairs-unpaired: two records a row
            text = f"imported {self.imported} records from the {self.read} rows of {self.source}"
        notes = []
        if self.skipped:
            by_reason: dict[str, list[int]] = {}
            for line, reason in self.skipped:
                by_reason.setdefault(reason, []).append(line)
            parts = [f"{reason}: {_lines(lines)}" for reason, lines in by_reason.items()]
            notes.append(f"{len(self.skipped)} skipped: " + "; ".join(parts))
        if self.swapped:
            notes.append(f"{len(self.swapped)} swapped because score_chosen < score_rejected: {_lines(self.swapped)}")
        if notes:
            text += " (" + "; ".join(notes) + ")"
        return text


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:_MAX_LINES_SHOWN])
    word = "line" if len(lines) == 1 else "lines"
    more = f" and {len(lines) - _MAX_LINES_SHOWN} more" if len(lines) > _MAX_LINES_SHOWN else ""
    return f"{word} {shown}{more}"


def _content_problem(chosen: str, rejected: str) -> str | None:
    """Why a pair cannot be used though its row is well formed, or None."""
    if not chosen.strip():
        return "empty chosen reply"
    if not rejected.strip():
        return "empty rejected reply"
    if chosen.strip() == rejected.strip():
        return "chosen identical to rejected"
    return None


def _string_field(obj: dict, key: str, where: Where) -> str:
    if key not in obj:
        raise where.fail(key, "missing")
    value = obj[key]
    if not isinstance(value, str):
        raise where.fail(key, f"expected a string, got {type_name(value)}")
    return value


def split_hh(chosen: str, rejected: str, where: Where) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) from two HH-RLHF transcripts."""
    n, limit = 0, min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, n)
    if cut < 0 or cut + len(HH_ASSISTANT) > n:
        raise where.fail(
            "chosen",
            "the chosen and rejected transcripts share no '\\n\\nAssistant:' turn; not an HH-RLHF transcript pair",
        )
    end = cut + len(HH_ASSISTANT)
    prompt = chosen[:end]

    def reply(text: str) -> str:
        rest = text[end:]
        return rest[1:] if rest.startswith(" ") else rest

    return prompt, reply(chosen), reply(rejected)


def _import_trl(obj: Any, where: Where, report: ImportReport) -> PreferencePair | None:
    return parse_record(obj, "preference", where)  # type: ignore[return-value]


def _import_hh(obj: Any, where: Where, report: ImportReport) -> PreferencePair | None:
    if not isinstance(obj, dict):
        raise where.fail(None, f"expected a JSON object with chosen and rejected, got {type_name(obj)}")
    chosen_text = _string_field(obj, "chosen", where)
    rejected_text = _string_field(obj, "rejected", where)
    prompt, chosen, rejected = split_hh(chosen_text, rejected_text, where)
    problem = _content_problem(chosen, rejected)
    if problem:
        report.skipped.append((where.line, problem))  # type: ignore[arg-type]
        return None
    return PreferencePair(
        prompt=prompt, chosen=chosen, rejected=rejected, category=None, metadata={"source": "hh-rlhf"}
    )


def _score(obj: dict, key: str, where: Where) -> float:
    if key not in obj:
        raise where.fail(key, "missing")
    value = obj[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise where.fail(key, f"expected a number, got {type_name(value)}")
    if not math.isfinite(value):
        raise where.fail(key, f"expected a finite number, got {value}")
    return value


def _uf_reply(obj: dict, key: str, where: Where) -> str:
    """A reply given as text or as messages (user then assistant); the text of the last assistant turn."""
    if key not in obj:
        raise where.fail(key, "missing")
    value = obj[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        msgs = parse_messages(value, key, where)
        if msgs[-1]["role"] != "assistant":
            raise where.fail(key, "the last message must be the assistant's reply")
        return msgs[-1]["content"]
    raise where.fail(key, f"expected a string or a list of messages, got {type_name(value)}")


UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _uf_rating(completion: dict, aspect: str, where: Where, name: str) -> float | None:
    """One aspect's Rating of a raw UltraFeedback completion (an annotation object, or a one-item list of it);
    None where the aspect is missing or rated N/A."""
    annotation = (completion.get("annotations") or {}).get(aspect)
    if isinstance(annotation, list):
        annotation = annotation[0] if annotation else None
    if annotation is None:
        return None
    if not isinstance(annotation, dict):
        raise where.fail(f"{name}.annotations.{aspect}", f"expected an object with Rating, got {type_name(annotation)}")
    rating = annotation.get("Rating")
    if rating in (None, "N/A", "n/a", ""):
        return None
    try:
        value = float(rating)
    except (TypeError, ValueError):
        raise where.fail(f"{name}.annotations.{aspect}.Rating", f"expected 1-5 or N/A, got {rating!r}") from None
    if not math.isfinite(value):
        raise where.fail(f"{name}.annotations.{aspect}.Rating", f"expected 1-5 or N/A, got {rating!r}")
    return value


def _import_ultrafeedback_raw(obj: dict, where: Where, report: ImportReport) -> PreferencePair | None:
    """The raw layout: the best- and worst-scored completions, with a label per fine-grained aspect."""
    prompt = _text_field(obj, "instruction", where)
    completions = obj["completions"]
    if not isinstance(completions, list):
        raise where.fail("completions", f"expected a list, got {type_name(completions)}")
    scored = []
    for i, completion in enumerate(completions):
        name = f"completions[{i}]"
        if not isinstance(completion, dict):
            raise where.fail(name, f"expected an object, got {type_name(completion)}")
        response = completion.get("response")
        if not isinstance(response, str):
            raise where.fail(f"{name}.response", f"expected a string, got {type_name(response)}")
        key = "fine-grained_score" if "fine-grained_score" in completion else "overall_score"
        if key not in completion:
            raise where.fail(f"{name}.overall_score", "missing (give overall_score or fine-grained_score)")
        score = completion[key]
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise where.fail(f"{name}.{key}", f"expected a finite number, got {type_name(score)}")
        ratings = {aspect: _uf_rating(completion, aspect, where, name) for aspect in UF_ASPECTS}
        scored.append((score, i, response, ratings))
    if len(scored) < 2:
        report.skipped.append((where.line, "fewer than two completions"))  # type: ignore[arg-type]
        return None
    best, worst = max(scored, key=lambda c: (c[0], -c[1])), min(scored, key=lambda c: (c[0], c[1]))
    if best[0] == worst[0]:
        report.skipped.append((where.line, "tie"))  # type: ignore[arg-type]
        return None
    problem = _content_problem(best[2], worst[2])
    if problem:
        report.skipped.append((where.line, problem))  # type: ignore[arg-type]
        return None
    labels = {}
    for aspect in UF_ASPECTS:
        a, b = best[3][aspect], worst[3][aspect]
        if a is not None and b is not None:
            labels[aspect] = "chosen" if a > b else "rejected" if a < b else "tie"
    pair_id = obj.get("id", obj.get("prompt_id"))
    if pair_id is not None and (not isinstance(pair_id, (str, int)) or isinstance(pair_id, bool)):
        raise where.fail("id", f"expected a string or integer, got {type_name(pair_id)}")
    return PreferencePair(
        prompt=prompt,
        chosen=best[2],
        rejected=worst[2],
        id=pair_id,
        margin=float(best[0] - worst[0]),
        metadata={"source": "ultrafeedback", "score_chosen": best[0], "score_rejected": worst[0]},
        labels=labels or None,
    )


def _text_field(obj: dict, key: str, where: Where) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise where.fail(key, "missing or empty" if value is None or isinstance(value, str) else "expected a string")
    return value


def _import_ultrafeedback(obj: Any, where: Where, report: ImportReport) -> PreferencePair | None:
    if not isinstance(obj, dict):
        raise where.fail(None, f"expected a JSON object, got {type_name(obj)}")
    if "completions" in obj and "chosen" not in obj:  # the raw openbmb layout, with fine-grained ratings
        return _import_ultrafeedback_raw(obj, where, report)
    prompt = parse_prompt(obj, where)
    chosen = _uf_reply(obj, "chosen", where)
    rejected = _uf_reply(obj, "rejected", where)
    score_chosen = _score(obj, "score_chosen", where)
    score_rejected = _score(obj, "score_rejected", where)
    pair_id = obj.get("prompt_id")
    if pair_id is not None and (not isinstance(pair_id, (str, int)) or isinstance(pair_id, bool)):
        raise where.fail("prompt_id", f"expected a string or integer, got {type_name(pair_id)}")
    if score_chosen == score_rejected:
        report.skipped.append((where.line, "tie"))  # type: ignore[arg-type]
        return None
    problem = _content_problem(chosen, rejected)
    if problem:
        report.skipped.append((where.line, problem))  # type: ignore[arg-type]
        return None
    metadata: dict[str, Any] = {"source": "ultrafeedback"}
    if score_chosen < score_rejected:
        chosen, rejected = rejected, chosen
        score_chosen, score_rejected = score_rejected, score_chosen
        report.swapped.append(where.line)  # type: ignore[arg-type]
        metadata["swapped"] = True
    metadata["score_chosen"] = score_chosen
    metadata["score_rejected"] = score_rejected
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        id=pair_id,
        margin=float(score_chosen - score_rejected),
        metadata=metadata,
    )


def _import_trl_unpaired(obj: Any, where: Where, report: ImportReport) -> UnpairedExample | None:
    return parse_record(obj, "unpaired", where)  # type: ignore[return-value]


def _import_pairs_unpaired(obj: Any, where: Where, report: ImportReport) -> list[UnpairedExample]:
    pair: PreferencePair = parse_record(obj, "preference", where)  # type: ignore[assignment]
    return [
        UnpairedExample(
            prompt=pair.prompt,
            completion=completion,
            label=label,
            id=None if pair.id is None else f"{pair.id}:{side}",
            category=pair.category,
            metadata=pair.metadata,
        )
        for completion, label, side in ((pair.chosen, True, "chosen"), (pair.rejected, False, "rejected"))
    ]


_IMPORTERS = {
    "trl": _import_trl,
    "hh": _import_hh,
    "ultrafeedback": _import_ultrafeedback,
    "trl-unpaired": _import_trl_unpaired,
    "pairs-unpaired": _import_pairs_unpaired,
}


def import_preferences(path: str | Path, fmt: str) -> tuple[list[PreferencePair], ImportReport]:
    """Read a whole file in layout `fmt`; return the pairs and a report of what was read, imported and skipped.

    A malformed row raises DataError (file:line: field '...') and nothing is returned; so does a file with no
    records, or one where every record was skipped.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown import format '{fmt}'; expected one of {', '.join(FORMATS)}")
    return import_records(path, fmt)  # type: ignore[return-value]


def import_records(path: str | Path, fmt: str) -> tuple[list[Record], ImportReport]:
    """import_preferences for every format, the unpaired ones (UNPAIRED_FORMATS) included."""
    if fmt not in _IMPORTERS:
        raise DataError(f"unknown import format '{fmt}'; expected one of {', '.join(FORMATS + UNPAIRED_FORMATS)}")
    convert = _IMPORTERS[fmt]
    source = str(path)
    report = ImportReport(source=source, format=fmt)
    records: list[Record] = []
    ids = UniqueIds()
    for lineno, obj in read_rows(path):
        report.read += 1
        where = Where(source, lineno)
        converted = convert(obj, where, report)
        for record in converted if isinstance(converted, list) else [converted]:
            if record is not None:
                ids.check(record.id, where)
                records.append(record)
    report.imported = len(records)
    if report.read == 0:
        raise DataError(f"{source}: no records")
    if not records:
        raise DataError(f"{source}: no usable records ({report.summary()})")
    return records, report
