"""One benchmark run of rlhfkit, in its own process: `python bench/worker_rlhfkit.py JOB.json`.

The stage runs through rlhfkit's Python API (`build_config` + the stage's `run`/`train`), exactly as the CLI
would; the only additions are passive probes: a wrapper around the run log (metrics.jsonl rows) that notes the
wall clock at the end of every step, and around the online sampler to count prompt and response tokens.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.spec import Job, Result  # noqa: E402

BIG = 10**9  # "never" for eval_every / save_every: no validation or checkpoint inside the timed steps
GPU_KEYS = {"device": "cuda", "mixed_precision": "bf16"}  # job.device cuda, where the stage's config has the keys


def stage_values(job: Job) -> tuple[str, dict]:
    h = job.hyper
    common = {"output_dir": job.out_dir, "seed": job.seed, "threads": job.threads}
    if job.task in ("sft", "reward", "dpo"):
        # Constant-free schedule both tools share: no warm-up, rlhfkit's linear decay to 10% (TRL gets the same
        # LambdaLR); AdamW without weight decay; clipping at 1.0.
        train = {
            **common,
            "max_steps": h.steps,
            "batch_size": h.batch,
            "grad_accum": 1,
            "lr": h.lr,
            "weight_decay": 0.0,
            "warmup_ratio": 0.0,
            "max_grad_norm": 1.0,
            "max_length": h.max_length,
            "max_prompt_length": h.max_prompt_length,
            "eval_every": BIG,
            "log_every": 1,
        }
        if job.task == "sft":
            return "sft", {**train, "model": job.model_dir, "data": job.data, "val_fraction": 0.0}
        if job.task == "reward":
            return "reward-train", {
                **train,
                "model": job.model_dir,
                "data": job.data,
                "val_fraction": 0.2,
                "patience": 0,
                "early_stop_metric": "loss",
            }
        return "dpo", {
            **train,
            "model": job.model_dir,
            "data": job.data,
            "beta": h.beta,
            "loss_type": "sigmoid",
            "val_fraction": 0.0,
        }
    online = {
        **common,
        "model": job.model_dir,
        "prompts": job.data,
        "rewards": [{"function": "rlhfkit.demo.gold:score"}],
        "gold": None,
        "steps": h.steps,
        "batch_size": h.batch,
        "mini_batch_size": h.batch * h.group,
        "epochs_per_batch": 1,
        "lr": h.lr,
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
        "max_new_tokens": h.max_new_tokens,
        "max_prompt_length": h.max_prompt_length,
        "temperature": h.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "kl_coef": h.beta,
        "save_every": BIG,
        "clip_low": 0.2,
    }
    if job.variant == "bf16-sampling":  # spec.BF16_SAMPLING: sample with a bf16 copy, update in fp32, corrected
        online["rollout_dtype"] = "bfloat16"
    if job.task == "grpo":
        return "grpo", {**online, "group_size": h.group, "normalize": True, "kl_estimator": "k3"}
    return "rloo", {**online, "k": h.group, "kl_estimator": "k1"}


def main(job_path: str) -> None:
    job = Job.from_json(Path(job_path).read_text())
    os.environ["RLHFKIT_NO_PROGRESS"] = "1"

    import torch
    import transformers

    import rlhfkit
    from rlhfkit import online
    from rlhfkit import train as train_mod
    from rlhfkit.config import build_config
    from rlhfkit.stages import STAGES, dpo, grpo, reward, sft

    result = Result(
        tool="rlhfkit",
        task=job.task,
        model=job.model,
        repeat=job.repeat,
        versions={"rlhfkit": rlhfkit.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
    )

    name, values = stage_values(job)
    on_gpu = {}
    if job.device == "cuda":
        on_gpu = {key: value for key, value in GPU_KEYS.items() if key in STAGES[name].config.model_fields}
        values.update(on_gpu)
        if not on_gpu:
            result.notes.append(f"{name} has no device key: it ran on the CPU")
    # a GPU step ends when its kernels have run, not when Python has queued them
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    # Probe 1: the end of each step is when the stage logs its row (log_every=1; online stages log every iteration).
    original_log = train_mod.RunLog.log

    def timed_log(self, step, **metrics):
        sync()
        result.step_ends.append(time.perf_counter())
        result.step_cpu.append(time.process_time())
        online_row = "policy_loss" in metrics
        result.losses.append(metrics.get("policy_loss" if online_row else "loss"))
        if online_row:
            result.rewards.append(metrics.get("reward"))
            result.kls.append(metrics.get("kl"))
        return original_log(self, step, **metrics)

    train_mod.RunLog.log = timed_log
    # Probe 2: tokens of each online iteration, from the rollout itself.
    original_sample = online.sample_batch

    def counted_sample(*args, **kwargs):
        batch = original_sample(*args, **kwargs)
        prompt = int(batch.rollout.prompt_mask.sum())
        response = int(batch.rollout.response_mask.sum())
        result.tokens.append(prompt + response)
        result.generated.append(response)
        return batch

    online.sample_batch = counted_sample

    values.update(json.loads(os.environ.get("RLHFKIT_BENCH_SET", "{}")))  # A/B runs by hand, e.g. {"logits": "full"}
    config = build_config(STAGES[name].config, values, source=f"bench {job.task}")
    {"sft": sft.run, "reward-train": reward.train, "dpo": dpo.run, "grpo": grpo.run, "rloo": grpo.run}[name](config)
    result.setup_s = result.step_ends[0] - START if result.step_ends else 0.0
    result.wall_s = time.perf_counter() - START
    if on_gpu:
        result.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    result.save(job.result)


if __name__ == "__main__":
    main(sys.argv[1])
