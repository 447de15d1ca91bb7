"""Running at scale on a laptop: N processes under torchrun / accelerate launch (DDP over gloo), resumable
checkpoints that survive kill -9, mixed precision, gradient checkpointing, and QLoRA refused off CUDA."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhfkit.data.records import PreferencePair, load_records, write_jsonl
from rlhfkit.demo.build import ensure_default

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
ACCELERATE = BIN / "accelerate"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def env() -> dict:
    return {**os.environ, "RLHFKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def launch(launcher: list[str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env(), timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def single() -> list[str]:
    return [sys.executable, "-m", "rlhfkit.cli"]


def torchrun(n: int) -> list[str]:
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={n}", "-m", "rlhfkit.cli"]


def accelerate_launch(n: int) -> list[str]:
    # the shipped DDP config; its launcher (accelerate's MULTI_GPU one) also starts CPU processes, and rlhfkit uses gloo
    config = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "ddp.yaml"
    return [str(ACCELERATE), "launch", "--config_file", str(config), f"--num_processes={n}", "-m", "rlhfkit.cli"]


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory) -> Path:
    """96 pairs from the default task: a prompt's own review (chosen) against another prompt's (rejected)."""
    examples = load_records(ensure_default().sft_data, "sft")[:97]
    pairs = [
        PreferencePair(prompt=a.prompt, chosen=a.response, rejected=b.response, id=i)
        for i, (a, b) in enumerate(zip(examples, examples[1:]))
    ]
    path = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    write_jsonl(path, pairs[:96])
    return path


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [row[key] for row in rows(run_dir / "metrics.jsonl") if key in row]


# -------------------------------------------------------------------------------------- N processes == 1 process


# One SFT setting for the DDP and the FSDP comparisons: its one-process run is made once (fixture) and both follow it.
SFT_ARGS = [
    "sft",
    "max_steps=8",
    "batch_size=4",
    "grad_accum=2",
    "lr=1e-3",
    "log_every=1",
    "eval_every=4",
    "checkpoint_every=4",
    "val_fraction=0.05",
    "max_length=96",
    "threads=1",
    "seed=3",
]


@pytest.fixture(scope="module")
def sft_one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "one"
    launch(single(), *SFT_ARGS, f"output_dir={out}")
    return out


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_follow_the_one_process_loss_curve_sft(tmp_path, sft_one_process):
    two = launch(torchrun(2), *SFT_ARGS, f"output_dir={tmp_path / 'two'}")
    assert "distributed: 2 processes" in two.stderr
    one_curve, two_curve = losses(sft_one_process), losses(tmp_path / "two")
    assert len(one_curve) == len(two_curve) == 8
    # same global batch and token-weighted loss: equal up to float rounding in the gradient all-reduce
    assert two_curve == pytest.approx(one_curve, rel=2e-3, abs=2e-3)
    assert losses(tmp_path / "two", "val_loss") == pytest.approx(losses(sft_one_process, "val_loss"), rel=2e-3)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model")  # one model, written by the main process


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_follow_the_one_process_loss_curve_dpo(tmp_path, preference_file):
    args = [
        "dpo",
        f"data={preference_file}",
        "max_steps=5",
        "batch_size=8",
        "lr=5e-4",
        "log_every=1",
        "eval_every=5",
        "val_fraction=0.1",
        "max_length=96",
        "threads=1",
    ]
    launch(single(), *args, f"output_dir={tmp_path / 'one'}")
    launch(torchrun(2), *args, f"output_dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-3, abs=2e-3)
    assert losses(tmp_path / "two", "reward_margin") == pytest.approx(
        losses(tmp_path / "one", "reward_margin"), rel=1e-2, abs=1e-3
    )


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed beside this Python")
def test_reward_training_under_accelerate_launch_matches_one_process(tmp_path, preference_file):
    args = [
        "reward",
        "train",
        f"data={preference_file}",
        "max_steps=6",
        "batch_size=8",
        "lr=5e-4",
        "log_every=1",
        "eval_every=3",
        "patience=0",
        "max_length=96",
        "threads=1",
    ]
    launch(single(), *args, f"output_dir={tmp_path / 'one'}")
    two = launch(accelerate_launch(2), *args, f"output_dir={tmp_path / 'two'}")
    assert "distributed: 2 processes" in two.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-3, abs=2e-3)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_ppo_trains_policy_and_value_model_in_two_processes(tmp_path):
    launch(
        torchrun(2),
        "ppo",
        "rewards=[{function: default}]",
        "steps=2",
        "batch_size=8",
        "mini_batch_size=4",
        "max_new_tokens=24",
        "threads=1",
        f"output_dir={tmp_path}",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2 and [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [1, 2]
    assert (tmp_path / "value_model").is_dir() and (tmp_path / "model").is_dir()
    bad = subprocess.run(
        [
            *torchrun(2),
            "ppo",
            "rewards=[{function: default}]",
            "steps=1",
            "batch_size=8",
            "mini_batch_size=3",
            f"output_dir={tmp_path / 'bad'}",
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert bad.returncode != 0 and "mini_batch_size 3 must split evenly among the 2 processes" in bad.stderr


def test_global_batch_must_split_evenly(tmp_path):
    result = subprocess.run(
        [*torchrun(2), "sft", "max_steps=1", "batch_size=7", f"output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert result.returncode != 0
    assert "batch_size 7 is the global batch and must divide evenly among the 2 processes" in result.stderr


# ----------------------------------------------------------------------------------------------- kill -9, then --resume


def kill_tree(process: subprocess.Popen) -> None:
    """kill -9 torchrun and its workers at once, as a lost machine would. torchrun starts each worker in a session of
    its own, so killing torchrun's process group would leave the workers running."""
    import psutil

    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    assert len(tree) >= 3, "torchrun and its 2 workers"
    for member in tree:
        member.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree[1:], timeout=30)


def kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed:\n{process.stderr.read()[-3000:]}")
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run never reached the point to kill it")


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_kill_9_then_resume_reaches_the_uninterrupted_result(tmp_path, stage, preference_file):
    data = [] if stage == "sft" else [f"data={preference_file}"]
    args = [
        stage,
        *data,
        "max_steps=12",
        "batch_size=4",
        "lr=1e-3",
        "log_every=1",
        "eval_every=6",
        "checkpoint_every=4",
        "val_fraction=0.05",
        "max_length=96",
        "threads=1",
        "seed=3",
    ]
    launch(single(), *args, f"output_dir={tmp_path / 'straight'}")

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*single(), *args, f"output_dir={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env()
    )
    # killed after the step-8 checkpoint, mid-way to step 12
    kill_when(
        process,
        lambda: (
            (out / "checkpoints" / "step-000008").is_dir() and any(r["step"] >= 9 for r in rows(out / "metrics.jsonl"))
        ),
    )
    assert not (out / "model").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step-000004",
        "step-000008",
    ]

    resumed = launch(single(), *args, f"output_dir={out}", "resume=true")
    assert "resuming from" in resumed.stderr and "step-000008" in resumed.stderr
    straight, again = rows(tmp_path / "straight" / "metrics.jsonl"), rows(out / "metrics.jsonl")
    assert [r["step"] for r in again] == list(
        range(1, 13)
    )  # the killed run's rows after step 8 were dropped, none twice
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert drop_time(again) == drop_time(straight)  # deterministic settings: the same numbers, bit for bit
    from safetensors.torch import load_file

    weights_a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    weights_b = load_file(out / "model" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, cli_in_process):
    result = cli_in_process(
        "sft", "max_steps=2", "batch_size=4", "val_fraction=0.01", "resume=true", f"output_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    assert "no checkpoint" in result.stderr and (tmp_path / "model").is_dir()


# ----------------------------------------------------------------------------------------------- memory options


def test_bf16_autocast_and_gradient_checkpointing_train_on_cpu(tmp_path):
    from rlhfkit.config import SFTConfig
    from rlhfkit.stages import sft

    data = tmp_path / "sft.jsonl"
    write_jsonl(data, load_records(ensure_default().sft_data, "sft")[:80])
    base = dict(
        data=str(data),
        max_steps=8,
        batch_size=8,
        lr=1e-3,
        log_every=1,
        eval_every=8,
        val_fraction=0.1,
        max_length=96,
        threads=1,
    )
    for name, extra in (
        ("fp32", {}),
        ("ckpt", {"gradient_checkpointing": True}),
        ("bf16", {"mixed_precision": "bf16"}),
        ("lora-ckpt", {"gradient_checkpointing": True, "lora": {"r": 4}, "lr": 5e-3}),
    ):
        sft.run(SFTConfig(**{**base, **extra, "output_dir": str(tmp_path / name)}))
    fp32 = losses(tmp_path / "fp32")
    # recomputing activations changes nothing but memory and time
    assert losses(tmp_path / "ckpt") == pytest.approx(fp32, rel=1e-4)
    bf16 = losses(tmp_path / "bf16")
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=5e-2)  # autocast ran in bf16: rounded, same trajectory
    lora = losses(tmp_path / "lora-ckpt")
    assert len(lora) == 8 and all(map(math.isfinite, lora))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without CUDA")
@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.load_in_4bit=true", "lora.load_in_4bit (QLoRA) needs a CUDA GPU"),
        ("mixed_precision=fp16", "mixed_precision 'fp16' needs a CUDA GPU"),
        ("device=cuda", "device 'cuda': no CUDA GPU"),
    ],
)
def test_cuda_only_options_are_refused_on_cpu_before_any_work(tmp_path, override, message, cli_in_process):
    result = cli_in_process("sft", override, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr
    assert not (tmp_path / "run" / "model").exists()


# ----------------------------------------------------------------------------------------------- FSDP2 (fsdp=true)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


def relative_difference(run_a: Path, run_b: Path) -> float:
    """|saved weights of a - of b| over |a's training update| (L2 over every weight): rounding differences that Adam
    turns into small updates where a gradient is near zero stay far below the update itself."""
    from safetensors.torch import load_file

    start_dir = Path(json.loads((run_a / "summary.json").read_text())["model"])
    start = load_file(next(start_dir.glob("*.safetensors")))
    a, b = weights(run_a), weights(run_b)
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    update = torch.cat([(a[k] - start[k]).flatten() for k in a])
    return (diff.norm() / update.norm()).item()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_fsdp_follows_one_process_saves_the_whole_model_and_resumes_after_kill_9(tmp_path, sft_one_process):
    one = sft_one_process  # the same SFT_ARGS in one process (the DDP test follows it too)
    two = launch(torchrun(2), *SFT_ARGS, "fsdp=true", f"output_dir={tmp_path / 'two'}")
    assert "distributed: 2 processes" in two.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(one), rel=2e-3, abs=2e-3)
    assert losses(tmp_path / "two", "val_loss") == pytest.approx(losses(one, "val_loss"), rel=2e-3)
    # gathered from both shards: every weight, the same model (measured 4e-4 here; DDP gives 5e-4)
    assert relative_difference(one, tmp_path / "two") < 5e-3
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model")
    assert sum(p.numel() for p in reloaded.parameters()) == sum(v.numel() for v in weights(one).values())

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*torchrun(2), *SFT_ARGS, "fsdp=true", f"output_dir={out}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (
        (out / "checkpoints" / "step-000004").is_dir() and any(r["step"] >= 5 for r in rows(out / "metrics.jsonl"))
    ):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    kill_tree(process)
    assert not (out / "model").exists()
    assert (out / "checkpoints" / "step-000004" / "sharded").is_dir()  # every process's shards, not one copy

    resumed = launch(torchrun(2), *SFT_ARGS, "fsdp=true", f"output_dir={out}", "resume=true")
    assert "resuming from" in resumed.stderr and "step-000004" in resumed.stderr
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert drop_time(rows(out / "metrics.jsonl")) == drop_time(rows(tmp_path / "two" / "metrics.jsonl"))
    a, b = weights(tmp_path / "two"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_fsdp_lora_dpo_follows_one_process_and_saves_the_merged_model(tmp_path, preference_file):
    # no LoRA dropout: its random masks are drawn per process, so 2 processes would drop other units than 1
    args = [
        "dpo",
        f"data={preference_file}",
        "max_steps=3",
        "batch_size=8",
        "lr=5e-3",
        "log_every=1",
        "eval_every=3",
        "val_fraction=0.1",
        "max_length=96",
        "threads=1",
        "lora.r=4",
        "lora.dropout=0",
    ]
    launch(single(), *args, f"output_dir={tmp_path / 'one'}")
    launch(torchrun(2), *args, "fsdp=true", f"output_dir={tmp_path / 'two'}")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-3, abs=2e-3)
    # the adapter merged into the gathered base: a plain model, equal to fp32 rounding (measured 5e-7 at most)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys() and not any("lora" in k for k in two)
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert relative_difference(tmp_path / "one", tmp_path / "two") < 1e-4


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock columns."""
    return [{k: v for k, v in r.items() if k not in ("time", "step_seconds")} for r in rows(run_dir / "metrics.jsonl")]


def assert_same_curves(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert [r[key] for r in metric_rows(b)] == pytest.approx([r[key] for r in metric_rows(a)], rel=1e-4, abs=1e-5)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_fsdp_grpo_follows_ddp_saves_the_whole_policy_and_resumes_after_kill_9(tmp_path):
    # both processes sample from the same streams under DDP and FSDP: the runs must agree to float rounding
    args = [
        "grpo",
        "rewards=[{function: default}]",
        "steps=6",
        "batch_size=4",
        "group_size=4",
        "mini_batch_size=8",
        "max_new_tokens=16",
        "lr=1e-4",
        "save_every=2",
        "threads=1",
    ]
    first = launch(torchrun(2), *args, f"output_dir={tmp_path / 'ddp'}")
    assert "distributed: 2 processes" in first.stderr and "2 of each batch's 4 per process" in first.stderr
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and [r["step"] for r in rows(tmp_path / "ddp" / "metrics.jsonl")] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    # 16 sequences a step in all: each process sampled 8 (2 prompts x 4) from its own stream, both saved
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "step-000006" / "trainer_state.pt", weights_only=False)
    ranks = state["rng"]["ranks"]
    assert state["state"]["prompt_position"] == 24 and len(ranks) == 2 and all("generator" in r for r in ranks)
    launch(torchrun(2), *args, "fsdp=true", f"output_dir={tmp_path / 'fsdp'}")
    assert_same_curves(tmp_path / "ddp", tmp_path / "fsdp", ("reward", "kl", "policy_loss", "entropy"))
    # gathered from both shards, the whole policy (measured 1.2e-7 at most)
    ddp, fsdp = weights(tmp_path / "ddp"), weights(tmp_path / "fsdp")
    assert ddp.keys() == fsdp.keys() and max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp) < 1e-5
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "model")  # loads in plain transformers

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*torchrun(2), *args, "fsdp=true", f"output_dir={out}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-000002").is_dir():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    kill_tree(process)
    assert not (out / "model").exists()
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert newest.name in ("step-000002", "step-000004") and (newest / "sharded").is_dir()
    resumed = launch(torchrun(2), *args, "fsdp=true", f"output_dir={out}", "resume=true")
    assert f"resuming from {newest}" in " ".join(resumed.stderr.split())
    # the same trajectory (the rolling *_avg columns are re-read from the log's rounded values: 1e-6 apart)
    resumed_rows, uninterrupted = metric_rows(out), metric_rows(tmp_path / "fsdp")
    assert [sorted(r) for r in resumed_rows] == [sorted(r) for r in uninterrupted]
    assert all(r[k] == pytest.approx(u[k], rel=1e-5) for r, u in zip(resumed_rows, uninterrupted) for k in u)
    killed = weights(out)
    assert all(torch.equal(killed[k], fsdp[k]) for k in fsdp)
    # a sharded checkpoint resumed without fsdp=true is refused, naming both
    refused = subprocess.run(
        [*torchrun(2), *args, "steps=7", f"output_dir={out}", "resume=true"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert refused.returncode != 0 and "was written with fsdp=true" in refused.stderr


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_fsdp_ppo_with_lora_follows_ddp_and_saves_policy_and_value_model(tmp_path):
    args = [
        "ppo",
        "rewards=[{function: default}]",
        "steps=2",
        "batch_size=4",
        "mini_batch_size=4",
        "max_new_tokens=16",
        "lr=1e-3",
        "threads=1",
        "lora.r=4",
        "lora.dropout=0",  # LoRA dropout's masks are drawn per process
    ]
    launch(torchrun(2), *args, f"output_dir={tmp_path / 'ddp'}")
    launch(torchrun(2), *args, "fsdp=true", f"output_dir={tmp_path / 'fsdp'}")
    assert_same_curves(tmp_path / "ddp", tmp_path / "fsdp", ("reward", "kl", "policy_loss", "value_loss"))
    from safetensors.torch import load_file

    for saved in ("model/model.safetensors", "value_model/model.safetensors"):
        ddp, fsdp = load_file(tmp_path / "ddp" / saved), load_file(tmp_path / "fsdp" / saved)
        assert ddp.keys() == fsdp.keys() and not any("lora" in k for k in fsdp)  # the adapter merged, whole
        assert max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp) < 1e-5
    ddp_head, fsdp_head = (torch.load(tmp_path / run / "value_head.pt") for run in ("ddp", "fsdp"))
    assert all(torch.allclose(ddp_head[k], fsdp_head[k], atol=1e-6) for k in ddp_head)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_kto_in_two_sharded_processes_follows_one_process(tmp_path, preference_file):
    # thumbs from the pairs: each chosen reply up, each rejected one down (unbalanced: every third down dropped)
    thumbs = tmp_path / "thumbs.jsonl"
    with thumbs.open("w") as f:
        for i, pair in enumerate(rows(preference_file)):
            f.write(json.dumps({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True}) + "\n")
            if i % 3:
                f.write(json.dumps({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}) + "\n")
    args = [
        "kto",
        f"data={thumbs}",
        "max_steps=3",
        "batch_size=8",
        "lr=1e-4",
        "log_every=1",
        "eval_every=3",
        "val_fraction=0.1",
        "max_length=96",
        "threads=1",
    ]
    launch(single(), *args, f"output_dir={tmp_path / 'one'}")
    two = launch(torchrun(2), *args, "fsdp=true", f"output_dir={tmp_path / 'two'}")
    assert "distributed: 2 processes" in two.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-3, abs=2e-3)
    assert losses(tmp_path / "two", "kl") == pytest.approx(losses(tmp_path / "one", "kl"), rel=2e-3, abs=2e-3)
    one, two_summary = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert two_summary["balance"] == one["balance"] and two_summary["processes"] == 2
    assert relative_difference(tmp_path / "one", tmp_path / "two") < 5e-3


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
@pytest.mark.parametrize(
    ("stage", "keys"),
    [
        ("reinforce-pp", ("reward", "kl", "policy_loss", "return", "entropy")),
        ("online-dpo", ("reward", "kl", "dpo_loss", "reward_margin", "implicit_reward_margin", "entropy")),
    ],
)
def test_fsdp_follows_ddp_for_reinforce_pp_and_online_dpo(tmp_path, stage, keys):
    # 2 prompts a process; both samplers draw the same per-process streams under DDP and FSDP
    args = [stage, "rewards=[{function: default}]", "steps=2", "batch_size=4", "mini_batch_size=4"]
    args += ["max_new_tokens=16", "lr=1e-4", "threads=1"]
    ddp = launch(torchrun(2), *args, f"output_dir={tmp_path / 'ddp'}")
    assert "distributed: 2 processes" in ddp.stderr
    launch(torchrun(2), *args, "fsdp=true", f"output_dir={tmp_path / 'fsdp'}")
    assert_same_curves(tmp_path / "ddp", tmp_path / "fsdp", keys)
    assert [r["step"] for r in metric_rows(tmp_path / "fsdp")] == [1, 2]
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["processes"] == 2
    # gathered from both shards, the whole policy, and it moved off the start
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "fsdp")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert metric_rows(tmp_path / "fsdp")[-1]["kl"] != 0
