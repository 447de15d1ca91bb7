"""Reward-model ensembles: `reward train ensemble=K` writes one directory (ensemble.json, member-0/ ...) and every
reader of a reward model combines its members the same way (rlhfkit.losses.ensemble_reward): the scorer behind the
online rewards, best-of-n and eval, the reward-model judge, and `reward eval`, which reports each member too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.config import BoNConfig, JudgeConfig, PairsConfig, RewardEvalConfig, RewardSpec, RewardTrainConfig
from rlhfkit.data.records import PreferencePair, read_jsonl, write_jsonl
from rlhfkit.errors import ModelError
from rlhfkit.feedback.judge import Question, RewardModelJudge
from rlhfkit.losses import ensemble_reward
from rlhfkit.online import RewardFunction
from rlhfkit.release import load_for_export
from rlhfkit.scoring import RewardModelScorer, most_uncertain, preference_disagreement
from rlhfkit.stages import bon, judge, pairs, reward

GOOD = [" It was wonderful.", " Lovely staff, I would go back.", " Excellent and fun.", " The best one all year."]
BAD = [" It was awful.", " Rude staff, never again.", " Poor, boring and broken.", " The worst one all year."]
SUBJECTS = ["restaurant", "hotel", "phone", "laptop", "cafe", "movie", "book", "gym"]
WHENS = ["last week", "yesterday", "a month ago", "over the holidays"]
K = 3


def review_pairs() -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt=f"We tried the {subject} {when}.",
            chosen=GOOD[(i + j) % 4],
            rejected=BAD[(i + 2 * j) % 4],
            id=f"p{i}-{j}",
        )
        for i, subject in enumerate(SUBJECTS)
        for j, when in enumerate(WHENS)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A 3-member ensemble on the default backbone, 30 steps each on bootstrap resamples of 24 separable pairs."""
    root = tmp_path_factory.mktemp("ensemble")
    write_jsonl(root / "pairs.jsonl", review_pairs())
    summary = reward.train(
        RewardTrainConfig(
            data=str(root / "pairs.jsonl"),
            output_dir=str(root / "rm"),
            ensemble=K,
            max_steps=30,
            eval_every=10,
            batch_size=8,
            lr=3e-4,
            val_fraction=0.25,
            patience=0,
            seed=3,
        )
    )
    return root, summary


def test_ensemble_directory_layout(trained):
    root, summary = trained
    model_dir = root / "rm" / "model"
    manifest = json.loads((model_dir / "ensemble.json").read_text())
    assert manifest["members"] == [f"member-{k}" for k in range(K)]
    assert manifest["seeds"] == [3, 4, 5] and manifest["bootstrap"] is True
    for k in range(K):
        assert (model_dir / f"member-{k}" / "config.json").is_file()  # each member a normal reward-model folder
        assert (root / "rm" / "members" / f"member-{k}" / "metrics.jsonl").is_file()  # and its own run log
    assert [m["seed"] for m in summary["members"]] == [3, 4, 5]
    assert summary["ensemble_val_accuracy"] > 0.5 and summary["val_disagreement"] > 0
    assert json.loads((root / "rm" / "summary.json").read_text())["ensemble"] == K
    with pytest.raises(ModelError, match="reward-model ensemble .* export a member"):
        load_for_export(model_dir)  # `rlhfkit export` writes one model: it says which folder to give instead


def test_every_reader_combines_the_members(trained):
    root, _ = trained
    model_dir = root / "rm" / "model"
    prompts = ["We tried the park last week.", "We tried the game yesterday."] * 2
    responses = [GOOD[0], BAD[1], GOOD[2], BAD[3]]
    # the members read one by one as single reward models: the reference the ensemble readers must agree with
    each = torch.tensor(
        [RewardModelScorer(model_dir / f"member-{k}").score(prompts, responses) for k in range(K)], dtype=torch.float64
    )
    assert (each.std(dim=0) > 0).all()  # different seeds and resamples: the members differ
    for method, coef in [("mean", 0.0), ("min", 0.0), ("uwo", 2.0)]:
        expected = ensemble_reward(each, method, coef)
        scorer = RewardModelScorer(model_dir, ensemble_method=method, ensemble_coef=coef)
        assert scorer.score(prompts, responses) == pytest.approx(expected.tolist(), abs=1e-5)
        # the online rewards of ppo, grpo, rloo, bon and bon-sweep, with the members' disagreement logged
        total, parts = RewardFunction([RewardSpec(model=str(model_dir), ensemble_method=method, ensemble_coef=coef)])(
            prompts, responses
        )
        assert total.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
        assert parts["reward_rm0_disagreement"] == pytest.approx(each.std(dim=0, unbiased=False).mean().item(), 1e-4)
    # min is the pessimist, uwo below the mean
    assert (ensemble_reward(each, "min") <= ensemble_reward(each, "mean")).all()


def test_judge_and_best_of_n_read_an_ensemble(trained, tmp_path):
    root, _ = trained
    model_dir = root / "rm" / "model"
    pairs = review_pairs()[:4]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    scorer = RewardModelScorer(model_dir, ensemble_method="min")
    chosen = scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    verdicts = RewardModelJudge(str(model_dir), ensemble_method="min").judge(
        [Question(p.prompt, p.chosen, p.rejected) for p in pairs]
    )
    assert [v.detail["reward_first"] for v in verdicts] == pytest.approx(chosen, abs=1e-4)
    assert [v.detail["reward_second"] for v in verdicts] == pytest.approx(rejected, abs=1e-4)
    # the judge stage passes its ensemble keys on: its labels follow the min-combined rewards
    summary = judge.run(
        JudgeConfig(
            data=str(tmp_path / "pairs.jsonl"),
            kind="reward_model",
            model=str(model_dir),
            output_dir=str(tmp_path / "judge"),
            ensemble_method="min",
        )
    )
    assert summary["pairs_written"] == sum(c != r for c, r in zip(chosen, rejected))
    bon_summary = bon.run(
        BoNConfig(
            model="default",
            prompts=str(tmp_path / "pairs.jsonl"),
            rewards=[{"model": str(model_dir), "ensemble_method": "uwo", "ensemble_coef": 1.0}],
            n=2,
            num_prompts=2,
            max_new_tokens=8,
            output_dir=str(tmp_path / "bon"),
            gold=None,
        )
    )
    assert bon_summary["prompts"] == 2 and bon_summary["reward_best"] >= bon_summary["reward_mean"]


def test_reward_eval_reports_each_member_and_the_disagreement(trained, tmp_path):
    root, _ = trained
    model_dir = root / "rm" / "model"
    data = str(root / "rm" / "val_pairs.jsonl")
    summary = reward.evaluate(
        RewardEvalConfig(model=str(model_dir), data=data, output_dir=str(tmp_path / "ens"), attributions=0)
    )
    ensemble = summary["ensemble"]
    assert [m["name"] for m in ensemble["members"]] == [f"member-{k}" for k in range(K)]
    for k, member in enumerate(ensemble["members"]):
        alone = reward.evaluate(
            RewardEvalConfig(
                model=str(model_dir / f"member-{k}"), data=data, output_dir=str(tmp_path / f"m{k}"), attributions=0
            )
        )
        assert member["accuracy"] == pytest.approx(alone["accuracy"])
        assert "ensemble" not in alone
    assert summary["accuracy"] == pytest.approx(ensemble["mean_accuracy"])  # the default method is the mean
    assert ensemble["disagreement"] > 0


def test_a_broken_ensemble_is_refused_with_its_file(trained, tmp_path):
    root, _ = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-9"]}))
    with pytest.raises(ModelError, match=r"ensemble.json: member\(s\) .*member-0, .*member-9 missing"):
        RewardModelScorer(broken)
    (broken / "ensemble.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a reward-model ensemble manifest"):
        RewardModelScorer(broken)


# ----------------------------------------------------------------------------------------------- the cheap form


@pytest.fixture(scope="module")
def shared(trained) -> tuple[Path, dict]:
    """A 4-head shared-backbone ensemble fitted on the features of the first ensemble's member-0 (a trained RM)."""
    root, _ = trained
    summary = reward.train(
        RewardTrainConfig(
            model=str(root / "rm" / "model" / "member-0"),
            data=str(root / "pairs.jsonl"),
            output_dir=str(root / "shared"),
            ensemble=4,
            ensemble_form="shared_backbone",
            val_fraction=0.25,
            seed=3,
        )
    )
    return root / "shared" / "model", summary


def test_shared_backbone_ensemble_is_one_folder_every_reader_reads(shared):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.evaluate.shift import reward_margins, reward_scorers

    model_dir, summary = shared
    manifest = json.loads((model_dir / "ensemble.json").read_text())
    assert manifest["form"] == "shared_backbone" and manifest["members"] == [f"member-{k}" for k in range(4)]
    assert manifest["seeds"] == [3, 4, 5, 6] and not list(model_dir.glob("member-*"))  # one model, no member folders
    assert summary["ensemble_val_accuracy"] > 0.5 and summary["val_disagreement"] > 0
    assert all(m["distinct_train_pairs"] < summary["train_pairs"] for m in summary["members"])  # bootstrap resamples
    prompts = ["We tried the park last week.", "We tried the game yesterday."] * 2
    responses = [GOOD[0], BAD[1], GOOD[2], BAD[3]]
    scorer = RewardModelScorer(model_dir, ensemble_method="min")
    assert len(scorer.models) == 4 and scorer.num_heads == 1 and scorer.objectives == ["reward"]
    backbone_calls = []
    shared_model = scorer.models[0].shared
    getattr(shared_model, shared_model.base_model_prefix).register_forward_hook(lambda *_: backbone_calls.append(1))
    members = torch.tensor(scorer.score_members(prompts, responses), dtype=torch.float64)
    assert len(backbone_calls) == 1  # four members, one backbone forward for the batch
    assert (members.std(dim=0) > 0).all()  # different seeds and resamples: the heads differ
    # plain transformers reads the folder as one 4-head model: its logits are the members' rewards
    plain = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids = scorer.encoder.encode_response(p, r)
            logits = plain(input_ids=torch.tensor([ids])).logits[0].double()
            assert logits.tolist() == pytest.approx(members[:, i].tolist(), abs=1e-4)
    assert scorer.score(prompts, responses) == pytest.approx(ensemble_reward(members, "min").tolist(), abs=1e-5)
    total, parts = RewardFunction([RewardSpec(model=str(model_dir))])(prompts, responses)
    assert total.tolist() == pytest.approx(members.mean(0).tolist(), abs=1e-5) and "reward_rm0_disagreement" in parts
    # reward eval reports each member; the shift monitor measures the heads' disagreement
    pairs = review_pairs()[:6]
    margins, per_member = reward_margins(reward_scorers(str(model_dir)), pairs)
    assert len(per_member) == 4 and all(m > 0 for m in margins)
    report = reward.evaluate(
        RewardEvalConfig(
            model=str(model_dir),
            data=str(model_dir.parent / "val_pairs.jsonl"),
            output_dir=str(model_dir.parent / "eval"),
            attributions=0,
        )  # fmt: skip
    )
    assert [m["name"] for m in report["ensemble"]["members"]] == manifest["members"]


def test_shared_backbone_refusals():
    from rlhfkit.config import build_config
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="needs ensemble=K with K >= 2"):
        build_config(RewardTrainConfig, {"data": "x.jsonl", "ensemble_form": "shared_backbone"})
    with pytest.raises(ConfigError, match="lora and fsdp do not apply"):
        build_config(
            RewardTrainConfig, {"data": "x.jsonl", "ensemble": 3, "ensemble_form": "shared_backbone", "lora": {"r": 4}}
        )


def test_report_sets_the_ensemble_against_a_single_member(trained, tmp_path):
    """bon-sweep with the ensemble (uwo), then its samples scored by one member alone: the report's ensemble section
    lists both proxies with their gold; a folder without an ensemble shows the placeholder."""
    from rlhfkit.config import BonSweepConfig
    from rlhfkit.report.html import section_ensemble, stage_dirs
    from rlhfkit.stages import bon_sweep

    root, _ = trained
    model = root / "rm" / "model"
    common = dict(max_n=3, num_prompts=2, max_new_tokens=8, bootstrap=0, threads=1)
    uwo = RewardSpec(model=str(model), ensemble_method="uwo", ensemble_coef=0.5)
    bon_sweep.run(BonSweepConfig(rewards=[uwo], output_dir=str(tmp_path / "uwo"), **common))
    single = RewardSpec(model=str(model / "member-0"))
    sweep = bon_sweep.run(
        BonSweepConfig(
            rewards=[single], samples_from=str(tmp_path / "uwo"), output_dir=str(tmp_path / "single"), **common
        )
    )
    page = section_ensemble(stage_dirs(tmp_path))
    assert f"ensemble of {K} (uwo 0.5)" in page and "<td>reward model</td>" in page
    assert f"<td>{sweep['rows'][-1]['gold']:.4g}</td>" in page and "Not in this run folder" not in page
    assert "Not in this run folder" in section_ensemble({"single": tmp_path / "single"})


# ------------------------------------------------------------- active selection: what the ensemble is least sure of


def test_selection_keeps_the_pairs_the_members_disagree_on_most():
    ln3 = math.log(3.0)  # sigmoid(ln 3) = 0.75
    margins = [  # r_a - r_b of 3 members (rows) on 6 pairs (columns)
        [0.0, ln3, ln3, ln3, 2.0, 1.0],
        [0.0, -ln3, ln3, 0.0, 2.0, math.nan],
        [0.0, ln3, -ln3, -ln3, 2.0, 1.0],
    ]
    rewards_b = [[0.5] * 6 for _ in margins]
    rewards_a = [[m + 0.5 for m in row] for row in margins]
    disagreement = preference_disagreement(rewards_a, rewards_b)
    # probabilities 0.75, 0.25, 0.75 -> population std sqrt(1/18); 0.75, 0.5, 0.25 -> sqrt(1/24); all equal -> 0
    expected = [0.0, math.sqrt(1 / 18), math.sqrt(1 / 18), math.sqrt(1 / 24), 0.0]
    assert disagreement[:5] == pytest.approx(expected, abs=1e-12) and math.isnan(disagreement[5])
    assert most_uncertain(disagreement, 3) == [1, 2, 3]  # a tie goes to the earlier pair
    assert most_uncertain(disagreement, 6) == [1, 2, 3, 0, 4, 5]  # a pair a member could not score comes last
    # members sure of a but by different amounts (x) against members split on which is better (y): std ranks x
    # first, sign ranks y first (a third of the members on the minority side; the std / 1000 breaks ties)
    sigmoid = lambda m: 1 / (1 + math.exp(-m))  # noqa: E731
    x, y = [3.0, 0.1, 3.0], [0.2, -0.2, 0.2]
    rewards_a, rewards_b = [[mx, my] for mx, my in zip(x, y)], [[0.0, 0.0]] * 3
    std_x, std_y = ((sigmoid(m[0]) - sigmoid(m[1])) * math.sqrt(2) / 3 for m in (x, y))
    assert preference_disagreement(rewards_a, rewards_b) == pytest.approx([std_x, std_y], abs=1e-12)
    assert preference_disagreement(rewards_a, rewards_b, "sign") == pytest.approx(
        [std_x / 1000, 1 / 3 + std_y / 1000], abs=1e-12
    )
    assert most_uncertain(preference_disagreement(rewards_a, rewards_b), 1) == [0]
    assert most_uncertain(preference_disagreement(rewards_a, rewards_b, "sign"), 1) == [1]


def test_pairs_labels_only_the_pairs_the_ensemble_is_least_sure_of(trained, tmp_path):
    root, _ = trained
    model_dir = root / "rm" / "model"
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": p.prompt} for p in review_pairs()[::3]])  # 8 prompts: a pool of 8 pairs
    common = dict(prompts=str(prompts), num_prompts=8, max_new_tokens=10, seed=5, threads=1)
    active = pairs.run(
        PairsConfig(
            **common,
            output_dir=str(tmp_path / "active"),
            selection="disagreement",
            budget=3,
            selection_model=str(model_dir),
        )
    )
    drawn = pairs.run(PairsConfig(**common, output_dir=str(tmp_path / "random"), selection="random", budget=3))
    everything = pairs.run(PairsConfig(**common, output_dir=str(tmp_path / "all")))
    pool = {row["id"]: row for _, row in read_jsonl(tmp_path / "all" / "pairs.jsonl")}
    assert everything["pairs"] == 8 and active["selection"]["pool"] == drawn["selection"]["pool"] == 8
    # the members scored one by one: each pair's std over members of sigmoid(r_a - r_b), a and b in sampling order
    scorers = [RewardModelScorer(model_dir / f"member-{k}") for k in range(K)]
    std = {}  # sigmoid(-x) = 1 - sigmoid(x): the std is the same whichever response the panel chose
    for i, row in pool.items():
        margins = torch.tensor([s.score([row["prompt"]] * 2, [row["chosen"], row["rejected"]]) for s in scorers])
        std[i] = torch.sigmoid(margins[:, 0] - margins[:, 1]).std(correction=0).item()
    top3 = sorted(std, key=std.get, reverse=True)[:3]
    kept = {row["id"]: row for _, row in read_jsonl(tmp_path / "active" / "pairs.jsonl")}
    assert set(kept) == set(top3)
    for i, row in kept.items():
        assert row["metadata"]["disagreement"] == pytest.approx(std[i], abs=1e-4)
    assert active["selection"]["kept_mean_disagreement"] > active["selection"]["pool_mean_disagreement"]
    # only the kept pairs cost labels: one vote per annotator on each
    votes = [row for _, row in read_jsonl(tmp_path / "active" / "judgments.jsonl")]
    assert {v["pair_id"] for v in votes} == set(top3) and len(votes) == 3 * len(active["annotators"])
    assert len(list(read_jsonl(tmp_path / "random" / "pairs.jsonl"))) == 3


def test_annotation_app_serves_the_pairs_the_ensemble_disagrees_on_first(trained, tmp_path, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from rlhfkit.feedback.annotate.app import create_app

    root, _ = trained
    model_dir = root / "rm" / "model"
    rows = [
        {"id": f"r{i}", "prompt": f"We tried the {SUBJECTS[i]} last week.", "response_a": a, "response_b": b}
        for i, (a, b) in enumerate(
            [(GOOD[0], BAD[0]), (GOOD[1], GOOD[2]), (BAD[1], BAD[2]), (GOOD[3], BAD[3]), (BAD[0], GOOD[1])]
        )
    ]
    # the reference: each member alone, the std over members of sigmoid(r_a - r_b)
    scorers = [RewardModelScorer(model_dir / f"member-{k}") for k in range(K)]
    std = {}
    for row in rows:
        rewards = torch.tensor([s.score([row["prompt"]] * 2, [row["response_a"], row["response_b"]]) for s in scorers])
        std[row["id"]] = torch.sigmoid(rewards[:, 0] - rewards[:, 1]).std(correction=0).item()
    ranked = sorted(std, key=std.get, reverse=True)
    cut = (std[ranked[0]] + std[ranked[1]]) / 2  # only the most disputed pair is above it
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    (tmp_path / "project.yaml").write_text(
        "name: reviews\noverlap: 1\nmax_judgments: 2\nanchor_rate: 0\nsample_by: disagreement\n"
        f"disagreement_above: {cut!r}\npairs: pairs.jsonl\n"
    )
    db = str(tmp_path / "store.sqlite")
    assert run_cli(monkeypatch, capsys, "annotate", "init", "--db", db)[0] == 0
    assert (
        run_cli(monkeypatch, capsys, "annotate", "create-project", str(tmp_path / "project.yaml"), "--db", db)[0] == 0
    )
    argv = ["annotate", "import-margins", "-p", "reviews", "--reward-model", str(model_dir), "--db", db]
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 0, err
    assert out.strip() == "stored 5 reward margins in 'reviews' (5 with an ensemble disagreement)"
    tokens = []
    for name in ("ann", "bob"):
        out = run_cli(monkeypatch, capsys, "annotate", "invite", name, "--project", "reviews", "--db", db)[1]
        tokens.append(out.split("token (shown once): ")[1].split()[0])
    served = []
    with TestClient(create_app(db)) as client:
        for token in tokens:
            headers = {"Authorization": f"Bearer {token}"}
            while (result := client.post("/api/projects/reviews/next", headers=headers).json())[
                "state"
            ] == "assignment":
                item = result["assignment"]
                url = f"/api/projects/reviews/assignments/{item['id']}/judgment"
                assert client.post(url, headers=headers, json={"choice": "left"}).status_code == 200
                served.append(next(r["id"] for r in rows if r["prompt"] == item["prompt"]))
    # the first annotator gets every pair, the most disputed by the members first; the second only the pair whose
    # disagreement is above disagreement_above (its extra judgment)
    assert served == ranked + [ranked[0]]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    import sys

    from rlhfkit.cli import main

    monkeypatch.setattr(sys, "argv", ["rlhfkit", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    return stop.value.code or 0, captured.out, captured.err
