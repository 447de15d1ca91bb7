"""The JSONL record kinds and their validation.

One JSON object a line. Kinds (see README, "Data schema"):
- sft:        {"prompt": TEXT|MESSAGES, "response": TEXT}  or  {"messages": MESSAGES ending with an assistant turn}
- prompt:     {"prompt": TEXT|MESSAGES}
- preference: {"prompt": TEXT|MESSAGES, "chosen": TEXT|MESSAGES, "rejected": TEXT|MESSAGES}
              or chosen/rejected as whole conversations with no prompt (the shared leading turns become the prompt)
- unpaired:   {"prompt": TEXT|MESSAGES, "completion": TEXT|MESSAGES, "label": true|false}  a thumb up (true) or
              down (false) on one response, no pair (KTO)
Optional on every kind: id (string or integer), category (string), metadata (object);
on preference pairs also margin (number), annotator (string) and labels ({OBJECTIVE: "chosen"|"rejected"|"tie"}:
the pair judged per objective, e.g. helpfulness and harmlessness; chosen/rejected stay the overall judgment).
MESSAGES is a list of {"role": "system"|"user"|"assistant", "content": TEXT}.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import zlib
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
KINDS = ("sft", "prompt", "preference", "unpaired")


@dataclass
class SFTExample:
    prompt: PromptValue
    response: str
    id: str | int | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # a `messages` record's whole conversation (prompt: its turns before the last, response: the last): SFT trains
    # every assistant turn of it
    messages: list[Message] | None = None


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
    # per-objective judgments {objective: "chosen"|"rejected"|"tie"}, in the pair's chosen/rejected terms; an
    # objective left out was not judged (a multi-head reward model does not train that head on this pair)
    labels: dict[str, str] | None = None


LABEL_CHOICES = ("chosen", "rejected", "tie")


@dataclass
class UnpairedExample:
    prompt: PromptValue
    completion: str
    label: bool  # true: desirable (a thumb up), false: undesirable
    id: str | int | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


Record = SFTExample | PromptRecord | PreferencePair | UnpairedExample


def record_to_dict(record: Record) -> dict[str, Any]:
    """The JSON form: optional fields left out when empty."""
    out = asdict(record)
    if isinstance(record, SFTExample) and record.messages is not None:
        del out["prompt"], out["response"]  # the conversation says both
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


def parse_labels(value: Any, where: Where) -> dict[str, str]:
    """A pair's per-objective judgments: an object {objective: "chosen"|"rejected"|"tie"}, names non-empty."""
    if not isinstance(value, dict):
        raise where.fail(
            "labels", f'expected an object {{objective: "chosen"|"rejected"|"tie"}}, got {type_name(value)}'
        )
    out = {}
    for name, choice in value.items():
        if not name.strip():
            raise where.fail("labels", "an objective name is empty; name each objective (e.g. helpfulness)")
        if choice not in LABEL_CHOICES:
            shown = repr(choice) if isinstance(choice, str) else type_name(choice)
            raise where.fail(f"labels.{name}", f"expected one of {', '.join(LABEL_CHOICES)}, got {shown}")
        out[name] = choice
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
            return SFTExample(prompt=msgs[:-1], response=msgs[-1]["content"], messages=msgs, **common)
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
            if not math.isfinite(margin):
                raise where.fail("margin", f"expected a finite number, got {margin}")
            pair.margin = float(margin)
        if "annotator" in obj and obj["annotator"] is not None:
            if not isinstance(obj["annotator"], str):
                raise where.fail("annotator", f"expected a string, got {type_name(obj['annotator'])}")
            pair.annotator = obj["annotator"]
        if "labels" in obj and obj["labels"] is not None:
            pair.labels = parse_labels(obj["labels"], where) or None
        return pair
    if kind == "unpaired":
        prompt = parse_prompt(obj, where)
        completion = parse_response(obj, "completion", where)
        completion = completion[-1]["content"] if isinstance(completion, list) else completion
        if "label" not in obj:
            raise where.fail("label", "missing (true for a desirable completion, false for an undesirable one)")
        if not isinstance(obj["label"], bool):
            raise where.fail("label", f"expected true or false, got {type_name(obj['label'])}")
        return UnpairedExample(prompt=prompt, completion=completion, label=obj["label"], **common)
    raise DataError(f"unknown record kind '{kind}'; expected one of {', '.join(KINDS)}")


def read_jsonl(path: str | Path, allow_nan: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded value) for each non-blank line of a UTF-8 JSONL file (`.gz`: gzip-compressed);
    a UTF-8 byte-order mark is skipped. Bytes that are not UTF-8, a broken or truncated gzip stream and broken
    JSON are a DataError naming the file and line (jsonl_lines says what else is refused)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    compressed = path.suffix == ".gz"
    if compressed:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                raise DataError(f"{path}: named .gz but not gzip-compressed; rename it or compress it with gzip")
    opener = gzip.open if compressed else open
    broken = (EOFError, OSError, zlib.error) if compressed else ()  # a truncated or corrupt gzip stream
    lineno = 0
    with opener(path, "rb") as handle:
        try:
            for lineno, raw_line in enumerate(handle, start=1):
                yield from jsonl_lines([decode_line(raw_line, str(path), lineno)], str(path), allow_nan, lineno)
        except broken as exc:
            raise DataError(
                f"{path}: the gzip stream is broken after line {lineno} ({exc}); the file is truncated or corrupt, "
                "copy or download it again"
            ) from None


def decode_line(raw: bytes, source: str, lineno: int) -> str:
    """One line of a file as text: UTF-8 (a byte-order mark on line 1 skipped), or a DataError naming the column."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file "
            "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def jsonl_lines(
    lines: Iterable[str], source: str, allow_nan: bool = False, first_line: int = 1
) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) for each non-blank line of JSONL text. A DataError names `source` and the line
    for: broken JSON, nesting too deep to be a record, a string with a lone surrogate (`"\\ud800"`: valid JSON
    that no tokenizer or UTF-8 writer takes) and, unless `allow_nan` (metrics), NaN or Infinity (not JSON; strict
    readers refuse them)."""
    for lineno, line in enumerate(lines, start=first_line):
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise DataError(f"{source}:{lineno}: JSON nested too deeply to be a record") from None
        except ValueError as exc:  # an integer of more digits than Python converts (4300)
            raise DataError(f"{source}:{lineno}: not valid JSON ({exc})") from None
        suspect = "\\u" in line or (not allow_nan and ("NaN" in line or "Infinity" in line))
        problem = bad_value(value, allow_nan) if suspect else None
        if problem:
            raise Where(source, lineno).fail(*problem)
        yield lineno, value


def bad_value(value: Any, allow_nan: bool = False) -> tuple[str | None, str] | None:
    """(field, problem) of the first string with a lone surrogate or, unless `allow_nan`, non-finite number in a
    decoded JSON value (walked without recursion: any depth json accepts is fine), or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if not _encodable(key):
                    return name or None, f"key {key!r} holds a lone surrogate; remove or replace it"
                stack.append((f"{name}.{key}" if name else key, child))
        elif isinstance(item, list):
            stack.extend((f"{name}[{i}]", child) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str) and not _encodable(item):
            return name or None, "holds a lone surrogate (an unpaired \\ud800-\\udfff escape); remove it"
        elif isinstance(item, float) and not allow_nan and not math.isfinite(item):
            spelled = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")  # as written in JSON
            return name or None, f"{spelled} is not a JSON number; give a finite number or null"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    return [record for _, record in load_located(path, kind, columns)]


def load_located(path: str | Path, kind: str, columns: dict[str, str] | None = None) -> list[tuple[str, Record]]:
    """load_records, each record with its place for messages (`record_place`: `line 3 (id 'p3')`)."""
    located = []
    ids = UniqueIds()
    for place, obj in read_rows(path, columns):
        where = Where(str(path), place)
        record = parse_record(obj, kind, where)
        ids.check(record.id, where)
        located.append((record_place(place, record), record))
    if not located:
        raise DataError(f"{path}: no records")
    return located


def record_place(place: int | str, record: Record) -> str:
    """A record's place in its source for messages: `line 3` of a JSONL file (`row 3` of a dataset), and its id."""
    where = f"line {place}" if isinstance(place, int) else str(place)
    return where if record.id is None else f"{where} (id {record.id!r})"


class UniqueIds:
    """Refuses a record id seen before in the same source (ids name records in judgments, margins and reports)."""

    def __init__(self):
        self.first: dict[str | int, Where] = {}

    def check(self, record_id: str | int | None, where: Where) -> None:
        if record_id is None:
            return
        if record_id in self.first:
            raise where.fail(
                "id", f"id {record_id!r} appears twice (first at {self.first[record_id]}); ids must be unique"
            )
        self.first[record_id] = where


def detect_kind(path: str | Path) -> str:
    """Guess the record kind from the first record's keys."""
    for _, obj in read_rows(path):
        if isinstance(obj, dict):
            if "completion" in obj or "label" in obj:
                return "unpaired"
            if "chosen" in obj or "rejected" in obj:
                return "preference"
            if "response" in obj or "messages" in obj:
                return "sft"
            if "prompt" in obj:
                return "prompt"
        raise DataError(f"{path}:1: cannot tell the record kind; pass --kind sft|prompt|preference|unpaired")
    raise DataError(f"{path}: no records")


def write_jsonl(path: str | Path, rows: Iterable[Record | dict[str, Any]]) -> int:
    """Write atomically (atomic_file): the old file, or the whole new one, never a part; gzip-compressed when
    PATH ends in `.gz`, as read_jsonl reads it."""
    count = 0
    with atomic_file(path, "wb") as raw:
        handle = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if str(path).endswith(".gz") else raw
        for row in rows:
            obj = row if isinstance(row, dict) else record_to_dict(row)
            handle.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
        if handle is not raw:
            handle.close()
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
