"""The benchmark harness (bench/) without TRL: how it counts FLOPs and step time, how it renders and merges the
BENCHMARKS.md section, that it replays rlhfkit's data order, and a short rlhfkit-only run end to end."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import spec  # noqa: E402
from bench.spec import Hyper, Plan, Result  # noqa: E402


def test_flop_counting():
    assert spec.train_flops(1_000, 10) == 60_000  # 6 * N * tokens
    assert spec.online_flops(1_000, tokens=10, generated=4) == 2 * 1_000 * 4 + 8 * 1_000 * 10
    assert spec.matmul_flops(2) == 16


def test_only_steady_steps_are_timed():
    # step 0's time is setup (no previous end to measure from); the last carries a final validation
    ends = [10.0, 11.0, 13.0, 16.0, 26.0]
    assert spec.steady_seconds(ends, warmup=0) == [1.0, 2.0, 3.0]  # step 0 can never be timed
    assert spec.steady_seconds(ends, warmup=1) == [
        1.0,
        2.0,
        3.0,
    ]  # steps 1..3: the first `warmup` and the last left out
    assert spec.steady_seconds(ends, warmup=2) == [2.0, 3.0]
    assert spec.steady_seconds(ends[:2], warmup=1) == []


def run(tool: str, step_s: float, rss: float, losses: list[float]) -> dict:
    result = Result(
        tool=tool,
        task="sft",
        model="default",
        repeat=0,
        step_ends=[i * step_s for i in range(6)],
        step_cpu=[i * step_s / 2 for i in range(6)],
        losses=losses,
        peak_rss_mb=rss,
    )
    plan = Plan(
        matmul_params=1_000_000, tokens_per_step=[500] * 6, padded_tokens_per_step=[800] * 6, samples_per_step=16
    )
    return spec.summarise_run(result, Hyper(batch=16, steps=6, lr=1e-4, warmup=1), plan)


def test_rates_ratios_and_goals_in_the_table():
    fast = spec.combine(
        [
            run("rlhfkit", 0.5, 600, [2.0, 1.5]),
            run("rlhfkit", 0.6, 610, [2.0, 1.5]),
            run("rlhfkit", 0.4, 590, [2.0, 1.5]),
        ]
    )
    slow = spec.combine([run("trl", 1.0, 700, [2.0, 1.5])])
    assert fast["step_s"] == pytest.approx(0.5) and fast["samples_per_s"] == pytest.approx(32.0)  # median of repeats
    assert fast["cpu_step_s"] == pytest.approx(0.25)
    assert fast["tokens_per_s"] == pytest.approx(1000.0)
    assert fast["flop_per_s"] == pytest.approx(6 * 1e6 * 1000)
    assert fast["peak_rss_mb"] == 610  # the largest over repeats
    row = {"task": "sft", "model": "default", "rlhfkit": fast, "trl": slow, "loss_match": "yes"}
    table = spec.render_table([row], peak_flops=60e9)
    assert "**2.00x**" in table and "10.0% / 5.0%" in table and "| sft | default |" in table
    goals = "\n".join(spec.goals([row]))
    assert "2.00x TRL's (goal >= 1.5x): met" in goals and "(goal <= 1.0): met" in goals
    # TRL's batches 500 real tokens in 800: removing all padding is worth at most 1.6x at the same time per token
    assert "padding bound 1.60x: TRL's padded batches are 62% real tokens" in "\n".join(
        spec.goals([{**row, "padding_bound": 1.6}])
    )


def test_bf16_sampling_row_and_goal_next_to_the_equal_arithmetic_row():
    def online(step_s: float, rewards: list[float]) -> dict:
        return {"step_s": step_s, "mean_reward": statistics.mean(rewards), "reward_half_range": None} | (
            {"reward_half_range": (max(rewards) - min(rewards)) / 2} if len(rewards) > 1 else {}
        )

    row = {
        "task": "grpo",
        "model": "default",
        "rlhfkit": online(0.5, [0.30, 0.34]),
        "trl": online(1.0, [0.32, 0.36]),
        spec.BF16_SAMPLING: online(0.4, [0.31, 0.33]),
    }
    table = spec.render_table([row], peak_flops=None)
    assert "| grpo | default | 0.50 | 1.00 | **0.50** |" in table
    assert "| grpo bf16-sampling | default | 0.40 | 1.00 | **0.40** |" in table
    goals = "\n".join(spec.goals([row]))
    assert "grpo / default bf16-sampling: iteration time 0.40 of TRL's (goal <= 0.5): met" in goals
    # |0.32 - 0.34| = 0.02 is within the largest half-range over repeats (0.02): equal within the noise
    assert "run-to-run noise 0.020): equal within the noise" in goals
    row[spec.BF16_SAMPLING] = online(0.6, [0.10, 0.11])
    goals = "\n".join(spec.goals([row]))
    assert "0.60 of TRL's (goal <= 0.5): NOT met" in goals and "NOT shown equal" in goals
    row = {key: online(0.5, [0.2]) for key in ("rlhfkit", "trl", spec.BF16_SAMPLING)} | {"task": "rloo", "model": "x"}
    assert "one repeat: noise not measured): equal within the noise" in "\n".join(spec.goals([row]))


def test_section_is_replaced_and_other_sections_kept():
    other = "## Annotation service\n\nrequests/s: 120\n"
    doc = "# Benchmarks\n\n" + other + "\n## Training throughput vs TRL\n\nold table\n\n## Later\n\nkept\n"
    new = spec.replace_section(doc, "## Training throughput vs TRL\n\nnew table\n")
    assert other in new and "## Later\n\nkept\n" in new and "new table" in new and "old table" not in new
    appended = spec.replace_section("# Benchmarks\n\n" + other, "## Training throughput vs TRL\n\nfirst\n")
    assert appended.startswith("# Benchmarks\n\n" + other) and appended.endswith(
        "## Training throughput vs TRL\n\nfirst\n"
    )
    assert spec.replace_section("", "## Training throughput vs TRL\n\nx\n").startswith("# Benchmarks\n\n## Training")


def test_consumption_order_replays_rlhfkit_shuffles():
    from bench.prepare import consumption_order
    from rlhfkit.train import forever

    records = [f"r{i}" for i in range(24)]
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)  # what the SFT stage does to its encoded examples before batching
    stream = forever(shuffled, 4, 0)
    expected = [next(stream) for _ in range(5)]
    assert [[records[i] for i in batch] for batch in consumption_order(24, 4, 5, seed=0, pre_shuffle=True)] == expected


def test_rlhfkit_only_run_end_to_end(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Annotation service\n\nuntouched\n")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--only",
            "rlhfkit",
            "--tasks",
            "sft",
            "--models",
            "default",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--no-peak",
            "--output",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "## Annotation service\n\nuntouched\n" in text and "## Training throughput vs TRL" in text
    assert "| sft | default |" in text
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    (run_summary,) = results["runs"]
    assert run_summary["tool"] == "rlhfkit" and run_summary["steps_done"] == 3 and run_summary["timed_steps"] == 1
    assert run_summary["peak_rss_mb"] > 50 and run_summary["final_loss"] > 0


def test_goals_on_qwen152k_are_issue_16s():
    # half TRL's memory and 1.5x its throughput; online, 1/1.5 of its iteration time
    k = {"samples_per_s": 30.0, "step_s": 1.0, "peak_rss_mb": 610.0}
    t = {"samples_per_s": 18.0, "step_s": 1.6, "peak_rss_mb": 1000.0}
    sft = "\n".join(spec.goals([{"task": "sft", "model": "qwen152k", "rlhfkit": k, "trl": t}]))
    assert "1.67x TRL's (goal >= 1.5x): met" in sft and "peak RSS 0.61 of TRL's (goal <= 0.5): NOT met" in sft
    grpo = "\n".join(spec.goals([{"task": "grpo", "model": "qwen152k", "rlhfkit": k, "trl": t}]))
    assert "iteration time 0.62 of TRL's (goal <= 0.67): met" in grpo
    default = "\n".join(spec.goals([{"task": "grpo", "model": "default", "rlhfkit": k, "trl": t}]))
    assert "(goal <= 0.5): NOT met" in default and "(goal <= 1.0): met" in default
    # on a shared machine the CPU seconds per step tell what the wall clock cannot
    k, t = {**k, "cpu_step_s": 5.0}, {**t, "cpu_step_s": 20.0}
    shared = [{"task": "dpo", "model": "qwen152k", "rlhfkit": k, "trl": t}]
    assert "1.67x TRL's (goal >= 1.5x): met (by CPU seconds per step: 4.00x)" in "\n".join(spec.goals(shared))


def test_qwen152k_has_qwens_vocabulary_and_takes_the_chunked_path():
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from bench.prepare import build_qwen_tokenizer
    from rlhfkit.demo import corpus
    from rlhfkit.forward import use_chunked

    openings, _ = corpus.split_openings(seed=0)
    texts = [r.text for r in corpus.generate_reviews(300, openings, seed=1)]
    tokenizer, learned = build_qwen_tokenizer(texts)
    assert len(tokenizer) == spec.QWEN_VOCAB == 151_936 and 256 < learned < spec.QWEN_VOCAB
    ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert max(ids) < learned and tokenizer.decode(ids) == texts[0]  # text never becomes a reserved entry
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=spec.QWEN_VOCAB, **spec.QWEN152K))
    head = model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight and tuple(head.shape) == (151_936, 256)  # tied, as Qwen2.5
    assert len(model.model.layers) == 4 and model.config.num_key_value_heads == 2
    assert use_chunked(model, "auto")  # the vocabulary is large enough for rlhfkit to chunk the output layer


def test_gpu_section_names_the_device_and_shows_gpu_memory():
    from bench.run import render_section

    def on_gpu(tool, step_s, gpu_mb):
        summary = run(tool, step_s, 900, [2.0, 1.5])
        return spec.combine([{**summary, "peak_gpu_mb": gpu_mb}])

    row = {"task": "sft", "model": "default", "hyper": Hyper(batch=16, steps=6, lr=1e-4).__dict__}
    row.update(rlhfkit=on_gpu("rlhfkit", 0.05, 300), trl=on_gpu("trl", 0.1, 600), loss_match="yes")
    meta = {
        "command": "bash bench/gpu/run.sh",
        "date": "2026-12-02 07:00 UTC",
        "minutes": 1.0,
        "machine": {"cpu": "x", "gpu": "NVIDIA H200 (143771 MiB, driver 580)", "cores": 16, "memory_gib": 128},
        "device": "cuda",
        "threads": 1,
        "repeats": 1,
        "peak_flops": None,
        "peaks": [],
        "versions": {},
        "failures": [],
    }
    section = render_section(meta, [row])
    assert section.startswith(spec.GPU_SECTION_TITLE + "\n")
    assert "Device: NVIDIA H200 (143771 MiB, driver 580)." in section
    # the memory columns and the memory goal are the GPU's peak, not the RSS (900 MB in both tools)
    assert (
        "rlhfkit peak GPU MB | TRL peak GPU MB | **GPU memory ratio**" in section
        and "| 300 | 600 | **0.50** |" in section
    )
    assert "peak GPU memory 0.50 of TRL's (goal <= 1.0): met" in section and "RSS" not in spec.render_table(
        [row], None, "peak_gpu_mb"
    )


def test_gpu_report_merges_the_models_and_folds_into_benchmarks(tmp_path):
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import report

    row = {"task": "sft", "model": "m", "hyper": Hyper(batch=16, steps=6, lr=1e-4).__dict__, "rlhfkit": {}, "trl": {}}
    meta = {
        "command": "python bench/run.py",
        "date": "d",
        "minutes": 1.5,
        "machine": {"cpu": "x", "gpu": "NVIDIA H200", "cores": 16, "memory_gib": 128, "os": "Linux", "python": "3.12"},
        "device": "cuda",
        "threads": 1,
        "repeats": 1,
        "peaks": [7e14],
        "peak_flops": 7e14,
        "load_before": [0.1],
        "load_after": [0.2],
        "versions": {"rlhfkit:torch": "2.11"},
        "failures": [],
    }
    for model, peak, failures in (("a", 7e14, []), ("b", 8e14, [f"sft/b trl round 1: exit 1; log {tmp_path}/x.log"])):
        (tmp_path / "work" / f"bench-{model}").mkdir(parents=True)
        results = {"meta": {**meta, "peaks": [peak], "failures": failures}, "rows": [{**row, "model": model}]}
        (tmp_path / "work" / f"bench-{model}" / "results.json").write_text(json.dumps(results))
    (tmp_path / "x.log").write_text("Traceback\nRuntimeError: CUDA out of memory\n")
    (tmp_path / "matrix.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0" time="61.2">'
        '<testcase name="test_stage_runs[llama-sft-full]"/><testcase name="test_stage_runs[gpt2-dpo-lora]">'
        '<failure message="AssertionError: not finite">trace</failure></testcase></testsuite></testsuites>'
    )
    args = ["write", "--work", str(tmp_path / "work"), "--junit", str(tmp_path / "matrix.xml"), "--out"]
    assert report.main([*args, str(tmp_path / "out"), "--extra", '{"device": "cuda"}', "--seconds", "300"]) == 0
    merged = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [r["model"] for r in merged["rows"]] == ["a", "b"] and merged["meta"]["minutes"] == 3.0
    assert merged["meta"]["peak_flops"] == 8e14 and merged["meta"]["command"] == "bash bench/gpu/run.sh"
    gpu_md = (tmp_path / "out" / "gpu.md").read_text()
    assert gpu_md.startswith(spec.GPU_SECTION_TITLE) and "Models with results: a, b." in gpu_md
    assert "2 passed, 1 failed, 0 errors, 0 skipped in 61 s" in gpu_md
    assert "- `test_stage_runs[gpt2-dpo-lora]`: AssertionError: not finite" in gpu_md
    assert "CUDA out of memory" in (tmp_path / "out" / "failures.txt").read_text()

    # a matrix cut short leaves no junit XML: the counts come from pytest's verbose lines in run.log
    (tmp_path / "run.log").write_text(
        "[gw0] [ 1%] PASSED tests/test_architectures.py::test_stage_runs[llama-sft-full] \n"
        "[gw1] [ 2%] FAILED tests/test_architectures.py::test_stage_runs[opt-dpo-lora] \n"
    )
    cut = [*args, str(tmp_path / "cut"), "--log", str(tmp_path / "run.log")]
    report.main([arg.replace("matrix.xml", "none.xml") for arg in cut])
    cut_md = (tmp_path / "cut" / "gpu.md").read_text()
    assert "run.log shows 1 passed, 1 failed, 0 errors, 0 skipped" in cut_md
    assert "- `test_stage_runs[opt-dpo-lora]`: FAILED" in cut_md
    # a rehearsal on the CPU gets a title of its own, which fold refuses: it never replaces the CPU table
    for results in (tmp_path / "work").glob("bench-*/results.json"):
        text = json.loads(results.read_text())
        text["meta"]["device"] = "cpu"
        results.write_text(json.dumps(text))
    report.main([*args, str(tmp_path / "dry")])
    assert (tmp_path / "dry" / "gpu.md").read_text().startswith(report.REHEARSAL_TITLE + "\n")
    with pytest.raises(SystemExit, match="is a rehearsal on the CPU"):
        report.main(["fold", str(tmp_path / "dry" / "gpu.md"), "--into", str(tmp_path / "B.md")])

    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n## Training throughput vs TRL\n\ncpu table\n\n## GPU run\n\nhow\n")
    assert report.main(["fold", str(tmp_path / "out" / "gpu.md"), "--into", str(benchmarks)]) == 0
    report.main(["fold", str(tmp_path / "out" / "gpu.md"), "--into", str(benchmarks)])  # again: replaced, not added
    folded = benchmarks.read_text()
    assert "cpu table" in folded and "## GPU run\n\nhow\n" in folded and folded.count(spec.GPU_SECTION_TITLE) == 1


def test_bench_refuses_a_trl_python_without_trl():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--trl-python", sys.executable, "--no-write"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert (
        done.returncode == 1 and f"bench: --trl-python {sys.executable} cannot import trl and datasets" in done.stderr
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_refuses_device_cuda_without_a_gpu():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cuda", "--only", "rlhfkit", "--no-write"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 1 and "bench: --device cuda: torch sees no CUDA GPU on this machine" in done.stderr
