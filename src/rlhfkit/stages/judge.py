"""`rlhfkit judge`: label preference pairs with an AI judge (RLAIF), every pair asked in both orders.

Response a of a pair is the input record's `chosen`, response b its `rejected`, so with known labels a judge's
"a" agrees with the file. Writes into output_dir:
- judgments.jsonl: one row per pair, {"pair_id", "annotator": "judge:NAME", "annotator_kind": "ai", "choice",
  "shown_first", "verdicts": {"a_first", "b_first"}, "details": {...}} (the format `rlhfkit agreement` reads);
- pairs.jsonl: a preference file, chosen = the judge's winner; ties are left out and counted;
- judge.json: position consistency, tie share, first-shown share, accuracy against known labels, and more.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..atomic import write_json
from ..config import JudgeConfig, save_config
from ..console import console
from ..data.records import PreferencePair, Where, parse_record, read_jsonl, write_jsonl
from ..errors import ConfigError, DataError
from ..feedback.judge import (
    Candidate,
    CausalLMJudge,
    OpenAIJudge,
    PairVerdict,
    RewardModelJudge,
    is_local_url,
    judge_both_orders,
    summarize,
)
from ..train import setup_torch


def load_candidates(path: str | Path, max_pairs: int | None = None) -> tuple[list[Candidate], list[PreferencePair]]:
    """The pairs of a preference file (validated: errors name file, line and field); a record without an id is
    `line-N`, as `rlhfkit agreement` names it. Ids must be unique: judgments are keyed by them."""
    candidates, records, seen = [], [], {}
    for lineno, obj in read_jsonl(path):
        where = Where(str(path), lineno)
        record = parse_record(obj, "preference", where)
        pair_id = record.id if record.id is not None else f"line-{lineno}"
        if pair_id in seen:
            raise where.fail(
                "id",
                f"{pair_id!r} is also the id at line {seen[pair_id]}; pair ids must be unique (judgments are keyed "
                "by them)",
            )
        seen[pair_id] = lineno
        candidates.append(Candidate(pair_id, record.prompt, record.chosen, record.rejected))
        records.append(record)
        if max_pairs and len(candidates) == max_pairs:
            break
    if not candidates:
        raise DataError(f"{path}: no records")
    return candidates, records


def read_rubric(config: JudgeConfig) -> str:
    if config.rubric_file is None:
        return config.rubric
    path = Path(config.rubric_file)
    if not path.is_file():
        raise ConfigError(f"rubric_file: {path}: file not found")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ConfigError(f"rubric_file: {path} is empty")
    return text


def api_key(config: JudgeConfig) -> str | None:
    """The key from the environment variable api_key_env; a missing key is an error unless the server is local."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env, "").strip()
    if not key and not is_local_url(config.base_url):
        raise ConfigError(
            f"api_key_env: the environment variable {config.api_key_env} is not set, and {config.base_url} is not a "
            f"local server; export {config.api_key_env}=..., point api_key_env at the variable holding the key, "
            "or set api_key_env=null for a server that needs none"
        )
    return key or None


def judge_name(config: JudgeConfig) -> str:
    if config.name:
        return config.name
    if config.kind == "openai":
        return config.api_model
    if config.model == "default":
        return "default"
    path = Path(config.model).resolve()
    return (
        path.parent.name if path.name == "model" else path.name
    )  # RUN/model, as every rlhfkit stage saves it: the run's name


def make_judge(config: JudgeConfig, rubric: str):
    if config.kind == "reward_model":
        return RewardModelJudge(
            config.model,
            head=config.head,
            tie_threshold=config.tie_threshold,
            batch_size=config.batch_size,
            max_length=config.max_length,
            max_prompt_length=config.max_prompt_length,
            ensemble_method=config.ensemble_method,
            ensemble_coef=config.ensemble_coef,
        )
    if config.kind == "causal_lm":
        return CausalLMJudge(
            config.model,
            rubric,
            labels=config.answer_labels,
            tie_threshold=config.tie_threshold,
            batch_size=config.batch_size,
            max_length=config.max_length,
        )
    key = api_key(config)
    if config.api_key_env is None:
        key_hint = "none was sent: api_key_env is null"
    else:
        key_hint = f"the key in ${config.api_key_env}" if key else f"none was sent: ${config.api_key_env} is not set"
    return OpenAIJudge(
        config.base_url,
        config.api_model,
        rubric,
        api_key=key,
        labels=config.answer_labels,
        concurrency=config.concurrency,
        timeout=config.timeout,
        max_retries=config.max_retries,
        retry_delay=config.retry_delay,
        max_reply_tokens=config.max_reply_tokens,
        key_hint=key_hint,
    )


def swap_sides(metadata: dict) -> dict:
    """Metadata for a pair whose chosen and rejected swapped: X_chosen and X_rejected values trade places."""
    out = dict(metadata)
    for key in metadata:
        if key.endswith("_chosen") and key[: -len("_chosen")] + "_rejected" in metadata:
            other = key[: -len("_chosen")] + "_rejected"
            out[key], out[other] = metadata[other], metadata[key]
    return out


def judged_pair(record: PreferencePair, verdict: PairVerdict, annotator: str, known_labels: bool) -> PreferencePair:
    """The input pair relabelled by the judge: chosen = its winner; the input's metadata kept, sides swapped with it."""
    flipped = verdict.choice == "b"
    metadata = swap_sides(record.metadata) if flipped else dict(record.metadata)
    metadata.update({"judge": annotator, "judge_verdicts": {"a_first": verdict.a_first, "b_first": verdict.b_first}})
    if known_labels:
        metadata["judge_agrees_with_input"] = not flipped
    chosen, rejected = (record.rejected, record.chosen) if flipped else (record.chosen, record.rejected)
    return PreferencePair(
        prompt=record.prompt,
        chosen=chosen,
        rejected=rejected,
        id=verdict.pair_id,
        category=record.category,
        annotator=annotator,
        metadata=metadata,
    )


def judgment_row(verdict: PairVerdict, annotator: str) -> dict:
    return {
        "pair_id": verdict.pair_id,
        "annotator": annotator,
        "annotator_kind": "ai",
        "choice": verdict.choice,
        "shown_first": verdict.shown_first,
        "verdicts": {"a_first": verdict.a_first, "b_first": verdict.b_first},
        "details": verdict.details,
    }


def run(config: JudgeConfig) -> dict:
    start = time.time()
    out = Path(config.output_dir)
    setup_torch(config.seed, config.threads)
    candidates, records = load_candidates(config.data, config.max_pairs)
    rubric = read_rubric(config)
    judge = make_judge(config, rubric)
    annotator = f"judge:{judge_name(config)}"
    save_config(config, out)

    verdicts = judge_both_orders(judge, candidates, seed=config.seed)
    write_jsonl(out / "judgments.jsonl", (judgment_row(v, annotator) for v in verdicts))
    judged = [judged_pair(r, v, annotator, config.known_labels) for r, v in zip(records, verdicts) if v.choice != "tie"]
    write_jsonl(out / "pairs.jsonl", judged)

    summary = {
        "stage": "judge",
        "kind": config.kind,
        "judge": annotator,
        "data": config.data,
        **(
            {"base_url": config.base_url, "api_model": config.api_model}
            if config.kind == "openai"
            else {"model": config.model}
        ),
        **summarize(verdicts, config.known_labels),
        "pairs_written": len(judged),
        "ties_left_out": len(verdicts) - len(judged),
        **judge.stats(),
        "files": {name: str(out / name) for name in ("judgments.jsonl", "pairs.jsonl", "judge.json")},
        "elapsed_s": round(time.time() - start, 1),
    }
    write_json(out / "judge.json", summary)
    report(summary, config)
    return summary


def report(summary: dict, config: JudgeConfig) -> None:
    line = (
        f"judge {summary['judge']}: {summary['pairs']} pairs, position-consistent "
        f"{summary['position_consistency']:.1%}, "
        f"ties {summary['tie_share']:.1%}"
    )
    if summary.get("accuracy") is not None:
        line += (
            f", accuracy against the file's labels {summary['accuracy']:.3f} on {summary['decided_pairs']} "
            "decided pairs"
        )
    console.print(
        f"{line}; wrote {summary['pairs_written']} pairs to {summary['files']['pairs.jsonl']} "
        f"({summary['ties_left_out']} ties left out)"
    )
    if summary["pairs_written"] == 0:
        console.print(
            "[bold red]warning:[/] every pair is a tie, so pairs.jsonl is empty: the judge's verdict follows the order "
            "the responses are shown in, or tie_threshold is too high"
        )
    elif summary["tie_share"] > 0.5:
        console.print(
            f"[bold red]warning:[/] {summary['tie_share']:.0%} of pairs are ties; the judge is swayed by position "
            f"(it picks the first-shown response in {summary['first_shown_share']:.0%} of single-order verdicts)"
        )
    if summary.get("unparseable"):
        console.print(
            f"[bold red]warning:[/] {summary['unparseable']} replies had no verdict the parser could read (counted "
            "as ties); "
            f"first: {summary['unparseable_examples'][0]!r}"
        )
