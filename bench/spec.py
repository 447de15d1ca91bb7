"""What the benchmark runs and how it counts: tasks, hyper-parameters, FLOPs, step timing, the results table.

Pure Python (no torch, no rlhfkit, no TRL): imported by the driver, by both workers (each in its own virtual
environment) and by the smoke test.

How work is counted (the same for both tools, from the same data, so a ratio of rates is a ratio of times):
- tokens: the non-padding tokens a training step feeds forward and back (SFT: prompt+response; reward and DPO:
  prompt+chosen and prompt+rejected). Online RL: every prompt and response token of the iteration.
- FLOPs of a training step: 6 * N * tokens, N = the weights that take part in a matrix multiply (every linear
  layer and the LM head; not the embedding lookups). Attention-score FLOPs (QK^T, AV) are left out; at these
  lengths they are a few percent of the total.
- FLOPs of an online iteration: 2N per generated token (KV-cached sampling) + 2N per token for the reference
  forward + 6N per token for the update; extra passes a tool chooses to make are not counted as useful work.
- step time: wall time between the ends of consecutive optimizer steps, measured in the training process;
  the first `warmup` steps and the last step (which may include a final validation) are left out.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

TOOLS = ("rlhfkit", "trl")
# An extra configuration of rlhfkit on the online tasks, run next to the equal-arithmetic row: the rollout samples
# with a bf16 copy of the policy (rollout_dtype=bfloat16), the update stays fp32 with the importance correction.
BF16_SAMPLING = "rlhfkit bf16-sampling"
TRAIN_TASKS = ("sft", "reward", "dpo")
ONLINE_TASKS = ("grpo", "rloo")
TASKS = TRAIN_TASKS + ONLINE_TASKS
MODELS = ("default", "llama20m", "qwen152k")
# What a plain `make bench` runs (about 11 minutes on 2 cores). qwen152k's rows take about as long again per round,
# so they are asked for by name, into their own section: BENCHMARKS.md, "on a 151,936-token vocabulary".
DEFAULT_MODELS = ("default", "llama20m")

# TRL's virtual environment: pinned so a rerun compares the same code. transformers and accelerate are pinned to
# the versions rlhfkit's own environment resolves, so both tools run the same model code.
TRL_REQUIREMENTS = [
    "torch==2.13.0",
    "trl==1.16.0",
    "transformers==5.24.0",
    "accelerate==1.15.0",
    "datasets==5.2.0",
    "vaderSentiment==3.3.2",
]

# The ~20M-parameter Llama-config model (random init, the default's tokenizer): 6 layers, hidden 512, 8 heads with
# 4 key/value heads (grouped-query attention), SwiGLU MLP 1536 wide, untied embeddings.
LLAMA20M = {
    "hidden_size": 512,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}

# A Qwen2-architecture model at Qwen2.5's real vocabulary size (random init): the output layer of 151,936 rows is
# 39M of its 42M weights, so the logits, not the body, set the memory and the time. The body is small (4 layers,
# hidden 256, 4 heads of 64 with 2 key/value heads, SwiGLU 1024 wide); embeddings tied, as in Qwen2.5-0.5B. Its
# tokenizer is built locally (bench/prepare.py: build_qwen_tokenizer), QWEN_VOCAB tokens long.
QWEN_VOCAB = 151_936
QWEN152K = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 1024,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "rope_theta": 1_000_000.0,
}


@dataclass
class Hyper:
    """Hyper-parameters one (task, model) runs with in both tools."""

    batch: int  # SFT examples / preference pairs per step; online: prompts per iteration
    steps: int  # optimizer steps (online: iterations)
    lr: float
    warmup: int = 2  # steps left out of the timing (allocator warm-up, first-touch of the weights)
    max_length: int = 256
    max_prompt_length: int = 128
    group: int = 0  # online: responses per prompt
    max_new_tokens: int = 0
    temperature: float = 1.0
    beta: float = 0.1  # DPO beta; GRPO: KL-loss weight (k3); RLOO: KL penalty in the reward (k1)


def default_hypers() -> dict[tuple[str, str], Hyper]:
    """Chosen so that `make bench` (3 interleaved repeats of everything) fits well under 20 minutes on 2 cores."""
    return {
        ("sft", "default"): Hyper(batch=16, steps=12, lr=3e-4),
        ("reward", "default"): Hyper(batch=16, steps=12, lr=1e-4),
        ("dpo", "default"): Hyper(batch=16, steps=12, lr=5e-5),
        ("grpo", "default"): Hyper(batch=4, steps=6, lr=3e-5, group=8, max_new_tokens=48, beta=0.04, warmup=1),
        ("rloo", "default"): Hyper(batch=4, steps=6, lr=3e-5, group=4, max_new_tokens=48, beta=0.05, warmup=1),
        ("sft", "llama20m"): Hyper(batch=8, steps=7, lr=3e-4),
        ("reward", "llama20m"): Hyper(batch=8, steps=7, lr=1e-4),
        ("dpo", "llama20m"): Hyper(batch=4, steps=7, lr=5e-5),
        ("grpo", "llama20m"): Hyper(batch=2, steps=4, lr=3e-5, group=4, max_new_tokens=32, beta=0.04, warmup=1),
        ("rloo", "llama20m"): Hyper(batch=2, steps=4, lr=3e-5, group=4, max_new_tokens=32, beta=0.05, warmup=1),
        # qwen152k: SFT, DPO and GRPO only (the tasks whose cost is the output layer); batches big enough that the
        # [tokens, vocab] logits outweigh the weights and optimizer state, as they do on real models.
        ("sft", "qwen152k"): Hyper(batch=16, steps=6, lr=3e-4),
        ("dpo", "qwen152k"): Hyper(batch=8, steps=6, lr=5e-5),
        ("grpo", "qwen152k"): Hyper(batch=2, steps=4, lr=3e-5, group=8, max_new_tokens=48, beta=0.04, warmup=1),
    }


@dataclass
class Job:
    """One run of one tool on one (task, model): everything a worker needs, as JSON."""

    tool: str
    task: str
    model: str
    hyper: Hyper
    model_dir: str  # HF directory both tools load (for reward: a sequence-classification directory)
    data: str  # JSONL the rlhfkit stage reads
    trl_data: str  # JSONL of the same records in the order rlhfkit consumes them (TRL reads it sequentially)
    out_dir: str
    result: str  # where the worker writes its Result JSON
    threads: int = 2
    seed: int = 0
    repeat: int = 0
    variant: str = ""  # rlhfkit only: "bf16-sampling" (BF16_SAMPLING)
    device: str = "cpu"  # "cuda": both tools train on the GPU with bf16 autocast (bench/gpu/run.sh)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        raw = json.loads(text)
        raw["hyper"] = Hyper(**raw["hyper"])
        return cls(**raw)


@dataclass
class Result:
    """What a worker reports; the driver adds the peak RSS it read with wait4()."""

    tool: str
    task: str
    model: str
    repeat: int
    step_ends: list[float] = field(default_factory=list)  # perf_counter() at the end of every step
    step_cpu: list[float] = field(default_factory=list)  # process_time() there: CPU seconds, blind to other tenants
    losses: list[float] = field(default_factory=list)  # per step
    rewards: list[float] = field(default_factory=list)  # online: mean reward of each iteration's samples
    kls: list[float] = field(default_factory=list)  # online: mean sequence KL to the reference
    tokens: list[int] = field(default_factory=list)  # online: prompt+response tokens of each iteration
    generated: list[int] = field(default_factory=list)  # online: generated tokens of each iteration
    first_batch_tokens: int | None = None  # train: non-pad tokens of the first batch, checked against the plan
    setup_s: float = 0.0  # process start to the first step's start (imports, loading, tokenising, reference pass)
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None  # device cuda: torch.cuda.max_memory_allocated() over the whole run
    versions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Result:
        return cls(**json.loads(Path(path).read_text()))


# ------------------------------------------------------------------------------------------------ counting


def train_flops(matmul_params: int, tokens: int) -> float:
    """Forward + backward FLOPs of a training step: 6 * N * tokens."""
    return 6.0 * matmul_params * tokens


def online_flops(matmul_params: int, tokens: int, generated: int) -> float:
    """Useful FLOPs of an online iteration: sampling (2N per generated token), reference forward (2N per token),
    update (6N per token)."""
    return 2.0 * matmul_params * generated + 8.0 * matmul_params * tokens


def matmul_flops(n: int) -> float:
    """FLOPs of one n x n by n x n matrix multiply."""
    return 2.0 * n**3


def steady_steps(step_ends: list[float], warmup: int) -> list[int]:
    """Indices (0-based step numbers) of the steps that are timed: after `warmup`, before the last."""
    return list(range(max(1, warmup), len(step_ends) - 1))


def steady_seconds(step_ends: list[float], warmup: int) -> list[float]:
    """Wall time of each timed step: the gap between its end and the previous step's end."""
    return [step_ends[i] - step_ends[i - 1] for i in steady_steps(step_ends, warmup)]


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: list[float]) -> float | None:
    """Half the range over the median: how noisy the repeats were (0.05 = +-5%)."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    mid = statistics.median(values)
    return (max(values) - min(values)) / 2 / mid if mid else None


# ------------------------------------------------------------------------------------------------ summarising


@dataclass
class Plan:
    """What prepare.py measured from the data: per-step tokens and the model's matmul parameters."""

    matmul_params: int  # causal LM (SFT, DPO, online) or reward model, whichever the task trains
    tokens_per_step: list[int]  # train tasks: non-pad tokens of each step's batch
    padded_tokens_per_step: list[int]  # batch * longest sequence (what the matmuls actually process)
    samples_per_step: int  # SFT examples, or preference pairs, per step


def summarise_run(result: Result, hyper: Hyper, plan: Plan) -> dict:
    """Throughput and final metrics of one run."""
    secs = steady_seconds(result.step_ends, hyper.warmup)
    idx = steady_steps(result.step_ends, hyper.warmup)
    out = {
        "tool": result.tool,
        "repeat": result.repeat,
        "peak_rss_mb": result.peak_rss_mb,
        "peak_gpu_mb": result.peak_gpu_mb,
        "setup_s": result.setup_s,
        "wall_s": result.wall_s,
        "steps_done": len(result.step_ends),
        "timed_steps": len(secs),
    }
    if not secs:
        return out
    total = sum(secs)
    out["step_s"] = total / len(secs)
    if len(result.step_cpu) == len(result.step_ends):
        out["cpu_step_s"] = sum(steady_seconds(result.step_cpu, hyper.warmup)) / len(secs)
    if result.task in TRAIN_TASKS:
        tokens = sum(plan.tokens_per_step[i] for i in idx)
        out["samples_per_s"] = plan.samples_per_step * len(secs) / total
        out["tokens_per_s"] = tokens / total
        out["flop_per_s"] = train_flops(plan.matmul_params, tokens) / total
        out["final_loss"] = result.losses[-1] if result.losses else None
        out["losses"] = result.losses
    else:
        tokens = sum(result.tokens[i] for i in idx)
        generated = sum(result.generated[i] for i in idx)
        out["samples_per_s"] = hyper.batch * hyper.group * len(secs) / total
        out["tokens_per_s"] = tokens / total
        out["flop_per_s"] = online_flops(plan.matmul_params, tokens, generated) / total
        out["final_loss"] = result.losses[-1] if result.losses else None
        out["losses"] = result.losses
        out["rewards"] = result.rewards
        out["kls"] = result.kls
        out["mean_reward"] = sum(result.rewards) / len(result.rewards) if result.rewards else None
        out["mean_generated"] = (
            sum(result.generated) / len(result.generated) / (hyper.batch * hyper.group) if result.generated else None
        )
    return out


def reward_noise(configurations: list[dict]) -> float | None:
    """The run-to-run noise of the mean reward: the largest half-range over repeats of any configuration given
    (None with a single repeat of each)."""
    spreads = [c.get("reward_half_range") for c in configurations if c.get("reward_half_range") is not None]
    return max(spreads) if spreads else None


def combine(runs: list[dict]) -> dict:
    """Median over repeats of every rate; the spread of the step time; the largest peak RSS."""
    out = {"repeats": len(runs)}
    for key in (
        "step_s",
        "cpu_step_s",
        "samples_per_s",
        "tokens_per_s",
        "flop_per_s",
        "setup_s",
        "mean_reward",
        "mean_generated",
    ):
        out[key] = median([r.get(key) for r in runs])
    out["step_spread"] = spread([r.get("step_s") for r in runs])
    rewards = [r["mean_reward"] for r in runs if r.get("mean_reward") is not None]
    out["reward_half_range"] = (max(rewards) - min(rewards)) / 2 if len(rewards) > 1 else None
    out["peak_rss_mb"] = max((r["peak_rss_mb"] for r in runs), default=None)
    out["peak_gpu_mb"] = max((r["peak_gpu_mb"] for r in runs if r.get("peak_gpu_mb") is not None), default=None)
    finals = [r.get("final_loss") for r in runs if r.get("final_loss") is not None]
    out["final_loss"] = median(finals)
    out["losses"] = runs[0].get("losses") if runs else None
    out["rewards"] = runs[0].get("rewards") if runs else None
    return out


def loss_match(task: str, a: float | None, b: float | None, tolerance: float) -> str:
    """'yes (|d|=...)', 'NO (...)' or 'n/a' for a pair of final losses."""
    if a is None or b is None:
        return "n/a"
    diff = abs(a - b)
    rel = diff / max(abs(a), abs(b), 1e-12)
    if task in ONLINE_TASKS:
        return f"loose (sampling differs; see rewards) d={diff:.3g}"
    return f"{'yes' if rel <= tolerance else 'NO'} (rel {rel:.1e})"


# ------------------------------------------------------------------------------------------------ rendering

# the peak memory a table shows: (column label, ratio label)
MEMORY = {"peak_rss_mb": ("peak RSS MB", "RSS"), "peak_gpu_mb": ("peak GPU MB", "GPU memory")}


def fmt(value, spec: str = ".3g", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def render_table(rows: list[dict], peak_flops: float | None, memory: str = "peak_rss_mb") -> str:
    """The markdown tables for BENCHMARKS.md: one row per (task, model), rlhfkit next to TRL, ratios in bold.
    `memory`: the peak shown, a key of MEMORY (the process's RSS, or the GPU's allocated memory on device cuda)."""
    label, short = MEMORY[memory]
    train = [r for r in rows if r["task"] in TRAIN_TASKS]
    online = [r for r in rows if r["task"] in ONLINE_TASKS]
    lines: list[str] = []
    if train:
        lines += [
            "| task | model | rlhfkit samples/s | TRL samples/s | **speed-up** | rlhfkit tokens/s | TRL tokens/s | "
            f"rlhfkit {label} | TRL {label} | **{short} ratio** | final loss rlhfkit / TRL | same loss? | "
            "share of matmul peak rlhfkit / TRL |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in train:
            k, t = r["rlhfkit"], r["trl"]
            lines.append(
                f"| {r['task']} | {r['model']} | {fmt(k.get('samples_per_s'), '.1f')} | "
                f"{fmt(t.get('samples_per_s'), '.1f')} | "
                f"**{fmt(ratio(k.get('samples_per_s'), t.get('samples_per_s')), '.2f')}x** | "
                f"{fmt(k.get('tokens_per_s'), '.0f')} | "
                f"{fmt(t.get('tokens_per_s'), '.0f')} | {fmt(k.get(memory), '.0f')} | "
                f"{fmt(t.get(memory), '.0f')} | "
                f"**{fmt(ratio(k.get(memory), t.get(memory)), '.2f')}** | "
                f"{fmt(k.get('final_loss'), '.4f')} / "
                f"{fmt(t.get('final_loss'), '.4f')} | {r.get('loss_match', 'n/a')} | "
                f"{share(k.get('flop_per_s'), peak_flops)} / {share(t.get('flop_per_s'), peak_flops)} |"
            )
    if online:
        if lines:
            lines.append("")
        lines += [
            "| task | model | rlhfkit s/iteration | TRL s/iteration | **time ratio rlhfkit/TRL** | rlhfkit "
            "tokens/s | TRL tokens/s | "
            f"rlhfkit {label} | TRL {label} | **{short} ratio** | mean reward rlhfkit / TRL | mean response "
            "tokens rlhfkit / TRL | "
            "useful share of matmul peak rlhfkit / TRL |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in online:
            k, t = r["rlhfkit"], r["trl"]
            lines.append(
                f"| {r['task']} | {r['model']} | {fmt(k.get('step_s'), '.2f')} | {fmt(t.get('step_s'), '.2f')} | "
                f"**{fmt(ratio(k.get('step_s'), t.get('step_s')), '.2f')}** | {fmt(k.get('tokens_per_s'), '.0f')} | "
                f"{fmt(t.get('tokens_per_s'), '.0f')} | {fmt(k.get(memory), '.0f')} | "
                f"{fmt(t.get(memory), '.0f')} | "
                f"**{fmt(ratio(k.get(memory), t.get(memory)), '.2f')}** | "
                f"{fmt(k.get('mean_reward'), '.3f')} / "
                f"{fmt(t.get('mean_reward'), '.3f')} | {fmt(k.get('mean_generated'), '.1f')} / "
                f"{fmt(t.get('mean_generated'), '.1f')} | "
                f"{share(k.get('flop_per_s'), peak_flops)} / {share(t.get('flop_per_s'), peak_flops)} |"
            )
            b = r.get(BF16_SAMPLING)
            if b:
                lines.append(
                    f"| {r['task']} bf16-sampling | {r['model']} | {fmt(b.get('step_s'), '.2f')} | "
                    f"{fmt(t.get('step_s'), '.2f')} | **{fmt(ratio(b.get('step_s'), t.get('step_s')), '.2f')}** | "
                    f"{fmt(b.get('tokens_per_s'), '.0f')} | {fmt(t.get('tokens_per_s'), '.0f')} | "
                    f"{fmt(b.get(memory), '.0f')} | {fmt(t.get(memory), '.0f')} | "
                    f"**{fmt(ratio(b.get(memory), t.get(memory)), '.2f')}** | "
                    f"{fmt(b.get('mean_reward'), '.3f')} / {fmt(t.get('mean_reward'), '.3f')} | "
                    f"{fmt(b.get('mean_generated'), '.1f')} / {fmt(t.get('mean_generated'), '.1f')} | "
                    f"{share(b.get('flop_per_s'), peak_flops)} / {share(t.get('flop_per_s'), peak_flops)} |"
                )
    return "\n".join(lines)


def share(flop_per_s: float | None, peak: float | None) -> str:
    if flop_per_s is None or not peak:
        return "-"
    return f"{100 * flop_per_s / peak:.1f}%"


@dataclass(frozen=True)
class Goal:
    """What a row must reach: step throughput (train) and iteration time (online) against TRL's, and peak RSS."""

    speedup: float = 1.5  # train: samples/s at least this many times TRL's
    time_ratio: float = 0.5  # online: s/iteration at most this share of TRL's
    rss_ratio: float = 1.0  # peak RSS at most this share of TRL's
    issue: str = "#7"


# Issue #16's goal on Qwen's vocabulary: half TRL's memory and 1.5x its throughput (online: 1/1.5 of its time).
GOALS = {"qwen152k": Goal(time_ratio=1 / 1.5, rss_ratio=0.5, issue="#16")}


def cpu_note(k: dict, t: dict, invert: bool) -> str:
    """The same ratio from CPU seconds per step (one thread per run, so equal to wall time on an idle machine, and
    blind to other jobs on a shared one), when it differs visibly from the wall-clock one."""
    cpu = ratio(t.get("cpu_step_s"), k.get("cpu_step_s")) if invert else ratio(k.get("cpu_step_s"), t.get("cpu_step_s"))
    wall = ratio(t.get("step_s"), k.get("step_s")) if invert else ratio(k.get("step_s"), t.get("step_s"))
    if cpu is None or wall is None or abs(cpu - wall) <= 0.1 * wall:
        return ""
    return f" (by CPU seconds per step: {cpu:.2f}{'x' if invert else ''})"


def goals(rows: list[dict], memory: str = "peak_rss_mb") -> list[str]:
    """One line per goal (issue #7's; issue #16's on qwen152k): met or not, with the measured ratio (`memory`: as in
    render_table)."""
    label = MEMORY[memory][1]
    out = []
    for r in rows:
        k, t = r.get("rlhfkit", {}), r.get("trl", {})
        goal = GOALS.get(r["model"], Goal())
        if r["task"] in TRAIN_TASKS:
            x = ratio(k.get("samples_per_s"), t.get("samples_per_s"))
            ok = x is not None and x >= goal.speedup
            out.append(
                f"- {r['task']} / {r['model']}: step throughput {fmt(x, '.2f')}x TRL's (goal >= {goal.speedup:g}x): "
                f"{'met' if ok else 'NOT met'}{cpu_note(k, t, invert=True)}"
            )
            if r.get("padding_bound"):
                out.append(
                    f"  padding bound {r['padding_bound']:.2f}x: TRL's padded batches are "
                    f"{100 / r['padding_bound']:.0f}% real "
                    "tokens, so removing all padding, at the same time per token, is worth this much"
                )
        else:
            x = ratio(k.get("step_s"), t.get("step_s"))
            ok = x is not None and x <= goal.time_ratio
            out.append(
                f"- {r['task']} / {r['model']}: iteration time {fmt(x, '.2f')} of TRL's "
                f"(goal <= {goal.time_ratio:.2g}): {'met' if ok else 'NOT met'}{cpu_note(k, t, invert=False)}"
            )
        b = r.get(BF16_SAMPLING)
        if b:
            x = ratio(b.get("step_s"), t.get("step_s"))
            noise = reward_noise([k, b, t])
            rewards = [b.get("mean_reward"), k.get("mean_reward"), t.get("mean_reward")]
            gap = None if None in rewards[::2] else abs(rewards[0] - rewards[2])
            same = gap is not None and (gap == 0 or (noise is not None and gap <= noise))
            measured = (
                f"run-to-run noise {fmt(noise, '.3f')}" if noise is not None else "one repeat: noise not measured"
            )
            out.append(
                f"- {r['task']} / {r['model']} bf16-sampling: iteration time {fmt(x, '.2f')} of TRL's (goal <= 0.5): "
                f"{'met' if x is not None and x <= 0.5 else 'NOT met'}; mean reward {fmt(rewards[0], '.3f')} "
                f"(fp32 sampling {fmt(rewards[1], '.3f')}, TRL {fmt(rewards[2], '.3f')}; {measured}): "
                f"{'equal within the noise' if same else 'NOT shown equal'}"
            )
        m = ratio(k.get(memory), t.get(memory))
        met = m is not None and m <= goal.rss_ratio
        out.append(f"  peak {label} {fmt(m, '.2f')} of TRL's (goal <= {goal.rss_ratio}): {'met' if met else 'NOT met'}")
    return out


SECTION_TITLE = "## Training throughput vs TRL"
GPU_SECTION_TITLE = "## Training throughput vs TRL on a GPU"  # device cuda: bench/gpu/run.sh's section


def replace_section(document: str, body: str, title: str = SECTION_TITLE) -> str:
    """`document` with the `title` section (up to the next `## ` heading) replaced by `body`, or `body` appended.
    Other sections are left byte for byte as they were."""
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == title), None)
    section = body if body.endswith("\n") else body + "\n"
    if start is None:
        head = document if document.endswith("\n") or not document else document + "\n"
        if not head:
            head = "# Benchmarks\n\n"
        elif not head.endswith("\n\n"):
            head += "\n"
        return head + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail and not section.endswith("\n\n") else tail)
