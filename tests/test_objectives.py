"""Reward heads per objective (#14.1) and the default task's second, conflicting objective (#14.2).

Pairs carry `labels: {objective: chosen|rejected|tie}`; `reward train` learns one head per objective from them (a
pair without a label for an objective gives that head no gradient), names the heads in the saved config, and
`reward eval` reports every metric per head. The default task has a second gold, brevity, that pulls against
quality, and `rlhfkit pairs objectives=[quality, brevity]` has the simulated panel label both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlhfkit.config import PairsConfig, RewardEvalConfig, RewardSpec, RewardTrainConfig
from rlhfkit.data.records import Where, load_records, parse_record
from rlhfkit.demo import gold
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.losses import multi_head_bradley_terry_loss
from rlhfkit.online import RewardFunction
from rlhfkit.report.html import section_heads, section_reward
from rlhfkit.scoring import RewardModelScorer, load_scorer
from rlhfkit.stages import pairs as pairs_stage
from rlhfkit.stages import reward

TOPICS = ["the pasta", "the hotel room", "the bike shop", "the new phone", "the museum", "the bakery", "the dentist"]
TOPICS += ["the film", "the train ride", "the coffee", "the bookshop", "the gym", "the concert", "the pizza"]
GOOD, BAD = ["lovely", "great", "superb", "wonderful"], ["awful", "bad", "dreadful", "terrible"]
PADDING = " The staff were there and the place was open all day."


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def two_objective_pairs(labelled: tuple[str, ...] = ("sentiment", "brevity")) -> list[dict]:
    """Pairs judged on sentiment (the positive review wins) and brevity (the shorter wins), independent by
    construction: in half the pairs the positive review is the longer one."""
    rows = []
    for t, topic in enumerate(TOPICS):
        for g, (good, bad) in enumerate(zip(GOOD, BAD)):
            for long_good in (False, True):
                positive, negative = f" {topic.capitalize()} was {good}.", f" {topic.capitalize()} was {bad}."
                positive, negative = (positive + PADDING, negative) if long_good else (positive, negative + PADDING)
                labels = {"sentiment": "chosen", "brevity": "rejected" if long_good else "chosen"}
                rows.append(
                    {
                        "id": f"{t}-{g}-{int(long_good)}",
                        "prompt": f"Write a short review of {topic}.",
                        "chosen": positive,
                        "rejected": negative,
                        "labels": {k: v for k, v in labels.items() if k in labelled},
                    }
                )
    return rows


def train_config(data: Path, out: Path, **overrides) -> RewardTrainConfig:
    settings = dict(
        model="default",
        data=str(data),
        output_dir=str(out),
        max_steps=40,
        batch_size=16,
        lr=1e-3,
        eval_every=10,
        patience=0,
        max_length=64,
        max_prompt_length=32,
        seed=0,
        threads=1,
    )
    return RewardTrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    data = write_jsonl(root / "pairs.jsonl", two_objective_pairs())
    summary = reward.train(train_config(data, root / "rm"))
    return {"root": root, "data": data, "summary": summary, "rm": root / "rm" / "model"}


# ---------------------------------------------------------------- schema


def test_labels_are_read_and_validated_naming_line_and_field(tmp_path):
    where = Where("pairs.jsonl", 7)
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    parsed = parse_record({**pair, "labels": {"helpfulness": "chosen", "harmlessness": "tie"}}, "preference", where)
    assert parsed.labels == {"helpfulness": "chosen", "harmlessness": "tie"}
    assert parse_record(pair, "preference", where).labels is None  # no labels: the overall judgment only
    for labels, message in (
        (["chosen"], "pairs.jsonl:7: field 'labels': expected an object"),
        ({"helpfulness": "a"}, "pairs.jsonl:7: field 'labels.helpfulness': expected one of chosen, rejected, tie"),
        ({"helpfulness": 1}, "field 'labels.helpfulness': expected one of chosen, rejected, tie, got integer"),
        ({" ": "chosen"}, "field 'labels': an objective name is empty"),
    ):
        with pytest.raises(DataError, match=message.replace(".", r"\.").replace("'", "'")):
            parse_record({**pair, "labels": labels}, "preference", where)
    path = write_jsonl(tmp_path / "p.jsonl", [{**pair, "labels": {"helpfulness": "chosen"}}])
    assert load_records(path, "preference")[0].labels == {"helpfulness": "chosen"}


# ---------------------------------------------------------------- the loss


def test_multi_head_bradley_terry_matches_hand_computed_values_and_masks_unlabelled_entries():
    chosen = torch.tensor([[1.0, 0.0], [0.5, 2.0]], requires_grad=True)
    rejected = torch.tensor([[0.0, 3.0], [1.5, 1.0]])
    labels = torch.tensor([[1, 0], [-1, 1]])  # pair 0: no label for head 1; pair 1: the rejected wins on head 0
    loss = multi_head_bradley_terry_loss(chosen, rejected, labels)
    # -log sigmoid(1 - 0) - log sigmoid(-(0.5 - 1.5)) - log sigmoid(2 - 1) = 3 * -log sigmoid(1)
    expected = 3 * -torch.log(torch.sigmoid(torch.tensor(1.0)))
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert chosen.grad[0, 1] == 0.0  # the unlabelled entry: exactly no gradient
    assert torch.allclose(chosen.grad[0, 0], torch.sigmoid(torch.tensor(1.0)) - 1)
    with pytest.raises(ValueError, match="one shape"):
        multi_head_bradley_terry_loss(chosen, rejected, labels[:, :1])


# ---------------------------------------------------------------- training and evaluation


def test_each_head_learns_its_own_objective(two_heads, tmp_path):
    summary = two_heads["summary"]
    assert summary["objectives"] == ["sentiment", "brevity"]
    config = json.loads((two_heads["rm"] / "config.json").read_text())
    assert config["id2label"] == {"0": "sentiment", "1": "brevity"}  # consumers choose a head by name
    evaluated = reward.evaluate(
        RewardEvalConfig(
            model=str(two_heads["rm"]),
            data=str(two_heads["root"] / "rm" / "val_pairs.jsonl"),
            output_dir=str(tmp_path / "eval"),
            attributions=0,
            max_length=64,
            max_prompt_length=32,
        )
    )
    heads = evaluated["heads"]
    # held-out prompts: each head clearly beats chance on its own labels, though the two objectives are independent
    assert heads["sentiment"]["accuracy"] >= 0.8 and heads["brevity"]["accuracy"] >= 0.8, heads
    assert heads["sentiment"]["pairs"] == heads["brevity"]["pairs"] == summary["val_pairs"]
    assert heads["brevity"]["length_correlation"] < -0.5  # the brevity head scores the shorter response higher
    assert {"ece", "reliability", "longer_preferred_share", "mean_margin"} <= heads["brevity"].keys()
    assert set(evaluated["head_correlation"]) == {"sentiment~brevity"}
    figures = tmp_path / "figures"
    figures.mkdir()
    page = section_reward({"reward_eval": tmp_path / "eval"}, figures)
    # the overall reliability diagram, one curve per head
    assert "Reliability diagram" in page and (figures / "reliability_reward_eval.png").is_file()
    heads_page = section_heads({"reward_eval": tmp_path / "eval"}, figures)  # the report's per-head audit
    assert "<td>brevity</td>" in heads_page and "sentiment ~ brevity" in heads_page
    assert (figures / "heads_reliability_reward_eval.png").is_file() and "Not in this run folder" not in heads_page


def test_a_head_is_chosen_by_name(two_heads):
    scorer = RewardModelScorer(two_heads["rm"])
    prompts, responses = (
        ["Write a short review of the gym."] * 2,
        [" The gym was great.", " The gym was great." + PADDING],
    )
    assert scorer.objectives == ["sentiment", "brevity"]
    assert scorer.score(prompts, responses, head="brevity") == scorer.score(prompts, responses, head=1)
    short, long = scorer.score(prompts, responses, head="brevity")
    assert short > long
    with pytest.raises(ConfigError, match=r"head=tone: .* no head of that name \(heads: 0: sentiment, 1: brevity\)"):
        scorer.check_head("tone", "head")
    online = RewardFunction([RewardSpec(model=str(two_heads["rm"]), head="brevity")])  # PPO, GRPO, RLOO, best-of-n
    assert online(prompts, responses)[0].tolist() == pytest.approx([short, long], abs=1e-5)
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.head=tone"):
        RewardFunction([RewardSpec(model=str(two_heads["rm"]), head="tone")])


def test_a_pair_without_a_label_does_not_move_that_head(two_heads, tmp_path):
    """Fine-tune the two-head model on pairs labelled for sentiment only: the brevity head's weights stay
    bit-identical (the shared backbone moves; that is fine)."""
    data = write_jsonl(tmp_path / "sentiment_only.jsonl", two_objective_pairs(labelled=("sentiment",)))
    reward.train(
        train_config(
            data, tmp_path / "rm", model=str(two_heads["rm"]), objectives=["sentiment", "brevity"], max_steps=5
        )
    )
    before = load_file(str(two_heads["rm"] / "model.safetensors"))
    after = load_file(str(tmp_path / "rm" / "model" / "model.safetensors"))
    assert torch.equal(after["score.weight"][1], before["score.weight"][1])
    assert not torch.equal(after["score.weight"][0], before["score.weight"][0])
    backbone = next(k for k in before if k != "score.weight" and before[k].ndim == 2)
    assert not torch.equal(after[backbone], before[backbone])


def test_without_labels_training_keeps_one_head(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "labels"} for row in two_objective_pairs()]
    summary = reward.train(train_config(write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "rm", max_steps=2))
    assert "objectives" not in summary
    assert load_file(str(tmp_path / "rm" / "model" / "model.safetensors"))["score.weight"].shape[0] == 1


# ---------------------------------------------------------------- the default task's second objective


def test_brevity_gold_wants_short_on_topic_answers_and_pulls_against_quality():
    prompt = "We met friends at the new cafe a few days ago."
    short = " We enjoyed the tea a lot."
    long = (
        " We enjoyed the tea a lot. Luckily, the music was honestly superb. On top of that, the coffee was really nice."
    )
    salad = " tea lot the enjoyed we superb"
    brevity, quality = load_scorer("default:brevity"), load_scorer("default")
    b_short, b_long, b_salad = brevity([prompt] * 3, [short, long, salad])
    q_short, q_long = quality([prompt] * 2, [short, long])
    assert b_short > b_long and q_long > q_short  # the trade-off: more enthusiasm is more words
    assert b_salad == -1.0 and gold.brevity_score("") == -1.0  # short is not enough: it must be a coherent review
    assert load_scorer("default:quality") is quality
    with pytest.raises(ConfigError, match="no objective 'tone'"):
        load_scorer("default:tone")


def test_pairs_labels_every_objective_from_its_own_gold(tmp_path):
    common = dict(num_prompts=6, max_new_tokens=24, threads=1, seed=0)
    plain = pairs_stage.run(PairsConfig(output_dir=str(tmp_path / "plain"), **common))
    both = pairs_stage.run(PairsConfig(output_dir=str(tmp_path / "both"), objectives=["quality", "brevity"], **common))
    assert both["objectives"] == ["quality", "brevity"] and "objectives" not in plain
    labelled = load_records(tmp_path / "both" / "pairs.jsonl", "preference")
    overall = load_records(tmp_path / "plain" / "pairs.jsonl", "preference")
    # labelling more objectives leaves the overall judgment as it was
    assert [(p.chosen, p.metadata["votes"]) for p in labelled] == [(p.chosen, p.metadata["votes"]) for p in overall]
    for pair in labelled:
        assert set(pair.labels) == {"quality", "brevity"}
        scores = pair.metadata["gold_objectives"]["brevity"]
        assert scores["chosen"] == round(gold.brevity_score(pair.chosen, pair.prompt), 4)
    judgment = json.loads((tmp_path / "both" / "judgments.jsonl").read_text().splitlines()[0])
    assert set(judgment["criteria"]) == {"quality", "brevity"}


# ---------------------------------------------------------------- importers


def uf_completion(response: str, score: float, **ratings) -> dict:
    return {
        "response": response,
        "fine-grained_score": score,
        "annotations": {
            aspect: {"Rating": str(rating), "Rationale": "..."} if rating != "N/A" else {"Rating": "N/A"}
            for aspect, rating in ratings.items()
        },
    }


def test_raw_ultrafeedback_fine_grained_ratings_become_labels(tmp_path):
    from rlhfkit.data.importers import import_preferences

    row = {
        "instruction": "Name a prime number.",
        "completions": [
            uf_completion("Seven.", 4.5, helpfulness=5, honesty=4, instruction_following=5, truthfulness="N/A"),
            uf_completion("Nine.", 1.75, helpfulness=2, honesty=4, instruction_following=1, truthfulness=1),
            uf_completion("Two.", 3.0, helpfulness=3, honesty=5, instruction_following=4, truthfulness=5),
        ],
    }
    bad = {**row, "completions": [row["completions"][0], {**row["completions"][1], "fine-grained_score": "high"}]}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    (pair,), _ = import_preferences(path, "ultrafeedback")
    assert (pair.chosen, pair.rejected, pair.margin) == ("Seven.", "Nine.", 2.75)  # best and worst scored
    # per aspect: higher Rating wins, equal is a tie, N/A on either side is no label
    assert pair.labels == {"helpfulness": "chosen", "honesty": "tie", "instruction_following": "chosen"}
    with pytest.raises(DataError, match=r"uf-bad.jsonl:1: field 'completions\[1\]\.fine-grained_score'"):
        import_preferences(write_jsonl(tmp_path / "uf-bad.jsonl", [bad]), "ultrafeedback")


# ---------------------------------------------------------------- weights and the Pareto front (#14.3)


def test_weighted_reward_is_the_weighted_sum_of_the_sources():
    from rlhfkit.online import weighted_reward

    scores = torch.tensor([[1.0, -2.0], [0.5, 4.0], [0.0, 0.0]])
    # by hand: 0.25 * 1 + 0.75 * -2 = -1.25; 0.25 * 0.5 + 0.75 * 4 = 3.125
    assert weighted_reward(scores, [0.25, 0.75]).tolist() == [-1.25, 3.125, 0.0]
    assert weighted_reward(scores, [2.0, 0.0]).tolist() == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="one weight per source"):
        weighted_reward(scores, [1.0, 0.0, 0.0])


def test_simplex_grid_and_weight_scaling():
    from rlhfkit.stages.pareto import normalised, simplex_grid

    assert simplex_grid(2, 5) == [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]
    three = simplex_grid(3, 3)
    assert len(three) == 6 and all(sum(w) == 1.0 for w in three) and [0.5, 0.5, 0.0] in three
    assert normalised([[2, 2], [0, 3]], ["a", "b"]) == [[0.5, 0.5], [0.0, 1.0]]
    with pytest.raises(ConfigError, match=r"weights\[1\] \[1, 2, 3\]: 3 number\(s\) for 2 objectives \(a, b\)"):
        normalised([[1, 0], [1, 2, 3]], ["a", "b"])


def test_heads_of_one_model_combine_by_weight_from_one_load(two_heads):
    prompts = ["Write a short review of the gym."] * 2
    responses = [" The gym was great.", " The gym was awful." + PADDING]
    rm = str(two_heads["rm"])
    both = RewardFunction(
        [RewardSpec(model=rm, head="sentiment", weight=0.3), RewardSpec(model=rm, head="brevity", weight=0.7)]
    )
    assert both.sources[0][2] is both.sources[1][2]  # one model loaded, one forward pass for both heads
    assert both.objectives == ["sentiment", "brevity"]
    sentiment = RewardFunction([RewardSpec(model=rm, head="sentiment")])(prompts, responses)[0]
    brevity = RewardFunction([RewardSpec(model=rm, head=1)])(prompts, responses)[0]
    total, parts = both(prompts, responses)
    assert total.tolist() == pytest.approx((0.3 * sentiment + 0.7 * brevity).tolist(), abs=1e-5)
    assert parts["reward_rm0"] == pytest.approx(sentiment.mean().item(), abs=1e-5)


def run_pareto(tmp_path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from rlhfkit import cli

    monkeypatch.setattr("sys.argv", ["rlhfkit", "pareto", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_pareto_sweeps_the_heads_weights_and_marks_the_dominated_points(two_heads, tmp_path, monkeypatch, capsys):
    from rlhfkit.evaluate import pareto_front
    from rlhfkit.report.html import build_report

    out = tmp_path / "pareto"
    code, printed = run_pareto(
        tmp_path,
        monkeypatch,
        capsys,
        f"reward_model={two_heads['rm']}",
        "golds={sentiment: default:quality}",  # brevity's gold is the default task's, by its name
        "grid=3",
        "n=6",
        "num_prompts=6",
        "max_new_tokens=16",
        "threads=1",
        f"output_dir={out}",
    )
    assert code == 0, printed
    result = json.loads((out / "pareto.json").read_text())
    assert result["objectives"] == ["sentiment", "brevity"]
    assert result["golds"] == {"sentiment": "default:quality", "brevity": "default:brevity"}
    points = result["points"]
    assert [p["weights"] for p in points] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    golds = [[p["gold"]["sentiment"], p["gold"]["brevity"]] for p in points]
    assert result["front"] == pareto_front(golds) and result["front"]
    assert [p["dominated"] for p in points] == [i not in result["front"] for i in range(3)]
    # the samples are drawn once (6 prompts x 6) and re-ranked per weighting: all weight on a head picks, per
    # prompt, the sample that head scores highest, so no other weighting's winners score higher on it
    assert len((out / "samples.jsonl").read_text().splitlines()) == 36
    for p in points:
        assert p["proxy"]["sentiment"] <= points[0]["proxy"]["sentiment"] + 1e-9
        assert p["proxy"]["brevity"] <= points[2]["proxy"]["brevity"] + 1e-9
    assert points[2]["proxy"]["brevity"] > points[0]["proxy"]["brevity"]
    assert points[0]["proxy"]["sentiment"] > result["policy"]["proxy"]["sentiment"]  # selection beats no selection
    assert "dominated" in printed or "yes" in printed
    assert (out / "pareto.png").stat().st_size > 0 and (out / "pareto.md").is_file()
    page = build_report(out).read_text()
    section = page.split('id="pareto"')[1].split("</section>")[0]
    assert "Pareto" in section and "<img" in section and "gold brevity" in section and "the policy itself" in section
    assert "Not in this run folder" not in section


def test_pareto_refuses_bad_weights_and_heads(two_heads, tmp_path, monkeypatch, capsys):
    rm = f"reward_model={two_heads['rm']}"
    gold = "golds={sentiment: default:quality}"
    for args, fragments in (
        ([rm, gold, "weights=[[1, 0, 0]]"], ["weights[0] [1.0, 0.0, 0.0]", "3 number(s) for 2 objectives"]),
        ([rm, gold, "heads=[sentiment, tone]"], ["heads[1]=tone", "heads: 0: sentiment, 1: brevity"]),
        ([rm], ["golds: objective 'sentiment' has no gold judge"]),
        ([rm, gold, "golds={tone: default}"], ["golds: no objective named tone"]),
        (["reward_model=default"], ["not a reward model"]),
    ):
        out = tmp_path / "out"
        code, printed = run_pareto(tmp_path, monkeypatch, capsys, *args, f"output_dir={out}")
        assert code != 0 and "Traceback" not in printed, printed
        error = printed.strip().splitlines()[-1]
        for fragment in fragments:
            assert fragment in error, (fragment, error)
        assert not out.exists()


def test_pareto_with_a_short_grpo_run_per_weighting(two_heads, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pareto"
    code, printed = run_pareto(
        tmp_path,
        monkeypatch,
        capsys,
        f"reward_model={two_heads['rm']}",
        "golds={sentiment: default:quality}",
        "method=grpo",
        "weights=[[3, 1], [0, 2]]",
        "grpo={steps: 1, batch_size: 2, group_size: 2}",
        "num_prompts=2",
        "samples_per_prompt=2",
        "max_new_tokens=8",
        "threads=1",
        f"output_dir={out}",
    )
    assert code == 0, printed
    result = json.loads((out / "pareto.json").read_text())
    assert [p["weights"] for p in result["points"]] == [[0.75, 0.25], [0.0, 1.0]]  # scaled to sum to 1
    for i, point in enumerate(result["points"]):
        run = yaml.safe_load((out / f"grpo-{i}" / "config.yaml").read_text())
        # each GRPO run is trained on the heads weighted by its weighting
        assert [(r["head"], r["weight"]) for r in run["rewards"]] == list(enumerate(point["weights"]))
        assert (out / f"grpo-{i}" / "model" / "config.json").is_file() and point["run_dir"] == str(out / f"grpo-{i}")
    assert result["front"] and "the starting policy" in printed
