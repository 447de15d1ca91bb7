"""Acceptance gate (thresholds on eval metrics) and the SQLite checkpoint registry with rollback."""

from __future__ import annotations

import sqlite3

import pytest
from pydantic import ValidationError

from rlhfkit.config import build_config
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.evaluate.gate import GateResult, GateSettings, Threshold, evaluate_gate, format_gate, parse_threshold
from rlhfkit.evaluate.registry import FILENAME, Registry, RegistryError, format_registry

# one `results` entry of an eval.json
PPO_EVAL = {
    "model": "runs/ppo-t1/model",
    "samples": 576,
    "mean_length": 26.32,
    "distinct_2": 0.0985,
    "truncated_share": 0.0,
    "mean_gold": 0.918,
    "gold_stderr": 0.0037,
    "mean_reward": 2.64,
}


# ----------------------------------------------------------------------------------------------- gate


def test_gate_rows_pass_and_fail_with_measured_values():
    settings = GateSettings(
        thresholds=[
            Threshold(metric="mean_gold", op=">=", value=0.4),
            Threshold(metric="distinct_2", op=">=", value=0.12),
            Threshold(metric="mean_length", op="<", value=40),
            Threshold(metric="truncated_share", op="<=", value=0.0),
            Threshold(metric="mean_reward", op=">", value=2.64),
        ]
    )
    result = evaluate_gate(PPO_EVAL, settings)
    assert [(r.metric, r.measured, r.passed) for r in result.rows] == [
        ("mean_gold", 0.918, True),
        ("distinct_2", 0.0985, False),
        ("mean_length", 26.32, True),
        ("truncated_share", 0.0, True),
        ("mean_reward", 2.64, False),  # strict > at the bound fails
    ]
    assert all(r.reason is None for r in result.rows)
    assert not result.passed
    assert evaluate_gate(PPO_EVAL, GateSettings(thresholds=["mean_gold >= 0.4", "distinct_2 >= 0.08"])).passed


def test_a_missing_or_non_numeric_metric_fails_its_row():
    settings = GateSettings(thresholds=["mean_gold >= 0.4", "win_rate >= 0.5", "model > 0", "kl <= 10"])
    result = evaluate_gate({**PPO_EVAL, "kl": float("nan")}, settings)
    gold, win, model, kl = result.rows
    assert gold.passed
    assert not win.passed and win.measured is None and "missing" in win.reason and "mean_gold" in win.reason
    assert not model.passed and model.measured is None and "not a number" in model.reason
    assert not kl.passed and kl.measured is None and "nan" in kl.reason
    assert not result.passed


def test_dict_form():
    settings = GateSettings(
        thresholds={"mean_gold": ">= 0.4", "distinct_2": ">=0.08", "mean_length": "< 1e2", "kl": "<= -1"}
    )
    assert [str(t) for t in settings.thresholds] == [
        "mean_gold >= 0.4",
        "distinct_2 >= 0.08",
        "mean_length < 100",
        "kl <= -1",
    ]
    loaded = build_config(GateSettings, {"thresholds": {"mean_gold": ">= 0.4"}}, source="gate.yaml")
    assert loaded.thresholds == [Threshold(metric="mean_gold", op=">=", value=0.4)]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"mean_gold": 0.4}, "'mean_gold: 0.4': expected a condition like '>= 0.4'"),
        ({"mean_gold": "=> 0.4"}, "'mean_gold: => 0.4': expected a condition"),
        ({"mean_gold": ">= "}, "'mean_gold: >= ': expected a condition"),
        ({"mean_gold": ">= high"}, "'mean_gold: >= high': 'high' is not a number"),
        ({"mean_gold": ">= inf"}, "must be a finite number"),
        (["mean_gold >="], "'mean_gold >=': expected 'METRIC OP VALUE'"),
        (["mean_gold == 0.4"], "expected 'METRIC OP VALUE'"),
    ],
)
def test_bad_entries_are_config_errors_naming_the_entry(entry, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        GateSettings(thresholds=entry)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(GateSettings, {"thresholds": entry}, source="gate.yaml")


def test_list_form_is_validated():
    with pytest.raises(ConfigError, match=r"gate.yaml: key 'thresholds.0.op'"):
        build_config(GateSettings, {"thresholds": [{"metric": "kl", "op": "==", "value": 1}]}, source="gate.yaml")
    with pytest.raises(ValidationError):
        GateSettings(thresholds=[])  # a gate that checks nothing would pass everything
    with pytest.raises(ValidationError):
        GateSettings(thresholds=["kl < 1"], extra=1)
    assert parse_threshold(" unsafe_rate<0.01 ") == Threshold(metric="unsafe_rate", op="<", value=0.01)


def test_format_gate():
    result = evaluate_gate(PPO_EVAL, GateSettings(thresholds=["mean_gold >= 0.4", "distinct_2 >= 0.12", "kl <= 10"]))
    lines = format_gate(result).splitlines()
    assert lines[0].split() == ["metric", "op", "bound", "measured", "result"]
    assert lines[1].split() == ["mean_gold", ">=", "0.4", "0.918", "PASS"]
    assert lines[2].split() == ["distinct_2", ">=", "0.12", "0.0985", "FAIL"]
    assert lines[3].split()[:5] == ["kl", "<=", "10", "-", "FAIL"] and "missing" in lines[3]
    assert lines[4] == "gate: FAIL (1/3 thresholds pass)"


def test_gate_result_round_trips_as_a_dict():
    result = evaluate_gate(PPO_EVAL, GateSettings(thresholds=["mean_gold >= 0.4", "kl <= 10"]))
    assert GateResult.from_dict(result.to_dict()) == result


# ----------------------------------------------------------------------------------------------- registry


def gate(passed: bool) -> GateResult:
    bound = 0.4 if passed else 0.95
    return evaluate_gate(PPO_EVAL, GateSettings(thresholds=[f"mean_gold >= {bound}"]))


def checkpoint(tmp_path, name: str) -> str:
    path = tmp_path / "runs" / name
    path.mkdir(parents=True)
    return str(path)


LINEAGE = {
    "sft_model": "runs/demo1/sft/model",
    "reward_model": "runs/demo1/reward/model",
    "data": ["prompts.jsonl"],
    "config": "configs/ppo.yaml",
    "steps": 60,
}


@pytest.fixture
def three(tmp_path):
    """Two passing checkpoints then a failing one, which is current."""
    registry = Registry(tmp_path / "root")
    ids = [
        registry.register(checkpoint(tmp_path, name), {"mean_gold": g}, gate(p), {**LINEAGE, "name": name})
        for name, g, p in [("a", 0.8, True), ("b", 0.9, True), ("c", 0.3, False)]
    ]
    return registry, ids


def test_register_and_list_round_trip(three, tmp_path):
    registry, ids = three
    rows = registry.list()
    assert [r.id for r in rows] == ids and ids == sorted(ids)
    assert [r.passed for r in rows] == [True, True, False]
    assert [r.current for r in rows] == [False, False, True]
    assert rows[0].path == str((tmp_path / "runs" / "a").resolve())
    assert rows[0].metrics == {"mean_gold": 0.8}
    assert rows[0].lineage == {**LINEAGE, "name": "a"}
    assert rows[2].gate == gate(False)
    assert rows[0].created.endswith("+00:00")
    assert registry.current() == rows[2]
    assert (tmp_path / "root" / FILENAME).is_file()


def test_rollback_walks_back_through_passing_checkpoints(three):
    registry, (a, b, c) = three
    assert registry.rollback().id == b  # the current one fails: the newest passing
    assert registry.current().id == b
    assert registry.rollback().id == a  # b passes: the newest passing before it
    with pytest.raises(RegistryError, match="no checkpoint registered before the current checkpoint"):
        registry.rollback()
    assert registry.current().id == a  # a failed rollback changes nothing


def test_rollback_with_none_passing_raises(tmp_path):
    registry = Registry(tmp_path)
    registry.register(checkpoint(tmp_path, "a"), {}, gate(False), {})
    registry.register(checkpoint(tmp_path, "b"), {}, None, {})  # never gated: not known to pass
    with pytest.raises(RegistryError, match="cannot roll back, no checkpoint in the registry passed its gate"):
        registry.rollback()
    assert isinstance(RegistryError("x"), RlhfkitError)
    assert Registry(tmp_path / "empty").current() is None
    with pytest.raises(RegistryError):
        Registry(tmp_path / "empty").rollback()


def test_persistence_across_instances(three, tmp_path):
    registry, (a, b, c) = three
    registry.set_current(a)
    again = Registry(tmp_path / "root")
    assert again.list() == registry.list()
    assert again.current().id == a
    assert again.current().lineage["sft_model"] == LINEAGE["sft_model"]


def test_record_gate_and_set_current(three, tmp_path):
    registry, (a, b, c) = three
    registry.record_gate(c, gate(True))
    assert registry.get(c).passed and registry.get(c).gate == gate(True)
    assert registry.rollback().id == b  # c now passes, so rollback goes to the passing one before it
    d = registry.register(checkpoint(tmp_path, "d"), {}, None, {}, make_current=False)
    assert registry.current().id == b and registry.get(d).passed is None
    with pytest.raises(RegistryError, match="no checkpoint with id 99"):
        registry.set_current(99)
    with pytest.raises(RegistryError, match="no checkpoint with id 99"):
        registry.record_gate(99, gate(True))
    assert registry.current().id == b


def test_bad_input_loses_no_rows(three, tmp_path):
    registry, ids = three
    before = registry.list()
    with pytest.raises(RegistryError, match="checkpoint not found"):
        registry.register(tmp_path / "nowhere", {}, None, {})
    with pytest.raises(RegistryError, match="metrics must be JSON"):
        registry.register(checkpoint(tmp_path, "e"), {"mean_gold": float("nan")}, None, {})
    with pytest.raises(RegistryError, match="lineage must be JSON"):
        registry.register(checkpoint(tmp_path, "f"), {}, None, {"when": object()})
    assert registry.list() == before


def test_schema_version_and_broken_files(tmp_path):
    Registry(tmp_path / "a")
    with sqlite3.connect(tmp_path / "a" / FILENAME) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        conn.execute("UPDATE schema_version SET version = 2")
    with pytest.raises(RegistryError, match="schema version 2 was written by a newer rlhfkit"):
        Registry(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / FILENAME).write_text("not a database, just text " * 100)
    with pytest.raises(RegistryError, match=r"registry.sqlite: cannot use the registry"):
        Registry(tmp_path / "b")


def test_format_registry(three):
    registry, (a, b, c) = three
    lines = format_registry(registry.list()).splitlines()
    assert lines[0].split() == ["id", "created", "gate", "path", "metrics"]
    assert lines[1].split()[0] == str(a) and "PASS" in lines[1] and "mean_gold=0.8" in lines[1]
    assert lines[3].startswith("*") and "FAIL" in lines[3]
    assert format_registry([]) == "registry: no checkpoints registered"
