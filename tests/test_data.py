"""Data records and importers: clear errors for bad input, lossless round-trips, and real HH-RLHF data."""

import gzip
import json
import re
from pathlib import Path

import pytest

from rlhfkit.data.importers import FORMATS, ImportReport, import_preferences, import_records
from rlhfkit.data.records import (
    PreferencePair,
    PromptRecord,
    SFTExample,
    UnpairedExample,
    detect_kind,
    load_records,
    write_jsonl,
)
from rlhfkit.errors import DataError

REPO = Path(__file__).resolve().parents[1]
HH_CANDIDATES = [
    REPO / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz",
    REPO.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz",
]
HH_SAMPLE = next((p for p in HH_CANDIDATES if p.is_file()), None)
HH_EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]


def write_lines(path: Path, rows) -> Path:
    """Each row: a dict/list (dumped as JSON) or a raw string (written as is)."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def error_of(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    return str(info.value)


GOOD_PAIR = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."}


# --- bad input: a DataError naming file, line and field ---------------------------------------------------


def test_broken_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD_PAIR, GOOD_PAIR, '{"prompt": "x", "chosen": '])
    msg = error_of(load_records, path, "preference")
    assert f"{path}:3:" in msg and "not valid JSON" in msg


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"prompt": "Say hi.", "rejected": "Go away."}, "chosen", "missing"),
        ({"prompt": "Say hi.", "chosen": 7, "rejected": "Go away."}, "chosen", "integer"),
        ({"prompt": "Say hi.", "chosen": "   ", "rejected": "Go away."}, "chosen", "empty"),
        ({"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"}, "rejected", "identical"),
        ({"prompt": "", "chosen": "Hi!", "rejected": "Go away."}, "prompt", "empty"),
        ({"chosen": "Hi!", "rejected": "Go away."}, "prompt", "missing"),
        (
            {"prompt": [{"role": "robot", "content": "hi"}], "chosen": "Hi!", "rejected": "No."},
            "prompt[0].role",
            "robot",
        ),
        ({"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "margin": "big"}, "margin", "number"),
    ],
)
def test_bad_preference_record_names_file_line_and_field(tmp_path, row, field, words):
    path = write_lines(tmp_path / "p.jsonl", [GOOD_PAIR, row])
    msg = error_of(load_records, path, "preference")
    assert msg.startswith(f"{path}:2: field '{field}'"), msg
    assert words in msg


def test_bad_sft_and_prompt_records(tmp_path):
    sft = write_lines(tmp_path / "s.jsonl", [{"prompt": "Q", "response": "A"}, {"prompt": "Q", "response": ["A"]}])
    assert error_of(load_records, sft, "sft").startswith(f"{sft}:2: field 'response'")
    msgs = write_lines(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "Q"}]}])
    assert error_of(load_records, msgs, "sft").startswith(f"{msgs}:1: field 'messages'")
    prompts = write_lines(tmp_path / "q.jsonl", [{"prompt": "Q"}, {"prompt": 3}])
    assert error_of(load_records, prompts, "prompt").startswith(f"{prompts}:2: field 'prompt'")


def test_not_an_object_names_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD_PAIR, [1, 2]])
    assert error_of(load_records, path, "preference").startswith(f"{path}:2: expected a JSON object")


def test_file_not_found_and_empty_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert "file not found" in error_of(load_records, missing, "preference")
    assert str(missing) in error_of(import_preferences, missing, "hh")
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    assert "no records" in error_of(load_records, empty, "sft")
    assert "no records" in error_of(import_preferences, empty, "trl")


def test_unknown_import_format(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD_PAIR])
    msg = error_of(import_preferences, path, "x")
    assert msg == "unknown import format 'x'; expected one of trl, hh, ultrafeedback"
    assert FORMATS == ("trl", "hh", "ultrafeedback")


# --- round trips ------------------------------------------------------------------------------------------

USER = {"role": "user", "content": "What is 2+2?"}
SYSTEM = {"role": "system", "content": "Be brief."}

ROUND_TRIP_ROWS = {
    "sft": [
        {"prompt": "Write a haiku.", "response": "Leaves fall\nquietly.", "id": 1, "category": "poetry"},
        {"prompt": [SYSTEM, USER], "response": "4", "metadata": {"src": "x", "n": [1, 2]}},
        {"messages": [USER, {"role": "assistant", "content": "4."}], "id": "m-1"},
    ],
    "prompt": [
        {"prompt": "Tell me a joke."},
        {"prompt": [SYSTEM, USER], "id": "p2", "category": "math", "metadata": {"k": 1.5}},
    ],
    "preference": [
        {
            "prompt": "Say hi.",
            "chosen": "Hi! \u00e9\u4f60\u597d",
            "rejected": "Go away.",
            "margin": 2,
            "annotator": "ann-1",
        },
        {
            "prompt": [SYSTEM, USER],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
            "id": 9,
        },
        {  # implicit prompt: whole conversations that share their leading turns
            "chosen": [USER, {"role": "assistant", "content": "4"}],
            "rejected": [USER, {"role": "assistant", "content": "22"}],
            "category": "math",
        },
    ],
    "unpaired": [
        {"prompt": "Say hi.", "completion": "Hi!", "label": True, "id": "u1"},
        {"prompt": [SYSTEM, USER], "completion": [{"role": "assistant", "content": "5"}], "label": False},
    ],
}


@pytest.mark.parametrize("kind", ["sft", "prompt", "preference", "unpaired"])
def test_records_round_trip(tmp_path, kind):
    src = write_lines(tmp_path / "in.jsonl", ROUND_TRIP_ROWS[kind])
    records = load_records(src, kind)
    assert detect_kind(src) == kind
    out = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(out, records) == len(records)
    again = load_records(out, kind)
    assert again == records
    assert write_jsonl(tmp_path / "out2.jsonl", again) == len(records)
    assert (tmp_path / "out2.jsonl").read_bytes() == out.read_bytes()


def test_round_trip_parses_messages_and_implicit_prompts(tmp_path):
    records = load_records(write_lines(tmp_path / "in.jsonl", ROUND_TRIP_ROWS["preference"]), "preference")
    assert records[0].margin == 2.0 and records[0].annotator == "ann-1"
    assert records[1].prompt == [SYSTEM, USER] and records[1].chosen == "4"
    assert records[2].prompt == [USER] and (records[2].chosen, records[2].rejected) == ("4", "22")
    sft = load_records(write_lines(tmp_path / "s.jsonl", ROUND_TRIP_ROWS["sft"]), "sft")
    assert isinstance(sft[2], SFTExample) and sft[2].prompt == [USER] and sft[2].response == "4."
    prompts = load_records(write_lines(tmp_path / "q.jsonl", ROUND_TRIP_ROWS["prompt"]), "prompt")
    assert isinstance(prompts[0], PromptRecord)


def test_write_jsonl_is_atomic(tmp_path):
    def rows_then_crash():
        yield PreferencePair(prompt="p", chosen="a", rejected="b")
        raise RuntimeError("crash mid-write")

    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(RuntimeError):
        write_jsonl(fresh, rows_then_crash())
    assert not fresh.exists()

    existing = tmp_path / "existing.jsonl"
    existing.write_text("old contents\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        write_jsonl(existing, rows_then_crash())
    assert existing.read_text(encoding="utf-8") == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.jsonl"]  # no temporary file left behind


# --- TRL importer -----------------------------------------------------------------------------------------


def test_trl_text_and_conversational_rows_import(tmp_path):
    path = write_lines(tmp_path / "trl.jsonl", ROUND_TRIP_ROWS["preference"])
    pairs, report = import_preferences(path, "trl")
    assert pairs == load_records(path, "preference")
    assert (report.read, report.imported, report.skipped) == (3, 3, [])
    assert report.summary() == f"imported 3 of 3 records from {path}"


def test_trl_malformed_row_fails_whole_import(tmp_path):
    path = write_lines(tmp_path / "trl.jsonl", [GOOD_PAIR, GOOD_PAIR, {"prompt": "x", "chosen": "a", "rejected": 5}])
    assert error_of(import_preferences, path, "trl").startswith(f"{path}:3: field 'rejected'")


# --- HH-RLHF importer -------------------------------------------------------------------------------------

H, A = "\n\nHuman: ", "\n\nAssistant: "


def test_hh_small_file(tmp_path):
    rows = [
        {"chosen": H + "Hi" + A + "Hello there.", "rejected": H + "Hi" + A + "Go away."},
        {
            "chosen": H + "Q1" + A + "R1" + H + "Q2" + A + "Good.",
            "rejected": H + "Q1" + A + "R1" + H + "Q2" + A + "Bad.",
        },
        {"chosen": H + "Hi" + A, "rejected": H + "Hi" + A + "Hello."},  # empty chosen reply
        {"chosen": H + "Hi" + A + "Same", "rejected": H + "Hi" + A + "Same"},  # identical
    ]
    path = write_lines(tmp_path / "hh.jsonl", rows)
    pairs, report = import_preferences(path, "hh")
    assert [p.prompt for p in pairs] == [H + "Hi\n\nAssistant:", H + "Q1" + A + "R1" + H + "Q2\n\nAssistant:"]
    assert [(p.chosen, p.rejected) for p in pairs] == [("Hello there.", "Go away."), ("Good.", "Bad.")]
    assert all(p.category is None and p.metadata == {"source": "hh-rlhf"} for p in pairs)
    assert report.skipped == [(3, "empty chosen reply"), (4, "chosen identical to rejected")]
    assert "2 skipped" in report.summary() and "line 3" in report.summary() and "line 4" in report.summary()


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"chosen": H + "Hi" + A + "Yo"}, "rejected", "missing"),
        ({"chosen": 3, "rejected": H + "Hi" + A + "Yo"}, "chosen", "integer"),
        ({"chosen": "Hello", "rejected": "Goodbye"}, "chosen", "Assistant"),
        ({"chosen": H + "Hi" + A + "Yo", "rejected": H + "Bye" + A + "Yo"}, "chosen", "Assistant"),
    ],
)
def test_hh_malformed_rows_name_file_line_field(tmp_path, row, field, words):
    good = {"chosen": H + "Hi" + A + "Hello.", "rejected": H + "Hi" + A + "No."}
    path = write_lines(tmp_path / "hh.jsonl", [good, row])
    msg = error_of(import_preferences, path, "hh")
    assert msg.startswith(f"{path}:2: field '{field}'"), msg
    assert words in msg


def test_hh_all_rows_skipped_is_an_error(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": H + "Hi" + A, "rejected": H + "Hi" + A + "Hello."}])
    msg = error_of(import_preferences, path, "hh")
    assert "no usable records" in msg and "line 1" in msg


@pytest.fixture(scope="module")
def hh_sample():
    if HH_SAMPLE is None:
        pytest.skip(f"HH-RLHF sample not found in {[str(p) for p in HH_CANDIDATES]}")
    with gzip.open(HH_SAMPLE, "rt", encoding="utf-8") as handle:
        raw = [json.loads(line) for line in handle]
    pairs, report = import_preferences(HH_SAMPLE, "hh")
    return raw, pairs, report


def test_hh_sample_every_record_accounted_for(hh_sample):
    raw, pairs, report = hh_sample
    assert len(raw) == 1500 and report.read == 1500
    assert report.imported == len(pairs) == 1496
    assert report.imported + len(report.skipped) == 1500
    assert report.skipped == [(n, "empty chosen reply") for n in HH_EMPTY_CHOSEN_LINES]
    summary = report.summary()
    assert summary.startswith(f"imported 1496 of 1500 records from {HH_SAMPLE} (4 skipped:")
    assert "lines 87, 517, 926, 1104" in summary


def test_hh_sample_reconstructs_every_transcript(hh_sample):
    raw, pairs, report = hh_sample
    skipped = {line for line, _ in report.skipped}
    imported_lines = [n for n in range(1, len(raw) + 1) if n not in skipped]
    assert len(imported_lines) == len(pairs)
    for line, pair in zip(imported_lines, pairs):
        row = raw[line - 1]
        assert pair.prompt.endswith("\n\nAssistant:"), line
        assert pair.prompt.startswith("\n\nHuman: "), line
        assert pair.chosen.strip() and pair.rejected.strip() and pair.chosen.strip() != pair.rejected.strip(), line
        for response, transcript in ((pair.chosen, row["chosen"]), (pair.rejected, row["rejected"])):
            assert transcript in (pair.prompt + " " + response, pair.prompt + response), line
        assert pair.category is None and pair.metadata == {"source": "hh-rlhf"}


def test_hh_sample_line_1255_diverges_before_last_turn(hh_sample):
    raw, pairs, report = hh_sample
    row = raw[1254]
    pair = pairs[1254 - sum(1 for n in HH_EMPTY_CHOSEN_LINES if n < 1255)]
    assert row["chosen"].startswith(pair.prompt) and row["rejected"].startswith(pair.prompt)
    assert pair.prompt.count("\n\nAssistant:") == 2  # multi-turn prompt cut at the last shared Assistant marker
    assert pair.chosen.startswith("No. Men who impersonate")
    assert pair.rejected.startswith("A drag king is the opposite")


def test_hh_sample_written_records_load_back(hh_sample, tmp_path):
    _, pairs, _ = hh_sample
    out = tmp_path / "hh.jsonl"
    write_jsonl(out, pairs)
    assert load_records(out, "preference") == pairs


# --- UltraFeedback importer -------------------------------------------------------------------------------


def uf_row(prompt, chosen, rejected, score_chosen, score_rejected, **extra):
    def conv(reply):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]

    return {
        "prompt": prompt,
        "chosen": conv(chosen),
        "rejected": conv(rejected),
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
        **extra,
    }


def test_ultrafeedback_margin_swap_and_ties(tmp_path):
    rows = [
        uf_row("Capital of France?", "Paris.", "Lyon.", 9.0, 3.5, prompt_id="abc"),
        uf_row("2+2?", "5", "4", 2, 8, prompt_id="def"),  # scored the wrong way round: swapped
        uf_row("Colour of sky?", "Blue.", "Green.", 6, 6),  # tie: skipped
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Bye.", "score_chosen": 5, "score_rejected": 4},
    ]
    path = write_lines(tmp_path / "uf.jsonl", rows)
    pairs, report = import_preferences(path, "ultrafeedback")
    assert len(pairs) == 3 and report.read == 4 and report.imported == 3
    first, swapped, text = pairs
    assert (first.prompt, first.chosen, first.rejected, first.id, first.margin) == (
        "Capital of France?",
        "Paris.",
        "Lyon.",
        "abc",
        5.5,
    )
    assert first.metadata["score_chosen"] == 9.0 and first.metadata["score_rejected"] == 3.5
    assert (swapped.chosen, swapped.rejected, swapped.margin, swapped.id) == ("4", "5", 6.0, "def")
    assert swapped.metadata["score_chosen"] == 8 and swapped.metadata["score_rejected"] == 2
    assert (text.chosen, text.rejected, text.margin, text.id) == ("Hi!", "Bye.", 1.0, None)
    assert all(p.margin > 0 for p in pairs)
    assert report.skipped == [(3, "tie")]
    assert report.swapped == [2]
    summary = report.summary()
    assert "1 skipped: tie: line 3" in summary and "1 swapped" in summary


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"score_chosen": "9"}, "score_chosen", "number"),
        ({"score_rejected": None}, "score_rejected", "number"),
        ({"score_chosen": True}, "score_chosen", "number"),
        ({"score_rejected": "__drop__"}, "score_rejected", "missing"),
        ({"prompt": 12}, "prompt", "integer"),
        ({"chosen": 12}, "chosen", "integer"),
        ({"rejected": [{"role": "user", "content": "q"}]}, "rejected", "assistant"),
    ],
)
def test_ultrafeedback_bad_rows_name_file_line_field(tmp_path, change, field, words):
    bad = uf_row("Q", "A", "B", 5, 1)
    for key, value in change.items():
        if value == "__drop__":
            del bad[key]
        else:
            bad[key] = value
    path = write_lines(tmp_path / "uf.jsonl", [uf_row("Q", "A", "B", 5, 1), bad])
    msg = error_of(import_preferences, path, "ultrafeedback")
    assert msg.startswith(f"{path}:2: field '{field}'"), msg
    assert words in msg


def test_gzip_input(tmp_path):
    path = tmp_path / "uf.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(uf_row("Q", "A", "B", 5, 1)) + "\n")
    pairs, report = import_preferences(path, "ultrafeedback")
    assert isinstance(report, ImportReport) and [(p.chosen, p.rejected) for p in pairs] == [("A", "B")]
    assert re.fullmatch(r"imported 1 of 1 records from .*uf\.jsonl\.gz", report.summary())


# --- unpaired thumbs up/down (KTO) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"prompt": "Hi.", "completion": "Hello."}, "label", "missing"),
        ({"prompt": "Hi.", "completion": "Hello.", "label": "yes"}, "label", "expected true or false, got string"),
        ({"prompt": "Hi.", "completion": "Hello.", "label": 1}, "label", "expected true or false, got integer"),
        ({"prompt": "Hi.", "completion": " ", "label": True}, "completion", "is empty"),
        ({"completion": "Hello.", "label": True}, "prompt", "missing"),
    ],
)
def test_bad_unpaired_record_names_file_line_and_field(tmp_path, row, field, words):
    path = write_lines(tmp_path / "u.jsonl", [{"prompt": "Hi.", "completion": "Hello.", "label": True}, row])
    assert error_of(load_records, path, "unpaired").startswith(f"{path}:2: field '{field}': {words}")


def test_pairs_become_thumbs_up_and_down(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{**GOOD_PAIR, "id": "a", "category": "c"}, GOOD_PAIR])
    records, report = import_records(path, "pairs-unpaired")
    assert records[:2] == [
        UnpairedExample(prompt="Say hi.", completion="Hi!", label=True, id="a:chosen", category="c"),
        UnpairedExample(prompt="Say hi.", completion="Go away.", label=False, id="a:rejected", category="c"),
    ]
    assert [r.label for r in records[2:]] == [True, False] and records[2].id is None
    assert (report.read, report.imported) == (2, 4) and report.summary().startswith(
        "imported 4 records from the 2 rows"
    )
    out = tmp_path / "thumbs.jsonl"
    write_jsonl(out, records)
    assert detect_kind(out) == "unpaired" and load_records(out, "unpaired") == records


def test_trl_unpaired_import(tmp_path):
    rows = ROUND_TRIP_ROWS["unpaired"]
    records, report = import_records(write_lines(tmp_path / "kto.jsonl", rows), "trl-unpaired")
    assert [(r.completion, r.label) for r in records] == [("Hi!", True), ("5", False)] and report.imported == 2
    bad = write_lines(tmp_path / "bad.jsonl", [rows[0], {"prompt": "x", "completion": "y", "label": None}])
    assert "bad.jsonl:2: field 'label'" in error_of(import_records, bad, "trl-unpaired")
    assert "trl-unpaired, pairs-unpaired" in error_of(import_records, bad, "nope")
