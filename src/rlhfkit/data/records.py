"""The JSONL record kinds and their validation.

One JSON object a line. Kinds (see README, "Data schema"):
- sft:        {"prompt": TEXT|MESSAGES, "response": TEXT}  or  {"messages": MESSAGES ending with an assistant turn}
- prompt:     {"prompt": TEXT|MESSAGES}
- preference: {"prompt": TEXT|MESSAGES, "chosen": TEXT|MESSAGES, "rejected": TEXT|MESSAGES}
              or chosen/rejected as whole conversations with no prompt (the shared leading turns become the prompt)
Optional on every kind: id (string or integer), category (string), metadata (object);
on preference pairs also margin (number) and annotator (string).
MESSAGES is a list of {"role": "system"|"user"|"assistant", "content": TEXT}.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..errors import DataError

Message = dict[str, str]
PromptValue = str | list[Message]
ROLES = ("system", "user", "assistant")
KINDS = ("sft", "prompt", "preference")


@dataclass
class SFTExample:
    prompt: PromptValue
    response: str
    id: str | int | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptRecord:
    prompt: PromptValue
    id: str | int | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferencePair:
    prompt: PromptValue
    chosen: str
    rejected: str
    id: str | int | None = None
    category: str | None = None
    margin: float | None = None
    annotator: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


Record = SFTExample | PromptRecord | PreferencePair


def record_to_dict(record: Record) -> dict[str, Any]:
    """The JSON form: optional fields left out when empty."""
    out = asdict(record)
    return {k: v for k, v in out.items() if v is not None and v != {}}


class Where:
    """Names a place in a file for error messages: `file.jsonl:12: field 'chosen'`."""

    def __init__(self, source: str, line: int | str | None):
        self.source, self.line = source, line

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def fail(self, field_name: str | None, problem: str) -> DataError:
        where = f"{self}: field '{field_name}'" if field_name else str(self)
        return DataError(f"{where}: {problem}")


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for error messages ("a number", "null", ...)."""
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _text(obj: dict, key: str, where: Where, required: bool = True) -> str | None:
    if key not in obj:
        if required:
            raise where.fail(key, "missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise where.fail(key, f"expected a string, got {type_name(value)}")
    if not value.strip():
        raise where.fail(key, "is empty")
    return value


def parse_messages(value: Any, key: str, where: Where) -> list[Message]:
    """Validate a chat `messages` list (role and content per turn) at `where`."""
    if not isinstance(value, list) or not value:
        raise where.fail(key, "expected a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        name = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise where.fail(name, f"expected an object with role and content, got {type_name(msg)}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise where.fail(f"{name}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise where.fail(f"{name}.content", f"expected a string, got {type_name(content)}")
        out.append({"role": role, "content": content})
    return out


def parse_prompt(obj: dict, where: Where) -> PromptValue:
    """The record's `prompt`: plain text or chat messages, validated."""
    if "prompt" not in obj:
        raise where.fail("prompt", "missing")
    value = obj["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise where.fail("prompt", "is empty")
        return value
    if isinstance(value, list):
        return parse_messages(value, "prompt", where)
    raise where.fail("prompt", f"expected a string or a list of messages, got {type_name(value)}")


def parse_response(obj: dict, key: str, where: Where) -> str | list[Message]:
    """A response: plain text, or messages whose last turn is the assistant's reply."""
    if key not in obj:
        raise where.fail(key, "missing")
    value = obj[key]
    if isinstance(value, str):
        if not value.strip():
            raise where.fail(key, "is empty")
        return value
    if isinstance(value, list):
        msgs = parse_messages(value, key, where)
        if msgs[-1]["role"] != "assistant":
            raise where.fail(key, "the last message must be the assistant's reply")
        if not msgs[-1]["content"].strip():
            raise where.fail(key, "the assistant's reply is empty")
        return msgs
    raise where.fail(key, f"expected a string or a list of messages, got {type_name(value)}")


def parse_common(obj: dict, where: Where) -> dict[str, Any]:
    """The optional keys every record kind shares (id, category, metadata), validated."""
    out: dict[str, Any] = {}
    if "id" in obj and obj["id"] is not None:
        if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
            raise where.fail("id", f"expected a string or integer, got {type_name(obj['id'])}")
        out["id"] = obj["id"]
    if "category" in obj and obj["category"] is not None:
        if not isinstance(obj["category"], str):
            raise where.fail("category", f"expected a string, got {type_name(obj['category'])}")
        out["category"] = obj["category"]
    if "metadata" in obj and obj["metadata"] is not None:
        if not isinstance(obj["metadata"], dict):
            raise where.fail("metadata", f"expected an object, got {type_name(obj['metadata'])}")
        out["metadata"] = obj["metadata"]
    return out


def _split_conversation(chosen: list[Message], rejected: list[Message], where: Where) -> tuple[list[Message], str, str]:
    """Implicit prompt: the turns both conversations share; each reply is its last assistant turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise where.fail("chosen", "no prompt given and the chosen and rejected conversations share no leading turn")
    if len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise where.fail("rejected", "chosen and rejected conversations must differ only in the last assistant turn")
    return chosen[:shared], chosen[-1]["content"], rejected[-1]["content"]


def parse_record(obj: Any, kind: str, where: Where) -> Record:
    """Validate one decoded JSON value as `kind`; raise DataError naming the place and field."""
    if not isinstance(obj, dict):
        raise where.fail(None, f"expected a JSON object, got {type_name(obj)}")
    common = parse_common(obj, where)
    if kind == "prompt":
        return PromptRecord(prompt=parse_prompt(obj, where), **common)
    if kind == "sft":
        if "messages" in obj and "prompt" not in obj:
            msgs = parse_messages(obj["messages"], "messages", where)
            if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
                raise where.fail("messages", "must end with an assistant turn that follows at least one other turn")
            if not msgs[-1]["content"].strip():
                raise where.fail("messages", "the assistant's reply is empty")
            return SFTExample(prompt=msgs[:-1], response=msgs[-1]["content"], **common)
        prompt = parse_prompt(obj, where)
        response = _text(obj, "response", where)
        return SFTExample(prompt=prompt, response=response, **common)
    if kind == "preference":
        chosen = parse_response(obj, "chosen", where)
        rejected = parse_response(obj, "rejected", where)
        if "prompt" in obj:
            prompt = parse_prompt(obj, where)
            chosen = chosen[-1]["content"] if isinstance(chosen, list) else chosen
            rejected = rejected[-1]["content"] if isinstance(rejected, list) else rejected
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _split_conversation(chosen, rejected, where)
        else:
            raise where.fail("prompt", "missing (needed unless chosen and rejected are whole conversations)")
        if chosen.strip() == rejected.strip():
            raise where.fail("rejected", "identical to chosen; a preference pair needs two different responses")
        pair = PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, **common)
        if "margin" in obj and obj["margin"] is not None:
            margin = obj["margin"]
            if not isinstance(margin, (int, float)) or isinstance(margin, bool):
                raise where.fail("margin", f"expected a number, got {type_name(margin)}")
            pair.margin = float(margin)
        if "annotator" in obj and obj["annotator"] is not None:
            if not isinstance(obj["annotator"], str):
                raise where.fail("annotator", f"expected a string, got {type_name(obj['annotator'])}")
            pair.annotator = obj["annotator"]
        return pair
    raise DataError(f"unknown record kind '{kind}'; expected one of {', '.join(KINDS)}")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded value) for each non-blank line; broken JSON is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = open
    if path.suffix == ".gz":
        import gzip

        opener = gzip.open  # type: ignore[assignment]
    with opener(path, "rt", encoding="utf-8") as handle:
        yield from jsonl_lines(handle, str(path))


def jsonl_lines(lines: Iterable[str], source: str) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) for each non-blank line of JSONL text; broken JSON is a DataError naming
    `source` and the line."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise DataError(f"{source}:{lineno}: JSON nested too deeply to be a record") from None
        except ValueError as exc:  # an integer of more digits than Python converts (4300)
            raise DataError(f"{source}:{lineno}: not valid JSON ({exc})") from None


def read_rows(source: str | Path, columns: dict[str, str] | None = None) -> Iterator[tuple[int | str, Any]]:
    """(place, decoded value) of each record of a source: a JSONL file (place: line number), or anything
    rlhfkit.data.sources reads through `datasets` (place: `row N`); `columns` renames source columns to schema
    fields first."""
    from .sources import is_jsonl, rename_columns, source_rows

    path = Path(source).expanduser()
    rows = read_jsonl(path) if is_jsonl(path) else source_rows(str(source))
    for place, obj in rows:
        yield place, rename_columns(obj, columns or {}, f"{source}:{place}")


def load_records(path: str | Path, kind: str, columns: dict[str, str] | None = None) -> list[Record]:
    """Read and validate a whole source (read_rows); the first bad record stops with its source, line and field."""
    records = [parse_record(obj, kind, Where(str(path), place)) for place, obj in read_rows(path, columns)]
    if not records:
        raise DataError(f"{path}: no records")
    return records


def detect_kind(path: str | Path) -> str:
    """Guess the record kind from the first record's keys."""
    for _, obj in read_rows(path):
        if isinstance(obj, dict):
            if "chosen" in obj or "rejected" in obj:
                return "preference"
            if "response" in obj or "messages" in obj:
                return "sft"
            if "prompt" in obj:
                return "prompt"
        raise DataError(f"{path}:1: cannot tell the record kind; pass --kind sft|prompt|preference")
    raise DataError(f"{path}: no records")


def write_jsonl(path: str | Path, rows: Iterable[Record | dict[str, Any]]) -> int:
    """Write atomically (atomic_file): the old file, or the whole new one, never a part."""
    count = 0
    with atomic_file(path) as handle:
        for row in rows:
            obj = row if isinstance(row, dict) else record_to_dict(row)
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count


def split_pairs(
    pairs: list[PreferencePair], val_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Seeded split; pairs that share a prompt stay on one side so validation prompts are unseen."""
    by_prompt: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        by_prompt[str(pair.prompt)].append(pair)
    keys = sorted(by_prompt)
    random.Random(seed).shuffle(keys)
    n_val_target = int(round(len(pairs) * val_fraction))
    val, train = [], []
    for key in keys:
        (val if len(val) < n_val_target else train).extend(by_prompt[key])
    if not train or not val:
        raise DataError(f"cannot split {len(pairs)} pairs into train and validation with val_fraction={val_fraction}")
    return train, val
