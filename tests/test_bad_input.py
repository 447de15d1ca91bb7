"""The bad-input battery: every command of the CLI fed the malformed inputs a new user makes (file encodings and
containers, values, hyper-parameters, output paths, models). Each bad case must end in one line `error: ...` that
names where and what, a non-zero exit, no traceback and nothing written; the accepted cases (a UTF-8 byte-order
mark) must succeed. `test_every_command_is_in_the_battery` keeps the battery walking every command.

Runs in process (`rlhfkit.cli.main`), so a traceback is an exception the test sees. Every case fails before any
training, or trains one step on two records."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import click
import pytest
import typer

from rlhfkit import cli
from rlhfkit.resolve import resolve_model_path

DEFAULT = resolve_model_path("default")
UNWRITABLE = Path("/sys/rlhfkit-bad-input")  # even root cannot make a folder here


def run_cli(monkeypatch, capsys, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.argv", ["rlhfkit", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result: tuple[int, str, str], *fragments: str) -> str:
    code, out, err = result
    assert code != 0, out + err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), f"expected an error line, got:\n{out}\n{err}"
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


# ------------------------------------------------------------------------------------------ the records


def good_record(kind: str, i: int) -> dict:
    """Record `i` of each layout a command reads."""
    text = f"The food at place {i} was wonderful."
    return {
        "preference": {"id": f"p{i}", "prompt": f"Review {i}:", "chosen": text, "rejected": "Awful.", "margin": 1.0},
        "sft": {"id": f"s{i}", "prompt": f"Review {i}:", "response": text},
        "unpaired": {"id": f"k{i}", "prompt": f"Review {i}:", "completion": text, "label": i % 2 == 0},
        "prompt": {"id": f"q{i}", "prompt": f"Review {i}:", "metadata": {"score": 0.5}},
        "hh": {"chosen": f"\n\nHuman: Hi {i}\n\nAssistant: {text}", "rejected": f"\n\nHuman: Hi {i}\n\nAssistant: No."},
        "ultrafeedback": {
            "prompt_id": f"u{i}",
            "prompt": f"Review {i}:",
            "chosen": text,
            "rejected": "Awful.",
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        },
        "judgments": {"pair_id": f"p{i % 2}", "annotator": f"a{i // 2}", "choice": "a" if i % 3 else "b", "score": 1.0},
        "annotate_pairs": {"id": f"p{i}", "prompt": f"Review {i}:", "chosen": text, "rejected": "Awful."},
        "margins": {"pair_id": f"p{i}", "margin": 0.5},
        "metrics": {"step": i + 1, "loss": 1.0 / (i + 1), "score": 0.5},
    }[kind]


TEXT_FIELD = {
    "preference": "chosen",
    "sft": "response",
    "unpaired": "completion",
    "prompt": "prompt",
    "hh": "chosen",
    "ultrafeedback": "chosen",
    "judgments": "annotator",
    "annotate_pairs": "chosen",
    "margins": "pair_id",
    "metrics": "note",
}
NUMBER_FIELD = {"preference": "margin", "ultrafeedback": "score_chosen", "margins": "margin"}
ID_FIELD = {
    "preference": "id",
    "sft": "id",
    "unpaired": "id",
    "prompt": "id",
    "ultrafeedback": "prompt_id",
    "annotate_pairs": "id",
}


def line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def data_file(folder: Path, kind: str, case: str, n: int = 4) -> Path:
    """A JSONL file of `kind` whose line 2 has the defect `case` (or, for `good` and `bom`, no defect)."""
    rows = [line(good_record(kind, i)) for i in range(n)]
    second = dict(good_record(kind, 1))
    field = TEXT_FIELD[kind]
    name = f"{kind}-{case}.jsonl"
    if case == "non_utf8":
        rows[1] = line({**second, field: "caf\u00e9"}).replace(b"caf\\u00e9", b"caf\xe9")
    elif case == "surrogate":
        rows[1] = line({**second, field: "p \ud800 x"})
    elif case == "deep":
        rows[1] = b"[" * 10_000 + b"]" * 10_000 + b"\n"
    elif case == "nan":
        rows[1] = line({**second, NUMBER_FIELD.get(kind, "metadata"): float("nan")})
        if kind not in NUMBER_FIELD:
            rows[1] = line({**second, "metadata": {"score": float("inf")}})
    elif case == "duplicate_id":
        rows[1] = line({**second, ID_FIELD[kind]: good_record(kind, 0)[ID_FIELD[kind]]})
    elif case == "bom":
        rows[0] = b"\xef\xbb\xbf" + rows[0]
    path = folder / name
    if case == "truncated_gz":
        path = folder / f"{kind}-{case}.jsonl.gz"
        packed = gzip.compress(b"".join(line(good_record(kind, i)) for i in range(200)))
        path.write_bytes(packed[: len(packed) // 2])
        return path
    if case == "not_gzip":
        path = folder / f"{kind}-{case}.jsonl.gz"
    path.write_bytes(b"".join(rows))
    return path


# where the error must point, per case
EXPECT = {
    "non_utf8": [":2:", "not UTF-8"],
    "surrogate": [":2:", "lone surrogate"],
    "deep": [":2:", "nested too deeply"],
    "nan": [":2:", "not a JSON number"],
    "duplicate_id": [":2:", "field 'id'"],
    "truncated_gz": [".gz", "truncated"],
    "not_gzip": [".gz", "not gzip"],
}
FILE_CASES = list(EXPECT)


# ------------------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """Shared folders: a reward-model directory with its config and tokenizer but no weights (enough to resolve
    and tokenize; loading the weights would fail later), a model directory without a tokenizer, and a file."""
    root = tmp_path_factory.mktemp("bad")
    rm = root / "rm"
    rm.mkdir()
    config = json.loads((DEFAULT / "config.json").read_text())
    config["architectures"] = ["GPT2ForSequenceClassification"]
    (rm / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEFAULT / name, rm / name)
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (DEFAULT / name).exists():
            shutil.copy(DEFAULT / name, no_tokenizer / name)
    (root / "a-file").write_text("not a folder\n")
    return {"root": root, "rm": rm, "no_tokenizer": no_tokenizer, "file": root / "a-file"}


REWARD_FN = "rewards=[{function: default}]"

# command -> (record kind it reads, argv given the data file and an output folder)
READERS = {
    "data validate": ("preference", lambda f, o, p: ["data", "validate", f, "--kind", "preference"]),
    "data import": ("hh", lambda f, o, p: ["data", "import", f, "--format", "hh", "--out", f"{o}/pairs.jsonl"]),
    "data import (ultrafeedback)": (
        "ultrafeedback",
        lambda f, o, p: ["data", "import", f, "--format", "ultrafeedback", "--out", f"{o}/pairs.jsonl"],
    ),
    "data import (trl)": ("preference", lambda f, o, p: ["data", "import", f, "-f", "trl", "--out", f"{o}/p.jsonl"]),
    "data import (trl-unpaired)": (
        "unpaired",
        lambda f, o, p: ["data", "import", f, "-f", "trl-unpaired", "--out", f"{o}/u.jsonl"],
    ),
    "data validate (unpaired)": ("unpaired", lambda f, o, p: ["data", "validate", f, "--kind", "unpaired"]),
    "sft": ("sft", lambda f, o, p: ["sft", f"data={f}", f"output_dir={o}", "max_steps=1"]),
    "dpo": ("preference", lambda f, o, p: ["dpo", f"data={f}", f"output_dir={o}", "max_steps=1"]),
    "kto": ("unpaired", lambda f, o, p: ["kto", f"data={f}", f"output_dir={o}", "max_steps=1"]),
    "reward train": ("preference", lambda f, o, p: ["reward", "train", f"data={f}", f"output_dir={o}", "max_steps=1"]),
    "reward eval": (
        "preference",
        lambda f, o, p: ["reward", "eval", f"model={p['rm']}", f"data={f}", f"output_dir={o}"],
    ),
    "reward noise-sweep": ("preference", lambda f, o, p: ["reward", "noise-sweep", f"data={f}", f"output_dir={o}"]),
    "judge": (
        "preference",
        lambda f, o, p: ["judge", "kind=reward_model", f"model={p['rm']}", f"data={f}", f"output_dir={o}"],
    ),
    "pairs": ("prompt", lambda f, o, p: ["pairs", f"prompts={f}", f"output_dir={o}"]),
    "coverage": ("prompt", lambda f, o, p: ["coverage", "prompts=heldout", f"reference={f}", f"output_dir={o}"]),
    "coverage (pool)": (
        "prompt",
        lambda f, o, p: ["coverage", "prompts=heldout", "reference=heldout", f"pool={f}", f"output_dir={o}"],
    ),
    "shift": ("preference", lambda f, o, p: ["shift", f"reference={f}", f"new={f}", f"output_dir={o}"]),
    "ppo": ("prompt", lambda f, o, p: ["ppo", f"prompts={f}", REWARD_FN, f"output_dir={o}", "steps=1"]),
    "grpo": ("prompt", lambda f, o, p: ["grpo", f"prompts={f}", REWARD_FN, f"output_dir={o}", "steps=1"]),
    "rloo": ("prompt", lambda f, o, p: ["rloo", f"prompts={f}", REWARD_FN, f"output_dir={o}", "steps=1"]),
    "reinforce-pp": (
        "prompt",
        lambda f, o, p: ["reinforce-pp", f"prompts={f}", REWARD_FN, f"output_dir={o}", "steps=1"],
    ),
    "online-dpo": ("prompt", lambda f, o, p: ["online-dpo", f"prompts={f}", REWARD_FN, f"output_dir={o}", "steps=1"]),
    "bon": ("prompt", lambda f, o, p: ["bon", f"prompts={f}", REWARD_FN, f"output_dir={o}"]),
    "bon-sweep": ("prompt", lambda f, o, p: ["bon-sweep", f"prompts={f}", REWARD_FN, f"output_dir={o}"]),
    "frontier": ("preference", lambda f, o, p: ["frontier", "methods=[dpo]", f"data={f}", f"output_dir={o}"]),
    "eval": ("prompt", lambda f, o, p: ["eval", "models={a: default}", f"prompts={f}", f"output_dir={o}"]),
    "eval (safety_prompts)": (
        "prompt",
        lambda f, o, p: ["eval", "models={a: default}", f"safety_prompts={f}", f"output_dir={o}", "num_prompts=1"],
    ),
    "agreement": ("judgments", lambda f, o, p: ["agreement", f]),
    "detect": ("metrics", lambda f, o, p: ["detect", f]),
    "annotate import-pairs": (
        "annotate_pairs",
        lambda f, o, p: ["annotate", "import-pairs", f, "-p", "demo", "--db", str(p["db"])],
    ),
    "annotate import-margins": (
        "margins",
        lambda f, o, p: ["annotate", "import-margins", f, "-p", "demo", "--db", str(p["db"])],
    ),
    "annotate import-judgments": (
        "judgments",
        lambda f, o, p: ["annotate", "import-judgments", f, "-p", "demo", "--db", str(p["db"])],
    ),
}


def applicable(kind: str, case: str) -> bool:
    if case == "duplicate_id":
        return kind in ID_FIELD
    if case == "nan":
        return kind != "metrics"  # a run that blew up logs NaN; detect reads it
    return True


READ_CASES = [
    (command, case) for command, (kind, _) in READERS.items() for case in FILE_CASES if applicable(kind, case)
]


@pytest.fixture
def annotate_db(tmp_path, monkeypatch, capsys) -> Path:
    """A store with project `demo` holding pairs p0..p3 (for the margin and judgment imports)."""
    db = tmp_path / "annotate.sqlite"
    assert run_cli(monkeypatch, capsys, "annotate", "init", "--db", str(db))[0] == 0
    project = tmp_path / "project.yaml"
    project.write_text("name: demo\n")
    assert run_cli(monkeypatch, capsys, "annotate", "create-project", str(project), "--db", str(db))[0] == 0
    pairs = data_file(tmp_path, "annotate_pairs", "good")
    assert run_cli(monkeypatch, capsys, "annotate", "import-pairs", str(pairs), "-p", "demo", "--db", str(db))[0] == 0
    return db


@pytest.mark.parametrize("command, case", READ_CASES, ids=[f"{c}-{k}" for c, k in READ_CASES])
def test_bad_file_is_one_line_naming_the_line(command, case, place, tmp_path, monkeypatch, capsys, request):
    kind, argv = READERS[command]
    extra = {"db": request.getfixturevalue("annotate_db")} if command.startswith("annotate") else {}
    path = data_file(tmp_path, kind, case)
    if command == "detect":
        (tmp_path / "run").mkdir()
        path = path.rename(tmp_path / "run" / ("metrics.jsonl" + (".gz" if path.suffix == ".gz" else "")))
    out = tmp_path / "out"
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv(str(path), str(out), {**place, **extra})), *EXPECT[case])
    assert not out.exists()


@pytest.mark.parametrize("command", ["data validate", "data import", "agreement", "detect"])
def test_utf8_byte_order_mark_is_accepted(command, place, tmp_path, monkeypatch, capsys):
    kind, argv = READERS[command]
    path = data_file(tmp_path, kind, "bom")
    code, out, err = run_cli(monkeypatch, capsys, *argv(str(path), str(tmp_path / "out"), place))
    assert code == 0, err


def test_nan_in_a_metrics_file_is_read(tmp_path, monkeypatch, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": NaN}\n')
    code, out, err = run_cli(monkeypatch, capsys, "detect", str(path))
    assert code == 0, err


# ------------------------------------------------------------------------------------------ config files

CONFIG_CASES = {
    "non_utf8": (b"lr: 1.0e-4\nrun_name: caf\xe9\n", [":2:", "not UTF-8"]),
    "deep": (b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", ["nested too deeply"]),
}
CONFIG_READERS = {
    "sft": lambda c: ["sft", "--config", c],
    "run": lambda c: ["run", c],
    "flywheel": lambda c: ["flywheel", c],
    "serve start": lambda c: ["serve", "start", "--config", c],
    "annotate create-project": lambda c: ["annotate", "create-project", c, "--db", str(Path(c).parent / "a.sqlite")],
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
@pytest.mark.parametrize("command", list(CONFIG_READERS))
def test_bad_config_file(command, case, tmp_path, monkeypatch, capsys):
    content, fragments = CONFIG_CASES[case]
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert_one_line_error(run_cli(monkeypatch, capsys, *CONFIG_READERS[command](str(path))), *fragments)


def test_config_file_with_byte_order_mark(tmp_path, monkeypatch, capsys):
    path = tmp_path / "sft.yaml"
    path.write_bytes(b"\xef\xbb\xbflr: -1\n")
    assert_one_line_error(run_cli(monkeypatch, capsys, "sft", "--config", str(path)), "key 'lr'")  # read, then bounded


# ------------------------------------------------------------------------------------------ hyper-parameters

TRAINING = {  # one step at most, should a bound ever be lost (the setting under test comes later and wins)
    "sft": ["sft", "max_steps=1"],
    "dpo": ["dpo", "data=PAIRS", "max_steps=1"],
    "kto": ["kto", "data=THUMBS", "max_steps=1"],
    "reward train": ["reward", "train", "data=PAIRS", "max_steps=1"],
    "ppo": ["ppo", REWARD_FN, "steps=1"],
    "grpo": ["grpo", REWARD_FN, "steps=1"],
    "rloo": ["rloo", REWARD_FN, "steps=1"],
    "reinforce-pp": ["reinforce-pp", REWARD_FN, "steps=1"],
    "online-dpo": ["online-dpo", REWARD_FN, "steps=1"],
}
CANNOT_TRAIN = {
    "lr=-1": "key 'lr'",
    "lr=0": "key 'lr'",
    "lr=.inf": "key 'lr'",
    "lr=.nan": "key 'lr'",
    "batch_size=0": "key 'batch_size'",
}
EXTRA_CANNOT_TRAIN = {
    "sft": {"epochs=0": "key 'epochs'", "grad_accum=0": "key 'grad_accum'", "max_steps=0": "key 'max_steps'"},
    "dpo": {"beta=0": "key 'beta'", "beta=.inf": "key 'beta'", "epochs=-1": "key 'epochs'"},
    "kto": {
        "beta=0": "key 'beta'",
        "desirable_weight=0": "key 'desirable_weight'",
        "undesirable_weight=-1": "key 'undesirable_weight'",
    },
    "reward train": {"epochs=0": "key 'epochs'", "max_grad_norm=0": "key 'max_grad_norm'"},
    "ppo": {"mini_batch_size=0": "key 'mini_batch_size'", "epochs_per_batch=0": "key 'epochs_per_batch'"},
    "grpo": {
        "mini_batch_size=0": "key 'mini_batch_size'",
        "group_size=1": "key 'group_size'",
        "clip_low=0": "key 'clip_low'",
        "clip_high=-0.1": "key 'clip_high'",
        "loss_type=ppo": "key 'loss_type'",
        "overlong_buffer=0": "key 'overlong_buffer'",
        "rollout_dtype=float16": "key 'rollout_dtype'",
        "is_cap=0.5": "key 'is_cap'",
        "is_warn_logratio=0": "key 'is_warn_logratio'",
    },
    "rloo": {"mini_batch_size=0": "key 'mini_batch_size'", "k=1": "key 'k'", "clip_low=0": "key 'clip_low'"},
    "reinforce-pp": {
        "clip_high=0": "key 'clip_high'",
        "gamma=1.5": "key 'gamma'",
        "group_size=0": "key 'group_size'",
        "advantage_estimator=reinforce_pp_baseline": "group_size to 2 or more",
        "advantage_estimator=gae": "key 'advantage_estimator'",
    },
    "online-dpo": {
        "beta=0": "key 'beta'",
        "loss_type=kto": "key 'loss_type'",
        "simpo_gamma=-1": "key 'simpo_gamma'",
        "label_smoothing=0.5": "key 'label_smoothing'",
        "kl_coef=0.1": "key 'kl_coef'",
        "mini_batch_size=0": "key 'mini_batch_size'",
    },
}
HYPER_CASES = [(c, s, f) for c in TRAINING for s, f in {**CANNOT_TRAIN, **EXTRA_CANNOT_TRAIN[c]}.items()]


@pytest.mark.parametrize("command, setting, fragment", HYPER_CASES, ids=[f"{c}-{s}" for c, s, _ in HYPER_CASES])
def test_settings_that_cannot_train_are_refused_up_front(command, setting, fragment, tmp_path, monkeypatch, capsys):
    pairs = data_file(tmp_path, "preference", "good")
    thumbs = data_file(tmp_path, "unpaired", "good")
    argv = [a.replace("PAIRS", str(pairs)).replace("THUMBS", str(thumbs)) for a in TRAINING[command]]
    out = tmp_path / "run"
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv, setting, f"output_dir={out}"), "command line", fragment)
    assert not out.exists()


def test_every_batch_size_and_learning_rate_is_bounded():
    """A subclass that changes a default keeps the bounds of its base (a bare `lr: float = 3e-4` drops gt=0)."""
    from rlhfkit.stages import STAGES

    for kind, stage in STAGES.items():
        fields = stage.config.model_fields
        for name, field in fields.items():
            if name == "lr" or name.endswith("batch_size") or name in ("epochs", "steps", "epochs_per_batch"):
                assert field.metadata, f"{kind}.{name} has no bound"


@pytest.mark.parametrize(
    "command, args",
    [
        ("sft", ["sft", "data=SFT"]),
        ("dpo", ["dpo", "data=PAIRS"]),
        ("kto", ["kto", "data=THUMBS"]),
        ("reward train", ["reward", "train", "data=PAIRS", "val_fraction=0.5"]),
        ("reward eval", ["reward", "eval", "model=RM", "data=PAIRS"]),
    ],
)
def test_max_length_leaving_no_room_for_responses(command, args, place, tmp_path, monkeypatch, capsys):
    def long_prompt(i: int) -> dict:
        return {"prompt": f"We had dinner at the little Italian place downtown last week with {i} friends."}

    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({**good_record("sft", i), **long_prompt(i)}) + "\n" for i in range(4)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**good_record("preference", i), **long_prompt(i)}) + "\n" for i in range(4)))
    thumbs = tmp_path / "thumbs.jsonl"
    thumbs.write_text("".join(json.dumps({**good_record("unpaired", i), **long_prompt(i)}) + "\n" for i in range(4)))
    subs = {"=SFT": sft, "=PAIRS": pairs, "=THUMBS": thumbs, "=RM": place["rm"]}
    argv = []
    for arg in args:
        for key, value in subs.items():
            arg = arg.replace(key, f"={value}")
        argv.append(arg)
    steps = [] if command == "reward eval" else ["max_steps=1"]
    out = tmp_path / "run"
    error = assert_one_line_error(
        run_cli(monkeypatch, capsys, *argv, "max_length=9", "max_prompt_length=64", f"output_dir={out}", *steps),
        "records dropped by truncation",
        "max_length=9",
    )
    assert "4 of 4" in error or "of 2" in error
    if command in ("sft", "dpo", "kto"):  # every record dropped, each named by its line and id
        assert "nothing left to train on" in error
        prefix = {"sft": "s", "dpo": "p", "kto": "k"}[command]
        assert ", ".join(f"line {i + 1} (id '{prefix}{i}')" for i in range(4)) in error
    else:  # reward train and eval split or score the pairs apart from their file: named by id
        assert "id 'p" in error
    assert not out.exists()


# ------------------------------------------------------------------------------------------ output paths

STAGE_OUTPUTS = {
    "sft": ["sft"],
    "pairs": ["pairs"],
    "judge": ["judge", "kind=causal_lm", "model=default", "data=PAIRS"],
    "dpo": ["dpo", "data=PAIRS"],
    "kto": ["kto", "data=THUMBS"],
    "ppo": ["ppo", REWARD_FN],
    "grpo": ["grpo", REWARD_FN],
    "rloo": ["rloo", REWARD_FN],
    "reinforce-pp": ["reinforce-pp", REWARD_FN],
    "online-dpo": ["online-dpo", REWARD_FN],
    "bon": ["bon", REWARD_FN],
    "bon-sweep": ["bon-sweep", REWARD_FN],
    "frontier": ["frontier", "methods=[dpo]", "data=PAIRS"],
    "eval": ["eval", "models={a: default}"],
    "coverage": ["coverage", "prompts=heldout", "reference=heldout"],
    "shift": ["shift", "reference=PAIRS", "new=PAIRS"],
    "gate": ["gate", "DEFAULT", "thresholds={mean_gold: '>= 0'}"],
    "reward train": ["reward", "train", "data=PAIRS"],
    "reward eval": ["reward", "eval", "model=RM", "data=PAIRS"],
    "reward noise-sweep": ["reward", "noise-sweep", "data=PAIRS"],
    "run": ["run", "PIPELINE"],
    "demo": ["demo"],
    "flywheel": ["flywheel", "--demo"],
}
OTHER_OUTPUTS = {
    "data import": lambda o, f: ["data", "import", str(f), "--format", "trl", "--out", o],
    "agreement": lambda o, f: ["agreement", str(f), "--json", o],
    "report": lambda o, f: ["report", str(f.parent), "--out", o],
    "export": lambda o, f: ["export", str(DEFAULT), o],
    "annotate export": lambda o, f: [
        "annotate",
        "export",
        "-p",
        "demo",
        "--out",
        o,
        "--db",
        str(f.parent / "a.sqlite"),
    ],
    "annotate stats": lambda o, f: ["annotate", "stats", "-p", "demo", "--json", o, "--db", str(f.parent / "a.sqlite")],
}
OUTPUT_CASES = {
    "is_a_file": ("FILE", "is a file"),
    "parent_is_a_file": ("FILE/sub", "is a file"),
    "not_writable": (str(UNWRITABLE / "out"), "cannot write"),
}
FILE_OUTPUT_CASES = {**OUTPUT_CASES, "is_a_file": ("FOLDER", "is a folder")}  # a file output given a folder


def output_for(case: str, place: dict[str, Path], cases: dict = OUTPUT_CASES) -> str:
    return cases[case][0].replace("FILE", str(place["file"])).replace("FOLDER", str(place["root"]))


def pipeline_file(folder: Path) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text("stages:\n  - {name: sft, stage: sft, config: {max_steps: 1}}\n")
    return path


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
@pytest.mark.parametrize("command", list(STAGE_OUTPUTS))
def test_stage_output_dir_that_cannot_be_written(command, case, place, tmp_path, monkeypatch, capsys):
    pairs = data_file(tmp_path, "preference", "good")
    thumbs = data_file(tmp_path, "unpaired", "good")
    subs = {
        "PAIRS": str(pairs),
        "RM": str(place["rm"]),
        "DEFAULT": str(DEFAULT),
        "PIPELINE": str(pipeline_file(tmp_path)),
    }
    argv = [a.replace("=PAIRS", f"={pairs}").replace("=THUMBS", f"={thumbs}") for a in STAGE_OUTPUTS[command]]
    argv = [subs.get(a, a.replace("=RM", f"={place['rm']}")) for a in argv]
    target = output_for(case, place)
    assert_one_line_error(
        run_cli(monkeypatch, capsys, *argv, f"output_dir={target}"), "output_dir", OUTPUT_CASES[case][1]
    )
    assert place["file"].read_text() == "not a folder\n"


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
@pytest.mark.parametrize("command", list(OTHER_OUTPUTS))
def test_output_file_that_cannot_be_written(command, case, place, tmp_path, monkeypatch, capsys):
    pairs = data_file(tmp_path, "preference", "good")
    if command == "agreement":
        pairs = data_file(tmp_path, "judgments", "good")
    if command == "report":
        (tmp_path / "summary.json").write_text("{}\n")
    if command.startswith("annotate"):
        db = str(tmp_path / "a.sqlite")
        assert run_cli(monkeypatch, capsys, "annotate", "init", "--db", db)[0] == 0
        project = tmp_path / "project.yaml"
        project.write_text("name: demo\n")
        assert run_cli(monkeypatch, capsys, "annotate", "create-project", str(project), "--db", db)[0] == 0
    cases = OUTPUT_CASES if command == "export" else FILE_OUTPUT_CASES  # export writes a folder
    target = output_for(case, place, cases)
    assert_one_line_error(run_cli(monkeypatch, capsys, *OTHER_OUTPUTS[command](target, pairs)), cases[case][1])
    assert place["file"].read_text() == "not a folder\n"


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
@pytest.mark.parametrize(
    "command",
    [
        ["annotate", "init", "--db", "DB"],
        ["annotate", "serve", "--db", "DB"],
        ["serve", "keys", "add", "k", "--db", "DB"],
        ["serve", "keys", "list", "--db", "DB"],
        ["serve", "log", "--db", "DB"],
    ],
    ids=lambda c: " ".join(c[:3]) if isinstance(c, list) else c,
)
def test_store_that_cannot_be_made(command, case, place, monkeypatch, capsys):
    db = output_for(case, place) + ("" if case == "is_a_file" else "/store.sqlite")
    if case == "is_a_file":
        db = str(place["root"])  # a folder given as the store file
    argv = [db if a == "DB" else a for a in command]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv))


def test_default_home_that_is_a_file(place, monkeypatch, capsys):
    result = run_cli(monkeypatch, capsys, "default", "build", env={"RLHFKIT_HOME": str(place["file"])})
    assert_one_line_error(result, "RLHFKIT_HOME", "is a file")
    code, out, err = run_cli(monkeypatch, capsys, "default", "info", env={"RLHFKIT_HOME": str(place["file"])})
    assert code == 0 and "not built" in out, err


def test_failed_run_leaves_no_run_folder(place, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken-weights"
    shutil.copytree(DEFAULT, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "runs" / "sft"
    assert_one_line_error(run_cli(monkeypatch, capsys, "sft", f"model={broken}", f"output_dir={out}", "max_steps=1"))
    assert not out.exists()
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old run\n")
    assert_one_line_error(run_cli(monkeypatch, capsys, "sft", f"model={broken}", f"output_dir={out}", "max_steps=1"))
    assert (out / "keep.txt").read_text() == "old run\n"


# ------------------------------------------------------------------------------------------ models

NO_TOKENIZER = {
    "sft": ["sft", "model=M", "output_dir=O", "max_steps=1"],
    "dpo": ["dpo", "model=M", "data=PAIRS", "output_dir=O", "max_steps=1"],
    "kto": ["kto", "model=M", "data=THUMBS", "output_dir=O", "max_steps=1"],
    "reward train": ["reward", "train", "model=M", "data=PAIRS", "output_dir=O", "max_steps=1"],
    "pairs": ["pairs", "model=M", "output_dir=O", "num_prompts=2"],
    "judge": ["judge", "kind=causal_lm", "model=M", "data=PAIRS", "output_dir=O"],
    "eval": ["eval", "models={a: M}", "output_dir=O", "num_prompts=1"],
    "export": ["export", "M", "O"],
}


@pytest.mark.parametrize("command", list(NO_TOKENIZER))
def test_model_directory_without_tokenizer(command, place, tmp_path, monkeypatch, capsys):
    pairs = data_file(tmp_path, "preference", "good")
    out = tmp_path / "out"
    thumbs = data_file(tmp_path, "unpaired", "good")
    subs = {"M": str(place["no_tokenizer"]), "PAIRS": str(pairs), "THUMBS": str(thumbs), "O": str(out)}
    argv = []
    for arg in NO_TOKENIZER[command]:
        for key, value in subs.items():
            arg = arg.replace(f"={key}", f"={value}").replace(f": {key}}}", f": {value}}}")
        argv.append(subs.get(arg, arg))
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "no-tokenizer", "has no tokenizer")
    assert not out.exists()


CAUSAL_AS_REWARD = {
    "reward eval": ["reward", "eval", "model=default", "data=PAIRS", "output_dir=O"],
    "judge": ["judge", "kind=reward_model", "model=default", "data=PAIRS", "output_dir=O"],
    "ppo": ["ppo", "rewards=[{model: default}]", "output_dir=O", "steps=1"],
    "grpo": ["grpo", "rewards=[{model: default}]", "output_dir=O", "steps=1"],
    "reinforce-pp": ["reinforce-pp", "rewards=[{model: default}]", "output_dir=O", "steps=1"],
    "online-dpo": ["online-dpo", "rewards=[{model: default}]", "output_dir=O", "steps=1"],
    "bon": ["bon", "rewards=[{model: default}]", "output_dir=O", "num_prompts=1"],
    "bon-sweep": ["bon-sweep", "rewards=[{model: default}]", "output_dir=O", "num_prompts=1", "max_n=4"],
    "shift": ["shift", "reward_model=default", "reference=PAIRS", "new=PAIRS", "output_dir=O"],
    "eval": [
        "eval",
        "models={a: default}",
        "reward_model=default",
        "output_dir=O",
        "num_prompts=1",
        "max_new_tokens=2",
    ],
}


@pytest.mark.parametrize("command", list(CAUSAL_AS_REWARD))
def test_causal_lm_given_as_reward_model(command, tmp_path, monkeypatch, capsys):
    pairs = data_file(tmp_path, "preference", "good")
    out = tmp_path / "out"
    argv = [a.replace("=PAIRS", f"={pairs}").replace("=O", f"={out}") for a in CAUSAL_AS_REWARD[command]]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "not a reward model", "reward train")
    assert not out.exists()


COVERAGE_SETTINGS = {
    "threshold=1.5": "key 'threshold'",
    "target=0": "key 'target'",
    "clusters=0": "key 'clusters'",
    "max_picks=3": "max_picks needs a pool",
}


@pytest.mark.parametrize("setting", list(COVERAGE_SETTINGS))
def test_coverage_settings_are_bounded(setting, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["coverage", "prompts=heldout", "reference=heldout", setting, f"output_dir={out}"]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "command line", COVERAGE_SETTINGS[setting])
    assert not out.exists()


PARETO_SETTINGS = {
    "weights=[[1, -0.5]]": "weights[0] [1.0, -0.5]: every weight must be >= 0",
    "weights=[[0, 0]]": "weights[0] [0.0, 0.0]: at least one weight must be > 0",
    "weights=[]": "weights is empty",
    "grid=1": "key 'grid'",
    "grpo={steps: 0}": "grpo",
    "rewards=[{function: default}]": "give exactly one of reward_model",
}


@pytest.mark.parametrize("setting", list(PARETO_SETTINGS))
def test_pareto_settings_are_checked(setting, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["pareto", "reward_model=RM", setting, f"output_dir={out}"]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "command line", PARETO_SETTINGS[setting])
    assert not out.exists()


def test_ensemble_with_a_missing_member(place, tmp_path, monkeypatch, capsys):
    ensemble = tmp_path / "ensemble"
    shutil.copytree(place["rm"], ensemble / "member-0")
    (ensemble / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    pairs = data_file(tmp_path, "preference", "good")
    out = tmp_path / "out"
    argv = ["reward", "eval", f"model={ensemble}", f"data={pairs}", f"output_dir={out}"]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "ensemble.json", "member-1 missing", "ensemble=K")
    assert not out.exists()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (["ensemble_form=shared_backbone"], "needs ensemble=K with K >= 2"),
        (["ensemble=3", "ensemble_form=shared_backbone", "lora.r=4"], "lora and fsdp do not apply"),
        (["ensemble=3", "ensemble_form=shared"], "ensemble_form"),
    ],
)
def test_shared_backbone_ensemble_settings(setting, expected, tmp_path, monkeypatch, capsys):
    pairs = data_file(tmp_path, "preference", "good")
    out = tmp_path / "out"
    argv = ["reward", "train", f"data={pairs}", *setting, f"output_dir={out}"]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "command line", expected)
    assert not out.exists()


def test_import_margins_with_an_unknown_ensemble_method(place, annotate_db, monkeypatch, capsys):
    argv = ["annotate", "import-margins", "-p", "demo", "--db", str(annotate_db), "--reward-model", str(place["rm"])]
    result = run_cli(monkeypatch, capsys, *argv, "--ensemble-method", "max")
    assert_one_line_error(result, "--ensemble-method max", "mean, min, uwo")


# ------------------------------------------------------------------------------------------ imports


def test_hh_import_reports_every_skipped_line(tmp_path, monkeypatch, capsys):
    rows = [good_record("hh", i) for i in range(60)]
    skipped = list(range(2, 60, 5))  # 12 rows with an empty chosen reply
    for i in skipped:
        rows[i]["chosen"] = f"\n\nHuman: Hi {i}\n\nAssistant: "
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.jsonl"
    code, stdout, err = run_cli(monkeypatch, capsys, "data", "import", str(path), "--format", "hh", "--out", str(out))
    assert code == 0, err
    assert "imported 48 of 60" in stdout and "12 skipped" in stdout
    report = json.loads((tmp_path / "pairs.import.json").read_text())
    assert [row["line"] for row in report["skipped"]] == [i + 1 for i in skipped]
    assert str(tmp_path / "pairs.import.json") in stdout


def test_gz_output_round_trips(tmp_path, monkeypatch, capsys):
    path = data_file(tmp_path, "preference", "good")
    out = tmp_path / "pairs.jsonl.gz"
    assert run_cli(monkeypatch, capsys, "data", "import", str(path), "-f", "trl", "--out", str(out))[0] == 0
    code, stdout, err = run_cli(monkeypatch, capsys, "data", "validate", str(out))
    assert code == 0 and "4 valid preference records" in stdout, err


# ------------------------------------------------------------------------------------------ every command


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group) or hasattr(command, "commands"):
            names += leaf_commands(command, (*prefix, name))
        else:
            names.append(" ".join((*prefix, name)))
    return names


def battery() -> Counter:
    """Cases per command (a command's variants, e.g. `data import (trl)`, count for it)."""
    counts: Counter = Counter()

    def add(command: str, n: int = 1) -> None:
        counts[command.split(" (")[0]] += n

    for command, _ in READ_CASES:
        add(command)
    for command in ("data validate", "data import", "agreement", "detect"):
        add(command)  # byte-order mark accepted
    add("detect")  # NaN in metrics read
    for command in CONFIG_READERS:
        add(command, len(CONFIG_CASES))
    add("sft")  # BOM in a config file
    for command, _, _ in HYPER_CASES:
        add(command)
    for command in ("sft", "dpo", "kto", "reward train", "reward eval"):
        add(command)  # max_length
    for command in STAGE_OUTPUTS:
        add(command, len(OUTPUT_CASES))
    for command in OTHER_OUTPUTS:
        add(command, len(OUTPUT_CASES))
    for command in ("annotate init", "annotate serve", "serve keys add", "serve keys list", "serve log"):
        add(command, len(OUTPUT_CASES))
    add("default build")
    add("default info")
    add("sft")  # failed run
    for command in NO_TOKENIZER:
        add(command)
    for command in CAUSAL_AS_REWARD:
        add(command)
    add("data import", 2)  # every skipped line; .gz output
    add("coverage", len(COVERAGE_SETTINGS))
    add("pareto", len(PARETO_SETTINGS))
    add("reward eval")  # an ensemble with a missing member
    add("reward train", 3)  # shared-backbone ensemble settings
    add("annotate import-margins")  # an unknown ensemble method
    add("config show")
    add("registry list")
    add("rollback")
    for command in ("annotate invite", "annotate override", "annotate stats", "annotate export", "serve keys revoke"):
        add(command)
    add("annotate revoke", 3)  # missing store; no target; an annotator without a project
    return counts


def test_every_command_is_in_the_battery():
    app = typer.main.get_command(cli.app)
    missing = [name for name in leaf_commands(app) if not battery()[name]]
    assert not missing, f"commands with no bad-input case: {missing}"


def test_unknown_stage_and_missing_stores(place, tmp_path, monkeypatch, capsys):
    assert_one_line_error(run_cli(monkeypatch, capsys, "config", "show", "nosuch"), "unknown stage 'nosuch'")
    not_sqlite = tmp_path / "root"
    not_sqlite.mkdir()
    (not_sqlite / "registry.sqlite").write_text("not a database\n")
    assert_one_line_error(run_cli(monkeypatch, capsys, "registry", "list", "--root", str(not_sqlite)), "registry")
    assert_one_line_error(run_cli(monkeypatch, capsys, "rollback", "--root", str(not_sqlite)), "registry")
    db = str(tmp_path / "missing.sqlite")
    for argv in (
        ["annotate", "invite", "-p", "demo", "ann"],
        ["annotate", "override", "-p", "demo", "ann", "--reason", "x"],
        ["annotate", "stats", "-p", "demo"],
        ["annotate", "export", "-p", "demo", "--out", str(tmp_path / "x.jsonl")],
        ["serve", "keys", "revoke", "k"],
        ["annotate", "revoke", "ann", "-p", "demo"],
    ):
        assert_one_line_error(run_cli(monkeypatch, capsys, *argv, "--db", db))
    assert_one_line_error(run_cli(monkeypatch, capsys, "annotate", "revoke", "--db", db), "give one of")
    assert_one_line_error(run_cli(monkeypatch, capsys, "annotate", "revoke", "ann", "--db", db), "--project")


# ------------------------------------------------------------------------------------------ objectives (#14)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["reward", "train", "data=LABELS", "max_steps=1"],
            ["labels.jsonl:2: field 'labels.brevity'", "chosen, rejected, tie"],
        ),
        (["reward", "train", "data=PAIRS", "objectives=[quality, quality]"], ["objectives", "distinct"]),
        (["reward", "train", "data=LABELS_OK", "use_margin=true"], ["use_margin and center_coef", "per-objective"]),
        (["pairs", "objectives=[quality, tone]", "num_prompts=2"], ["objectives.tone", "no objective 'tone'"]),
    ],
    ids=["bad-label", "repeated-objective", "margin-with-labels", "unknown-objective"],
)
def test_objective_mistakes_are_one_line_errors(monkeypatch, capsys, tmp_path, args, fragments):
    pairs = [good_record("preference", i) for i in range(4)]
    labelled = [
        {**p, "labels": {"quality": "chosen", "brevity": "chosen" if i != 1 else "better"}} for i, p in enumerate(pairs)
    ]
    files = {"LABELS": tmp_path / "labels.jsonl", "PAIRS": tmp_path / "pairs.jsonl", "LABELS_OK": tmp_path / "ok.jsonl"}
    files["LABELS"].write_bytes(b"".join(line(r) for r in labelled))
    files["PAIRS"].write_bytes(b"".join(line(r) for r in pairs))
    files["LABELS_OK"].write_bytes(b"".join(line({**r, "labels": {"quality": "chosen"}}) for r in pairs))
    args = [a.split("=")[0] + "=" + str(files[a.split("=")[1]]) if a.split("=")[-1] in files else a for a in args]
    assert_one_line_error(run_cli(monkeypatch, capsys, *args, f"output_dir={tmp_path / 'out'}"), *fragments)
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


# ------------------------------------------------------------------------------------------ active selection (#14.5)

SELECTION_MISTAKES = {
    "unknown-method": (["selection=best", "budget=1"], ["key 'selection'", "'all', 'disagreement' or 'random'"]),
    "budget-over-pool": (["selection=random", "budget=5"], ["budget=5 is more than the pool", "num_prompts=2"]),
    "no-budget": (["selection=random"], ["selection=random needs budget=N"]),
    "no-ensemble-given": (["selection=disagreement", "budget=1"], ["needs selection_model=DIR"]),
    "single-model": (
        ["selection=disagreement", "budget=1", "selection_model=RM"],
        ["selection_model=", "a single reward model, not an ensemble", "ensemble=K"],
    ),
    "budget-without-selection": (["budget=1"], ["set selection=disagreement or random"]),
}


@pytest.mark.parametrize("case", list(SELECTION_MISTAKES))
def test_selection_mistakes_are_one_line_errors(case, place, tmp_path, monkeypatch, capsys):
    settings, fragments = SELECTION_MISTAKES[case]
    out = tmp_path / "out"
    argv = ["pairs", "num_prompts=2", f"output_dir={out}", *(s.replace("=RM", f"={place['rm']}") for s in settings)]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), *fragments)
    assert not (out / "pairs.jsonl").exists()


def test_import_margins_with_a_disagreement_out_of_range(annotate_db, tmp_path, monkeypatch, capsys):
    rows = tmp_path / "margins.jsonl"
    rows.write_text('{"pair_id": "p0", "margin": 0.5, "disagreement": 0.1}\n{"pair_id": "p1", "disagreement": 0.9}\n')
    argv = ["annotate", "import-margins", str(rows), "-p", "demo", "--db", str(annotate_db)]
    assert_one_line_error(run_cli(monkeypatch, capsys, *argv), "margins.jsonl:2: field 'disagreement'", "[0, 0.5]")
