"""`rlhfkit annotate ...` from the shell: a project from a YAML file, machine judgments, invitations, overrides,
stats and export that `rlhfkit agreement` and the preference loader read; and the errors a user can cause,
each one line starting with `error:` and exit status 2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rlhfkit.cli import main
from rlhfkit.data.records import load_records
from rlhfkit.feedback.agreement import agreement_report
from rlhfkit.feedback.annotate.app import create_app


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `rlhfkit ARGS` through the real entry point (main(), which turns errors into `error: ...` and exit 2)."""
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    return stop.value.code or 0, captured.out, captured.err


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def review_pair(i: int, prefix: str = "pair-") -> dict:
    """A pair as `rlhfkit pairs` writes it: chosen is the good review, metadata carries the panel's votes."""
    return {
        "id": f"{prefix}{i}",
        "prompt": f"We had dinner at place {prefix}{i}.",
        "chosen": f" Lovely food {i}, kind staff.",
        "rejected": f" Cold food {i}, rude staff.",
        "annotator": "panel",
        "metadata": {"votes": {"sim-0": "a"}, "gold_chosen": 0.8},
    }


@pytest.fixture
def store(tmp_path, monkeypatch, capsys):
    """A store made by `rlhfkit annotate init` with a project made by `create-project` from a YAML file."""
    db = str(tmp_path / "store.sqlite")
    code, out, _ = run_cli(monkeypatch, capsys, "annotate", "init", "--db", db, "--name", "ada")
    assert code == 0 and "annotation store ready" in out
    token = re.search(r"admin token for 'ada' \(shown once, stored only as a hash\): (\S+)", out).group(1)
    write_rows(tmp_path / "pairs.jsonl", [review_pair(i) for i in range(8)])
    write_rows(
        tmp_path / "calibration.jsonl",
        [
            {
                "id": f"cal-{i}",
                "prompt": f"Calibration {i}.",
                "response_a": "Good and clear.",
                "response_b": "Bad and vague.",
                "answer": "a",
            }
            for i in range(2)
        ],
    )
    write_rows(
        tmp_path / "anchors.jsonl", [review_pair(i, "anchor-") for i in range(2)]
    )  # chosen/rejected: the answer is a
    (tmp_path / "project.yaml").write_text(
        "name: reviews\nrubric: |\n  # Which review is more helpful?\n  - prefer specific details\ncriteria: "
        "[helpfulness]\n"
        "overlap: 2\nanchor_rate: 0.2\nbatch_size: 5\npairs: pairs.jsonl\ncalibration: calibration.jsonl\nanchors: "
        "anchors.jsonl\n"
    )
    code, out, err = run_cli(
        monkeypatch, capsys, "annotate", "create-project", str(tmp_path / "project.yaml"), "--db", db
    )
    assert code == 0, err
    assert (
        "created project 'reviews'" in out and "imported 8 main pairs" in out and "imported 2 calibration pairs" in out
    )
    assert "imported 2 anchor pairs" in out
    return {"db": db, "admin": token, "dir": tmp_path}


def label(client: TestClient, token: str, pick_good: bool = True) -> int:
    """Label everything in this annotator's queue through the API, choosing the good (or the bad) response."""
    headers, count = {"Authorization": f"Bearer {token}"}, 0
    while True:
        result = client.post("/api/projects/reviews/next", headers=headers).json()
        if result["state"] != "assignment":
            return count
        item = result["assignment"]
        good_side = "left" if item["left"].lstrip().startswith(("Lovely", "Good")) else "right"
        side = (
            good_side if pick_good or item["phase"] == "calibration" else ("right" if good_side == "left" else "left")
        )
        response = client.post(
            f"/api/projects/reviews/assignments/{item['id']}/judgment",
            headers=headers,
            json={"choice": side, "criteria": {"helpfulness": side}},
        )
        assert response.status_code == 200
        count += 1


def test_a_project_from_the_shell_to_an_export_rlhfkit_reads(store, monkeypatch, capsys):
    db, folder = store["db"], store["dir"]
    # the simulated panel's judgments, as `rlhfkit pairs` writes them (no annotator_kind: --kind says which machine)
    write_rows(
        folder / "judgments.jsonl",
        [{"pair_id": f"pair-{i}", "annotator": "sim-0", "choice": "a", "shown_first": "b"} for i in range(8)],
    )
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "import-judgments",
        str(folder / "judgments.jsonl"),
        "--project",
        "reviews",
        "--kind",
        "panel",
        "--db",
        db,
    )
    assert code == 0 and out.strip() == "imported 8 machine judgments from sim-0 into 'reviews'"
    write_rows(folder / "margins.jsonl", [{"pair_id": f"pair-{i}", "margin": 0.1 * i} for i in range(8)])
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "import-margins",
        str(folder / "margins.jsonl"),
        "--project",
        "reviews",
        "--db",
        db,
    )
    assert code == 0 and out.strip() == "stored 8 reward margins in 'reviews'"

    tokens = {}
    for name in ("ann", "bob", "cy"):
        code, out, _ = run_cli(
            monkeypatch,
            capsys,
            "annotate",
            "invite",
            name,
            "--project",
            "reviews",
            "--url",
            "http://localhost:9000",
            "--db",
            db,
        )
        assert code == 0
        tokens[name] = re.search(r"token \(shown once\): (\S+)", out).group(1)
        assert f"link: http://localhost:9000/annotate/reviews#token={tokens[name]}" in out
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "override",
        "cy",
        "--project",
        "reviews",
        "--reason",
        "trusted reviewer",
        "--admin",
        "ada",
        "--db",
        db,
    )
    assert code == 0 and "'cy' may label the main queue of 'reviews'" in out

    with TestClient(create_app(db)) as client:
        assert label(client, tokens["ann"]) >= 10  # 2 calibration + 8 main + anchors
        assert label(client, tokens["bob"], pick_good=False) >= 10
        # ann and bob disagree on every main pair, so each is disputed and re-presented to cy (after calibration:
        # an override opens the main queue, it does not skip the calibration pairs)
        assert label(client, tokens["cy"]) >= 10

    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "stats",
        "--project",
        "reviews",
        "--db",
        db,
        "--json",
        str(folder / "board.json"),
    )
    assert code == 0
    assert "project reviews: 8 of 8 pairs have 2 human judgments" in out and "0 disputed, 8 re-presented" in out
    assert "kappa ann / bob: " in out and "calibration overridden" in out
    assert "sim-0 (panel): kappa with the human majority" in out
    board = json.loads((folder / "board.json").read_text())
    assert board["overrides"][0]["annotator"] == "cy" and board["overrides"][0]["admin"] == "ada"

    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "export",
        "--project",
        "reviews",
        "--out",
        str(folder / "prefs.jsonl"),
        "--judgments",
        str(folder / "raw.jsonl"),
        "--db",
        db,
    )
    assert code == 0
    assert "wrote 10 preference pairs" in out and "0 without a majority" in out
    pairs = {p.id: p for p in load_records(folder / "prefs.jsonl", "preference")}
    assert set(pairs) == {f"pair-{i}" for i in range(8)} | {"cal-0", "cal-1"}
    assert all(p.chosen.lstrip().startswith(("Lovely", "Good")) for p in pairs.values())
    assert pairs["pair-0"].metadata["votes"] == {"ann": "a", "bob": "b", "cy": "a"}
    assert (
        pairs["pair-0"].metadata["machine_votes"] == {"sim-0": "a"} and pairs["pair-0"].metadata["gold_chosen"] == 0.8
    )
    assert pairs["cal-0"].metadata["votes"] == {"ann": "a", "bob": "a", "cy": "a"} and pairs["cal-0"].metadata[
        "criteria"
    ] == {"helpfulness": "a"}
    raw = [json.loads(line) for line in (folder / "raw.jsonl").read_text().splitlines()]
    assert {r["annotator_kind"] for r in raw} == {"human", "panel"} and all(r["choice"] in ("a", "b") for r in raw)
    report = agreement_report(folder / "raw.jsonl")
    assert report["annotator_names"] == ["ann", "bob", "cy", "sim-0"] and report["cohen_kappa"]["ann|bob"] is not None
    code, out, _ = run_cli(monkeypatch, capsys, "agreement", str(folder / "raw.jsonl"))
    assert code == 0 and "Cohen's kappa" in out


def test_errors_a_user_can_cause_name_what_is_wrong(store, tmp_path, monkeypatch, capsys):
    db = store["db"]

    def error(*args: str) -> str:
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err.strip()

    assert (
        error("annotate", "export", "--project", "nope", "--out", str(tmp_path / "x.jsonl"), "--db", db)
        == "error: unknown project 'nope' (projects here: reviews)"
    )
    bad = write_rows(
        tmp_path / "bad.jsonl",
        [{"prompt": "p", "response_a": "x", "response_b": "y"}, {"prompt": 3, "chosen": "x", "rejected": "y"}],
    )
    assert (
        error("annotate", "import-pairs", str(bad), "--project", "reviews", "--db", db)
        == f"error: {bad}:2: field 'prompt': expected a string or a list of messages, got integer"
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "response_a": "x", "response_b": "y"}\n{"prompt": \n')
    assert error("annotate", "import-pairs", str(broken), "--project", "reviews", "--db", db).startswith(
        f"error: {broken}:2: not valid JSON"
    )
    judged = write_rows(tmp_path / "j.jsonl", [{"pair_id": "pair-0", "annotator": "judge", "choice": "left"}])
    assert (
        error("annotate", "import-judgments", str(judged), "--project", "reviews", "--db", db)
        == f"error: {judged}:1: field 'choice': expected one of 'a', 'b', 'tie', 'both_bad', got 'left'"
    )
    assert (
        error("annotate", "import-pairs", str(tmp_path / "missing.jsonl"), "--project", "reviews", "--db", db)
        == f"error: {tmp_path / 'missing.jsonl'}: file not found"
    )
    assert (
        error("annotate", "import-pairs", str(bad), "--project", "reviews", "--role", "gold", "--db", db)
        == "error: --role 'gold': expected one of main, calibration, anchor"
    )
    assert (
        error("annotate", "import-margins", "--project", "reviews", "--db", db)
        == "error: give either a margins FILE or --reward-model DIR"
    )

    # a database that cannot be reached, a store that does not exist, a folder that does not exist
    assert error(
        "annotate", "stats", "--project", "reviews", "--db", "postgresql://nobody@127.0.0.1:1/none"
    ).startswith("error: --db postgresql+psycopg://nobody@127.0.0.1:1/none: cannot connect (")
    assert (
        error("annotate", "serve", "--db", str(tmp_path / "typo.sqlite"))
        == f"error: --db {tmp_path / 'typo.sqlite'}: no annotation store there; create it with `rlhfkit annotate "
        f"init --db {tmp_path / 'typo.sqlite'}`"
    )
    assert not (tmp_path / "typo.sqlite").exists()
    assert (
        error("annotate", "init", "--db", str(tmp_path / "no" / "such" / "x.sqlite"))
        == f"error: --db {tmp_path / 'no' / 'such' / 'x.sqlite'}: folder {tmp_path / 'no' / 'such'} does not exist"
    )
    assert error("annotate", "init", "--db", "mysql://nobody@127.0.0.1:1/x").startswith(
        "error: --db mysql://nobody@127.0.0.1:1/x: not a database URL"
    )

    # a project file with a mistake, and a second project of the same name
    (tmp_path / "typo.yaml").write_text("name: other\ncolour: red\n")
    assert (
        error("annotate", "create-project", str(tmp_path / "typo.yaml"), "--db", db)
        == f"error: {tmp_path / 'typo.yaml'}: unknown key 'colour'"
    )
    (tmp_path / "again.yaml").write_text("name: reviews\n")
    assert (
        error("annotate", "create-project", str(tmp_path / "again.yaml"), "--db", db)
        == "error: project 'reviews' exists already"
    )
    (tmp_path / "cap.yaml").write_text("name: capped\noverlap: 3\nmax_judgments: 2\n")
    assert "max_judgments (2) must be at least overlap (3)" in error(
        "annotate", "create-project", str(tmp_path / "cap.yaml"), "--db", db
    )
    # nothing half-imported: the failed imports above added no pair
    code, out, _ = run_cli(monkeypatch, capsys, "annotate", "stats", "--project", "reviews", "--db", db)
    assert "0 of 8 pairs" in out


def test_hostile_files_and_settings_get_one_line_errors(store, tmp_path, monkeypatch, capsys):
    """What the app refuses, the shell refuses too: a 10,000-deep line, a lone surrogate, NUL or NaN in a row,
    infinite or boolean settings in a project file; and the export is strict JSON."""
    db = store["db"]

    def error(*args: str) -> str:
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err.strip()

    good = json.dumps({"prompt": "p", "response_a": "x", "response_b": "y"})
    cases = {
        "[" * 10_000 + "]" * 10_000: ":2: JSON nested too deeply",
        json.dumps({"prompt": "p \ud800", "response_a": "x", "response_b": "y"}): ":2: field 'prompt': holds a lone",
        json.dumps({"prompt": "p", "response_a": "x\x00", "response_b": "y"}): ":2: field 'response_a': holds a NUL",
        json.dumps({"prompt": "p", "response_a": "x", "response_b": "y", "metadata": {"s": float("nan")}}): (
            ":2: field 'metadata.s': NaN is not a JSON number"
        ),
    }
    for line, expected in cases.items():
        path = tmp_path / "hostile.jsonl"
        path.write_text(f"{good}\n{line}\n")
        assert error("annotate", "import-pairs", str(path), "--project", "reviews", "--db", db).startswith(
            f"error: {path}{expected}"
        )
    margins = tmp_path / "margins.jsonl"
    margins.write_text('{"pair_id": "pair-0", "margin": Infinity}\n')
    assert "field 'margin'" in error("annotate", "import-margins", str(margins), "--project", "reviews", "--db", db)
    for setting in ("margin_below: .inf", "margin_below: .nan", "overlap: true", "batch_size: 100000"):
        (tmp_path / "bad.yaml").write_text(f"name: hostile\n{setting}\n")
        assert setting.split(":")[0] in error("annotate", "create-project", str(tmp_path / "bad.yaml"), "--db", db)
    code, out, _ = run_cli(monkeypatch, capsys, "annotate", "stats", "--project", "reviews", "--db", db)
    assert "0 of 8 pairs" in out
    assert error("annotate", "serve", "--workers", "4", "--db", db).startswith(
        "error: --workers 4: SQLite has one writer at a time"
    )
