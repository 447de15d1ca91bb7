"""rlhfkit against TRL: the same models, data and hyper-parameters through both, side by side (`make bench`).

    python bench/run.py [--only rlhfkit|trl] [--tasks sft,reward,dpo,grpo,rloo] [--models default,llama20m,qwen152k]
                        [--repeats 3] [--steps N] [--rl-steps N] [--threads 1] [--no-bf16-sampling]
                        [--output BENCHMARKS.md] [--section "## Training throughput vs TRL"]
                        [--device cpu|cuda] [--trl-python PATH] [--budget-s SECONDS]

1. installs TRL (pinned, see spec.TRL_REQUIREMENTS) into bench/.venv-trl, once;
2. builds the models and data (bench/prepare.py) into bench/.cache;
3. measures this machine's fp32 matmul peak at the same thread count (bench/peak.py), before every round;
4. runs every (task, model, tool) in its own process, `--repeats` rounds, interleaved (each round runs every
   task once with each tool, alternating which tool goes first), and reads each child's peak RSS with wait4();
5. writes bench/.cache/results.json and the "Training throughput vs TRL" section of BENCHMARKS.md (other
   sections are left as they are), followed by bench/analysis.md; `--section` names another section (without
   the analysis), for a run of a subset that should not replace the main table.

A (task, model) without hyper-parameters in spec.default_hypers is not run (qwen152k has SFT, DPO and GRPO).

`--device cuda` runs both tools on the GPU with bf16 autocast (rlhfkit: device=cuda, mixed_precision=bf16; TRL:
bf16=True and its fastest settings there), times every step between torch.cuda.synchronize() calls, shows the peak
GPU memory instead of the RSS, measures the GPU's bf16 matmul peak and writes the "Training throughput vs TRL on a
GPU" section. `--trl-python` names an interpreter that imports TRL instead of building bench/.venv-trl (the GPU
machine has no package index: bench/gpu/run.sh installs carried wheels and passes its own python).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench import spec  # noqa: E402
from bench.spec import Job, Plan, Result  # noqa: E402

TRL_VENV = HERE / ".venv-trl"
CACHE = HERE / ".cache"
LOSS_TOLERANCE = 1e-3  # relative: same init, data, order and arithmetic agree to ~1e-5; 1e-3 leaves room for kernels
BF16_LOSS_TOLERANCE = 2e-2  # device cuda: bf16 autocast rounds every matmul input to 8 significant bits in both tools


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ TRL's environment


def ensure_trl_venv() -> Path:
    """Create bench/.venv-trl with the pinned requirements; a stamp with the pins makes it idempotent."""
    python = TRL_VENV / "bin" / "python"
    stamp = TRL_VENV / ".installed"
    wanted = "\n".join(spec.TRL_REQUIREMENTS) + "\n"
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    log(f"installing TRL into {TRL_VENV} ({', '.join(spec.TRL_REQUIREMENTS)}); once")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_pin = next(r for r in spec.TRL_REQUIREMENTS if r.startswith("torch=="))
    subprocess.run(pip + [torch_pin], check=True)  # alone first: the pinned CPU wheel, never a CUDA build
    subprocess.run(pip + spec.TRL_REQUIREMENTS, check=True)
    stamp.write_text(wanted)
    return python


def check_trl_python(python: str) -> str:
    """`--trl-python`: an interpreter that imports TRL and datasets, or a one-line error before anything runs."""
    try:
        done = subprocess.run(
            [python, "-c", "import trl, datasets; print(trl.__version__)"], capture_output=True, text=True, cwd=ROOT
        )
    except OSError as error:
        raise SystemExit(f"bench: --trl-python {python} cannot be run: {error.strerror}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench: --trl-python {python} cannot import trl and datasets: {last}")
    wanted = next(r for r in spec.TRL_REQUIREMENTS if r.startswith("trl==")).split("==")[1]
    if done.stdout.strip() != wanted:
        log(f"--trl-python {python} has TRL {done.stdout.strip()}, spec.TRL_REQUIREMENTS pins {wanted}")
    return python


def check_cuda() -> None:
    """`--device cuda` on a machine where torch sees no GPU: a one-line error before any run starts."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0:
        raise SystemExit("bench: --device cuda: torch sees no CUDA GPU on this machine; use --device cpu")


# ------------------------------------------------------------------------------------------------ running


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RLHFKIT_NO_PROGRESS": "1",
            "TQDM_DISABLE": "1",
            "HF_DATASETS_CACHE": str(CACHE / "hf-datasets"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_child(argv: list[str], log_path: Path, env: dict) -> tuple[int, float]:
    """Run a process to the end; (exit status, its peak RSS in MB from wait4)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0  # Linux reports KiB


def measure_peak(threads: int, env: dict, device: str = "cpu") -> float | None:
    done = subprocess.run(
        [sys.executable, str(HERE / "peak.py"), str(threads), device], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        log(f"matmul peak measurement failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout)["gflops"] * 1e9


def gpu() -> str:
    """The GPU's name, memory and driver, from nvidia-smi (or torch where there is no nvidia-smi)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0 and done.stdout.strip():
            name, memory, driver = (part.strip() for part in done.stdout.strip().splitlines()[0].split(","))
            return f"{name} ({memory}, driver {driver})"
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    probe = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() or "no CUDA GPU visible"


def machine(device: str = "cpu") -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {
        "cpu": cpu,
        "gpu": gpu() if device == "cuda" else None,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=spec.TOOLS, help="run one tool only (rlhfkit alone needs no TRL install)")
    p.add_argument("--tasks", default=",".join(spec.TASKS), help="comma-separated subset of " + ",".join(spec.TASKS))
    p.add_argument(
        "--models",
        default=",".join(spec.DEFAULT_MODELS),
        help=f"comma-separated, of {', '.join(spec.MODELS)} (default: {', '.join(spec.DEFAULT_MODELS)})",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; rates are the median over them")
    p.add_argument(
        "--steps", type=int, help="optimizer steps of SFT, reward and DPO runs (default: per model, see spec.py)"
    )
    p.add_argument("--rl-steps", type=int, help="iterations of GRPO and RLOO runs")
    p.add_argument("--warmup", type=int, help="steps left out of the timing at the start of each run")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every run and in the matmul peak (default 1: on a shared machine more threads than "
        "free cores make each OpenMP barrier wait for a descheduled thread)",
    )
    p.add_argument(
        "--output",
        default=str(ROOT / "BENCHMARKS.md"),
        help="markdown file whose 'Training throughput vs TRL' section is rewritten",
    )
    p.add_argument(
        "--no-bf16-sampling",
        action="store_true",
        help=f"skip the extra '{spec.BF16_SAMPLING}' configuration of grpo and rloo (rollout_dtype=bfloat16)",
    )
    p.add_argument(
        "--section",
        default=spec.SECTION_TITLE,
        help="the '## ' heading of the section to write (another than the default gets no analysis appended)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where both tools train: cuda runs them on the GPU with bf16 autocast (bench/gpu/run.sh)",
    )
    p.add_argument(
        "--trl-python",
        help="a python that imports TRL (and datasets); default: build bench/.venv-trl with the pinned requirements",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        help="start no run after this many seconds; the table shows what was measured (bench/gpu/run.sh's budget)",
    )
    p.add_argument("--no-write", action="store_true", help="print the table; leave the markdown file alone")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement (no share-of-peak column)")
    p.add_argument(
        "--work", default=str(CACHE), help="folder for run logs and results.json (models and data stay in bench/.cache)"
    )
    return p.parse_args(argv)


def hypers_for(args) -> dict:
    hypers = spec.default_hypers()
    for (task, model), h in list(hypers.items()):
        if args.steps and task in spec.TRAIN_TASKS:
            h = replace(h, steps=args.steps)
        if args.rl_steps and task in spec.ONLINE_TASKS:
            h = replace(h, steps=args.rl_steps)
        if args.warmup is not None:
            h = replace(h, warmup=args.warmup)
        hypers[(task, model)] = h
    return hypers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    bad = [t for t in tasks if t not in spec.TASKS] + [m for m in models if m not in spec.MODELS]
    if bad:
        raise SystemExit(
            f"bench: unknown task or model {bad}; tasks: {', '.join(spec.TASKS)}; models: {', '.join(spec.MODELS)}"
        )
    if not args.section.startswith("## "):
        raise SystemExit(f"bench: --section must be a '## ' heading, got {args.section!r}")
    tools = [args.only] if args.only else list(spec.TOOLS)
    started = time.time()
    flags = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if os.environ.get("MAKELEVEL"):
        command = f'make bench BENCH_ARGS="{flags}"' if flags else "make bench"
    else:
        command = f"python bench/run.py {flags}".rstrip()
    load_before = os.getloadavg()

    if args.device == "cuda":
        check_cuda()
    pythons = {"rlhfkit": sys.executable}
    if "trl" in tools:
        pythons["trl"] = check_trl_python(args.trl_python) if args.trl_python else str(ensure_trl_venv())
    workers = {"rlhfkit": str(HERE / "worker_rlhfkit.py"), "trl": str(HERE / "worker_trl.py")}

    hypers = hypers_for(args)
    log(f"preparing models and data for {', '.join(tasks)} on {', '.join(models)}")
    from bench.prepare import prepare

    entries = prepare(hypers, models, tasks)
    env = child_env(args.threads)
    combos = [(t, m) for m in models for t in tasks if (t, m) in hypers]
    runs: dict[tuple[str, str, str], list[dict]] = {}
    raw: list[dict] = []
    failures: list[str] = []
    peaks: list[float] = []
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    work_root = Path(args.work)
    work = work_root / "runs" / stamp
    bf16 = not args.no_bf16_sampling
    online_combos = sum(t in spec.ONLINE_TASKS for t, _ in combos) if "rlhfkit" in tools and bf16 else 0
    total = args.repeats * (len(combos) * len(tools) + online_combos)
    done = unstarted = 0
    for r in range(args.repeats):
        peak = None if args.no_peak else measure_peak(args.threads, env, args.device)
        if peak:
            peaks.append(peak)
            where = "the GPU's bf16" if args.device == "cuda" else f"{args.threads} thread(s)' fp32"
            log(f"round {r + 1}/{args.repeats}: {where} matmul peak {peak / 1e9:.1f} GFLOP/s")
        for c, (task, model) in enumerate(combos):
            order = tools if (r + c) % 2 == 0 else tools[::-1]
            entry = entries[f"{task}/{model}"]
            hyper = hypers[(task, model)]
            plan = Plan(**entry["plan"])
            extra = [spec.BF16_SAMPLING] if task in spec.ONLINE_TASKS and "rlhfkit" in tools and bf16 else []
            for label in order + extra:
                tool, variant = ("rlhfkit", "bf16-sampling") if label == spec.BF16_SAMPLING else (label, "")
                done += 1
                if args.budget_s and time.time() - started > args.budget_s:
                    unstarted += 1
                    continue
                name = f"{task}-{model}-{label.replace(' ', '-')}-r{r}"
                job = Job(
                    tool=tool,
                    task=task,
                    model=model,
                    hyper=hyper,
                    model_dir=entry["model_dir"],
                    data=entry["data"],
                    trl_data=entry["trl_data"],
                    out_dir=str(work / name),
                    result=str(work / f"{name}.json"),
                    threads=args.threads,
                    repeat=r,
                    variant=variant,
                    device=args.device,
                )
                job_path = work / f"{name}.job.json"
                job_path.parent.mkdir(parents=True, exist_ok=True)
                job_path.write_text(job.to_json())
                status, rss = run_child([pythons[tool], workers[tool], str(job_path)], work / f"{name}.log", env)
                if status != 0 or not Path(job.result).is_file():
                    child_log = work / f"{name}.log"
                    failures.append(f"{task}/{model} {label} round {r + 1}: exit {status}; log {child_log}")
                    log(f"[{done}/{total}] {task}/{model} {label}: FAILED (exit {status}); see {child_log}")
                    continue
                result = Result.load(job.result)
                result.peak_rss_mb = rss
                if task in spec.TRAIN_TASKS and result.first_batch_tokens not in (None, plan.tokens_per_step[0]):
                    result.notes.append(
                        f"first batch has {result.first_batch_tokens} tokens, the plan {plan.tokens_per_step[0]}"
                    )
                summary = spec.summarise_run(result, hyper, plan)
                summary["tool"] = label
                runs.setdefault((task, model, label), []).append(summary)
                raw.append(
                    {**summary, "task": task, "model": model, "versions": result.versions, "notes": result.notes}
                )
                gpu_peak = f", peak GPU {result.peak_gpu_mb:.0f} MB" if result.peak_gpu_mb is not None else ""
                log(
                    f"[{done}/{total}] {task}/{model} {label}: {spec.fmt(summary.get('step_s'), '.3f')} s/step, "
                    f"{spec.fmt(summary.get('samples_per_s'), '.1f')} samples/s, peak RSS {rss:.0f} MB{gpu_peak}, "
                    f"final loss {spec.fmt(summary.get('final_loss'), '.5f')}"
                )

    if unstarted:
        failures.append(f"{unstarted} of {total} runs not started: the --budget-s of {args.budget_s:g} s was spent")
        log(failures[-1])
    peak_flops = max(peaks) if peaks else None
    tolerance = BF16_LOSS_TOLERANCE if args.device == "cuda" else LOSS_TOLERANCE
    rows = []
    for task, model in combos:
        row = {"task": task, "model": model, "hyper": hypers[(task, model)].__dict__}
        plan = Plan(**entries[f"{task}/{model}"]["plan"])
        if task in spec.TRAIN_TASKS and plan.padded_tokens_per_step:
            row["padding_bound"] = sum(plan.padded_tokens_per_step) / sum(plan.tokens_per_step)
        for tool in (*spec.TOOLS, spec.BF16_SAMPLING):
            row[tool] = spec.combine(runs.get((task, model, tool), [])) if (task, model, tool) in runs else {}
        k, t = row["rlhfkit"], row["trl"]
        if task in spec.TRAIN_TASKS and k.get("losses") and t.get("losses"):
            diffs = [abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in zip(k["losses"], t["losses"])]
            row["max_loss_rel_diff"] = max(diffs)
            row["loss_match"] = (
                f"{'yes' if max(diffs) <= tolerance else 'NO'} (max rel diff {max(diffs):.0e} over {len(diffs)} steps)"
            )
        elif task in spec.ONLINE_TASKS and k and t:
            row["loss_match"] = "loose: sampling differs"
        rows.append(row)

    versions = {}
    for item in raw:
        versions.update({f"{item['tool']}:{k}": v for k, v in item["versions"].items()})
    meta = {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(args.device),
        "device": args.device,
        "loss_tolerance": tolerance,
        "threads": args.threads,
        "repeats": args.repeats,
        "peak_flops": peak_flops,
        "peaks": peaks,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "minutes": round((time.time() - started) / 60, 1),
        "versions": versions,
        "failures": failures,
    }
    work_root.mkdir(parents=True, exist_ok=True)
    (work_root / "results.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "runs": raw}, indent=1, default=str)
    )
    title = args.section if args.section != spec.SECTION_TITLE else section_title(meta)
    section = render_section(meta, rows, title)
    print(section)
    if not args.no_write:
        out = Path(args.output)
        out.write_text(spec.replace_section(out.read_text() if out.is_file() else "", section, title))
        log(f"wrote the '{title[3:]}' section of {out}; raw numbers in {work_root / 'results.json'}")
    log(f"done in {meta['minutes']} min")
    return 1 if failures else 0


def section_title(meta: dict) -> str:
    return spec.GPU_SECTION_TITLE if meta.get("device") == "cuda" else spec.SECTION_TITLE


def render_section(meta: dict, rows: list[dict], title: str | None = None) -> str:
    title = title or section_title(meta)
    m = meta["machine"]
    peak = meta["peak_flops"]
    v = meta["versions"]
    cuda = meta.get("device") == "cuda"
    memory = "peak_gpu_mb" if cuda else "peak_rss_mb"
    ceiling = "The GPU's bf16 matmul peak" if cuda else f"fp32 matmul peak at {meta['threads']} thread(s)"
    hyper_lines = []
    for r in rows:
        h = r["hyper"]
        extra = (
            f", {h['group']} responses per prompt, {h['max_new_tokens']} new tokens, temperature {h['temperature']}, "
            f"KL weight {h['beta']}"
            if r["task"] in spec.ONLINE_TASKS
            else (f", beta {h['beta']}" if r["task"] == "dpo" else "")
        )
        unit = (
            "prompts" if r["task"] in spec.ONLINE_TASKS else ("pairs" if r["task"] in ("reward", "dpo") else "examples")
        )
        hyper_lines.append(
            f"- {r['task']} / {r['model']}: {h['batch']} {unit} per step, {h['steps']} steps ({h['warmup']} warm-up "
            f"and the last not timed), lr {h['lr']}, max length {h['max_length']}{extra}"
        )
    lines = [
        title,
        "",
        f"Command: `{meta['command']}` — {meta['date']}, {meta['minutes']} min. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"load average {meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after (1-minute; the "
        "benchmark's own run counts about 1, more means other jobs shared the cores). "
        f"Versions: rlhfkit {v.get('rlhfkit:rlhfkit', '-')}, TRL {v.get('trl:trl', '-')}, transformers "
        f"{v.get('rlhfkit:transformers', v.get('trl:transformers', '-'))}, torch "
        f"{v.get('rlhfkit:torch', v.get('trl:torch', '-'))}. "
        f"{meta['threads']} torch thread(s) per run; {meta['repeats']} interleaved rounds, medians shown. "
        f"{ceiling}: {peak / 1e9:.1f} GFLOP/s (best of {len(meta['peaks'])} measurements)."
        if peak
        else f"Command: `{meta['command']}` — {meta['date']}; matmul peak not measured.",
        "",
        *(gpu_lines(meta, rows) if cuda else []),
        spec.render_table(rows, peak, memory),
        "",
        "Goals (issue #7; on qwen152k issue #16's), as measured side by side:",
        "",
        *spec.goals([r for r in rows if r["rlhfkit"] and r["trl"]], memory),
        "",
        "Hyper-parameters (the same in both tools):",
        "",
        *hyper_lines,
    ]
    if meta["failures"]:
        lines += ["", "Failed runs:", "", *[f"- {f}" for f in meta["failures"]]]
    analysis = HERE / "analysis.md"
    if analysis.is_file() and title == spec.SECTION_TITLE:
        lines += ["", analysis.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def gpu_lines(meta: dict, rows: list[dict]) -> list[str]:
    """What a GPU run's section says before its table: the device, and what each tool ran with there."""
    lines = [
        f"Device: {meta['machine'].get('gpu') or 'GPU'}. Both tools train on it with bf16 autocast over fp32 weights "
        "and optimizer state: rlhfkit with device=cuda and mixed_precision=bf16, TRL with bf16=True, use_cpu=False, "
        "attention through PyTorch's SDPA (flash_attention_2 where the flash-attn package is installed) and "
        "padding-free SFT batches (TRL 1.16 disables padding_free in DPO). Each step is timed between "
        "torch.cuda.synchronize() calls; memory is the peak GPU memory torch allocated in the run "
        "(torch.cuda.max_memory_allocated; the host RSS is in the JSON). 'Same loss?' allows a relative difference "
        f"of {meta.get('loss_tolerance', BF16_LOSS_TOLERANCE):g}: bf16 rounds every matmul in both tools.",
        "",
    ]
    if any(r["task"] in spec.ONLINE_TASKS for r in rows):
        lines += [
            "rlhfkit's online stages (grpo, rloo) have no device key yet: their rlhfkit rows ran on the CPU "
            f"({meta['threads']} torch thread(s)), TRL's on the GPU.",
            "",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
