"""`rlhfkit annotate import-margins --reward-model DIR`: the reward model's margins r(a) - r(b), the right way round,
drive dynamic sampling (the least confident pair gets one more judgment); a model without a reward head is refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from rlhfkit.cli import main
from rlhfkit.feedback.annotate.app import create_app
from rlhfkit.feedback.annotate.db import open_database
from rlhfkit.feedback.annotate.models import Pair, Project
from rlhfkit.feedback.judge import Question, RewardModelJudge
from rlhfkit.models.loading import _score_head, load_reward_model, load_tokenizer, save_model
from rlhfkit.resolve import resolve_model_path


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    return stop.value.code or 0, captured.out, captured.err


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """The default backbone with a random (seeded) reward head: untrained, but its scores differ per response."""
    path = resolve_model_path("default")
    tokenizer = load_tokenizer(path)
    model = load_reward_model(path, tokenizer, new_head=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.nn.init.normal_(_score_head(model).weight, std=1.0)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("rm") / "model")


ROWS = [
    {"id": f"p{i}", "prompt": f"We stayed at hotel {i} last week.", "response_a": a, "response_b": b}
    for i, (a, b) in enumerate(
        [
            (" The room was clean and the staff were kind.", " The room was dirty."),
            (" Lovely food, I would go back.", " Cold food and a rude waiter."),
            (" Great view.", " It was fine, nothing special to report here."),
            (" The room was dirty.", " The room was clean and the staff were kind."),  # p0 swapped
            (" Terrible noise all night long.", " Quiet and comfortable."),
        ]
    )
]


def test_margins_from_a_reward_model_steer_dynamic_sampling(reward_model_dir, tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "store.sqlite")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "project.yaml").write_text(
        "name: hotels\noverlap: 1\nmax_judgments: 2\nanchor_rate: 0\nmargin_below: 1.0e-9\npairs: pairs.jsonl\n"
    )
    assert run_cli(monkeypatch, capsys, "annotate", "init", "--db", db)[0] == 0
    assert (
        run_cli(monkeypatch, capsys, "annotate", "create-project", str(tmp_path / "project.yaml"), "--db", db)[0] == 0
    )
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "import-margins",
        "--project",
        "hotels",
        "--reward-model",
        str(reward_model_dir),
        "--db",
        db,
    )
    assert code == 0, err
    assert out.strip() == "stored 5 reward margins in 'hotels'"

    database = open_database(db)
    with database.session() as s:
        margins = {p.external_id: p.margin for p in s.scalars(select(Pair))}
    # r(a) - r(b), not the other way round: the judge's scores of the same responses, first minus second
    verdicts = RewardModelJudge(str(reward_model_dir)).judge(
        [Question(r["prompt"], r["response_a"], r["response_b"]) for r in ROWS]
    )
    for row, verdict in zip(ROWS, verdicts):
        assert margins[row["id"]] == pytest.approx(
            verdict.detail["reward_first"] - verdict.detail["reward_second"], abs=1e-4
        )
    assert len({round(m, 4) for m in margins.values()}) == 5 and all(m != 0 for m in margins.values())

    # dynamic sampling: with margin_below (a project setting, changed in the store here) between the smallest
    # |margin| and the rest, only that pair gets a 2nd judgment
    least = min(margins, key=lambda k: abs(margins[k]))
    cut = (abs(margins[least]) + min(abs(m) for k, m in margins.items() if k != least)) / 2
    with database.session() as s:
        s.scalar(select(Project)).margin_below = cut
        s.commit()
    database.close()
    tokens = []
    for name in ("ann", "bob"):
        code, out, _ = run_cli(monkeypatch, capsys, "annotate", "invite", name, "--project", "hotels", "--db", db)
        tokens.append(out.split("token (shown once): ")[1].split()[0])
    labelled = {}
    with TestClient(create_app(db)) as client:
        for token in tokens:
            headers = {"Authorization": f"Bearer {token}"}
            while (result := client.post("/api/projects/hotels/next", headers=headers).json())["state"] == "assignment":
                item = result["assignment"]
                assert (
                    client.post(
                        f"/api/projects/hotels/assignments/{item['id']}/judgment",
                        headers=headers,
                        json={"choice": "left"},
                    ).status_code
                    == 200
                )
                labelled.setdefault(item["prompt"], 0)
                labelled[item["prompt"]] += 1
    by_id = {r["prompt"]: r["id"] for r in ROWS}
    assert {by_id[p]: n for p, n in labelled.items()} == {r["id"]: (2 if r["id"] == least else 1) for r in ROWS}


def test_a_model_without_a_reward_head_is_refused(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "store.sqlite")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    (tmp_path / "project.yaml").write_text("name: hotels\npairs: pairs.jsonl\n")
    run_cli(monkeypatch, capsys, "annotate", "init", "--db", db)
    run_cli(monkeypatch, capsys, "annotate", "create-project", str(tmp_path / "project.yaml"), "--db", db)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "annotate",
        "import-margins",
        "--project",
        "hotels",
        "--reward-model",
        "default",
        "--db",
        db,
    )
    assert code == 2 and err.startswith("error: model 'default' is not a reward model")
