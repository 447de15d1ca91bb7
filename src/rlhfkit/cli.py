"""The `rlhfkit` command: parse, load the config, call one stage. Errors a user can cause print one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from . import config as cfg
from .errors import RlhfkitError
from .feedback.annotate.cli import app as annotate_app

STAGE = {"allow_extra_args": True, "ignore_unknown_options": True}
OVERRIDES = (
    "Any config key can be overridden after the options: key=value, --key=value or --key value (nested: lora.r=16)."
)

app = typer.Typer(
    help="rlhfkit: the RLHF loop end to end. Run `rlhfkit demo` for the whole loop on the embedded default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Validate and import data files.", no_args_is_help=True)
reward_app = typer.Typer(help="Train and evaluate reward models.", no_args_is_help=True)
default_app = typer.Typer(help="The embedded default task (tiny review model, corpus, prompts).", no_args_is_help=True)
config_app = typer.Typer(help="Show stage configs.", no_args_is_help=True)
registry_app = typer.Typer(help="The checkpoint registry of a run root.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(reward_app, name="reward")
app.add_typer(default_app, name="default")
app.add_typer(config_app, name="config")
app.add_typer(registry_app, name="registry")
app.add_typer(annotate_app, name="annotate")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file; see `rlhfkit config show STAGE`.")


def _load(stage: str, config: Path | None, ctx: typer.Context):
    return cfg.load_config(cfg.STAGE_CONFIGS[stage], config, list(ctx.args))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def sft(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Supervised fine-tuning (loss on response tokens only)."""
    from .stages import sft as stage

    stage.run(_load("sft", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def pairs(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Sample two responses per prompt and have a simulated annotator panel label them."""
    from .stages import pairs as stage

    stage.run(_load("pairs", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def judge(ctx: typer.Context, config: Path | None = ConfigOpt):
    """AI judge (RLAIF): label preference pairs with a reward model, a causal LM or an OpenAI-compatible endpoint,
    both orders asked."""
    from .stages import judge as stage

    stage.run(_load("judge", config, ctx))


@reward_app.command("train", context_settings=STAGE, epilog=OVERRIDES)
def reward_train(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Train a Bradley-Terry reward model on preference pairs."""
    from .stages import reward as stage

    stage.train(_load("reward-train", config, ctx))


@reward_app.command("eval", context_settings=STAGE, epilog=OVERRIDES)
def reward_eval(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Accuracy, calibration (ECE), margins and length bias of a reward model on preference pairs."""
    from .stages import reward as stage

    stage.evaluate(_load("reward-eval", config, ctx))


@reward_app.command("noise-sweep", context_settings=STAGE, epilog=OVERRIDES)
def reward_noise_sweep(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Flip a share of the training labels, retrain per share, and plot held-out accuracy against it."""
    from .stages import noise_sweep as stage

    stage.run(_load("reward-noise-sweep", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def dpo(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Direct preference optimisation (sigmoid, ipo, hinge, robust, simpo, orpo)."""
    from .stages import dpo as stage

    stage.run(_load("dpo", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def ppo(ctx: typer.Context, config: Path | None = ConfigOpt):
    """PPO: value head, GAE, clipped updates, KL penalty to the reference folded into the reward."""
    from .stages import ppo as stage

    stage.run(_load("ppo", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def grpo(ctx: typer.Context, config: Path | None = ConfigOpt):
    """GRPO: group-normalised advantages over k samples per prompt, KL to the reference as a loss term."""
    from .stages import grpo as stage

    stage.run(_load("grpo", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def rloo(ctx: typer.Context, config: Path | None = ConfigOpt):
    """RLOO: k samples per prompt, each baselined by the mean of the other k-1."""
    from .stages import grpo as stage

    stage.run(_load("rloo", config, ctx))


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def bon(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Best-of-n: sample n, keep the best by reward; `finetune=true` trains on the winners (rejection sampling)."""
    from .stages import bon as stage

    stage.run(_load("bon", config, ctx))


@app.command("bon-sweep", context_settings=STAGE, epilog=OVERRIDES)
def bon_sweep(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Best-of-n over-optimisation curve: proxy and gold against KL_bon = log n - (n-1)/n, with the Gao et al. fit."""
    from .stages import bon_sweep as stage

    stage.run(_load("bon-sweep", config, ctx))


@app.command("eval", context_settings=STAGE, epilog=OVERRIDES)
def eval_(ctx: typer.Context, config: Path | None = ConfigOpt):
    """Compare policies on held-out prompts: gold, reward, win rate, KL, length, diversity, unsafe rate."""
    from .evaluate import policy

    policy.run(_load("eval", config, ctx))


@app.command(
    context_settings=STAGE,
    epilog="Override any stage key after the file: NAME.KEY=VALUE (dpo.beta=0.2); output_dir=DIR moves the run root.",
)
def run(
    ctx: typer.Context,
    pipeline: Path = typer.Argument(
        ..., help="pipeline YAML: output_dir and an ordered list of stages {name, stage, config}"
    ),
    force: list[str] | None = typer.Option(None, "--force", help="rerun this stage even when unchanged (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the plan with fingerprints; run nothing"),
):
    """Run a pipeline of stages in order; a stage whose inputs and config are unchanged is skipped and says so."""
    from . import pipeline as runner

    result = runner.run(runner.load_pipeline(pipeline, list(ctx.args), force=force or []), dry_run=dry_run)
    raise typer.Exit(0 if result["passed"] else 1)


@app.command(
    context_settings=STAGE,
    epilog="Overrides: NAME.KEY=VALUE for a stage of the demo pipeline (e.g. dpo.beta=0.2), or output_dir=DIR.",
)
def demo(
    ctx: typer.Context,
    show: bool = typer.Option(
        False, "--show", help="print the demo pipeline file (to copy and run with `rlhfkit run`) and exit"
    ),
    force: list[str] | None = typer.Option(None, "--force", help="rerun this stage even when unchanged (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the plan; run nothing"),
):
    """The whole loop on the embedded default, as a cached pipeline: SFT, pairs, reward model, DPO, evaluation, gate,
    report.
    Exits 1 when the DPO model fails the acceptance gate."""
    from .stages import demo as stage

    if show:
        typer.echo(f"# {stage.PIPELINE}")
        typer.echo(stage.PIPELINE.read_text().rstrip())
        return
    summary = stage.run(list(ctx.args), force=force or [], dry_run=dry_run)
    raise typer.Exit(0 if dry_run or summary["gate_passed"] else 1)


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., help="JSONL file (.gz allowed)"),
    kind: str | None = typer.Option(None, help="sft, prompt or preference (default: guessed from the first record)"),
):
    """Check every record of a file against its schema; the first problem is reported with line and field."""
    from .data.records import KINDS, detect_kind, load_records

    if kind and kind not in KINDS:
        raise cfg.ConfigError(f"--kind '{kind}': expected one of {', '.join(KINDS)}")
    kind = kind or detect_kind(path)
    records = load_records(path, kind)
    typer.echo(f"{path}: {len(records)} valid {kind} records")


@data_app.command("import")
def data_import(
    path: Path = typer.Argument(..., help="file to import (.jsonl or .jsonl.gz)"),
    format: str = typer.Option(..., "--format", "-f", help="trl, hh (Anthropic HH-RLHF) or ultrafeedback"),
    out: Path = typer.Option(..., "--out", "-o", help="preference JSONL to write"),
):
    """Convert preference data to the rlhfkit preference schema (written atomically; nothing on error)."""
    from .data.importers import import_preferences
    from .data.records import write_jsonl

    pairs, report = import_preferences(path, format)
    write_jsonl(out, pairs)
    typer.echo(f"{report.summary()}; wrote {out}")


@app.command(context_settings=STAGE, epilog=OVERRIDES)
def gate(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="model directory to check"),
    config: Path | None = ConfigOpt,
):
    """Check a checkpoint against the acceptance envelope; record it in the registry; exit 1 when it fails."""
    from .stages import gate as stage

    result = stage.run(cfg.load_config(stage.GateConfig, config, list(ctx.args)), checkpoint)
    raise typer.Exit(0 if result.passed else 1)


@registry_app.command("list")
def registry_list(root: Path = typer.Option(Path("runs/demo"), "--root", help="run root holding registry.sqlite")):
    """Every registered checkpoint with its gate result; * marks the current one."""
    from .evaluate.registry import Registry, format_registry

    if not (root / "registry.sqlite").is_file():
        raise cfg.ConfigError(f"{root}: no registry.sqlite here; `rlhfkit gate CHECKPOINT` creates it")
    typer.echo(format_registry(Registry(root).list()))


@app.command()
def rollback(root: Path = typer.Option(Path("runs/demo"), "--root", help="run root holding registry.sqlite")):
    """Make the last passing checkpoint before the current one current (ROOT/current points to it)."""
    from .evaluate.registry import Registry
    from .stages.gate import update_current_link

    if not (root / "registry.sqlite").is_file():
        raise cfg.ConfigError(f"{root}: no registry.sqlite here; `rlhfkit gate CHECKPOINT` creates it")
    checkpoint = Registry(root).rollback()
    update_current_link(root, checkpoint.path)
    typer.echo(f"current checkpoint is now #{checkpoint.id}: {checkpoint.path} ({root / 'current'} points to it)")


@app.command()
def detect(
    run_dir: Path = typer.Argument(..., help="a run folder with metrics.jsonl (ppo, grpo, rloo)"),
    strict: bool = typer.Option(False, help="exit 1 when any detector fires"),
):
    """Reward hacking, length drift, mode collapse and KL blow-up over a run's metrics, each with its evidence."""
    from .evaluate.detectors import format_verdicts, load_metrics, run_detectors

    verdicts = run_detectors(load_metrics(run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir))
    typer.echo(format_verdicts(verdicts))
    if strict and any(v.fired for v in verdicts):
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run folder (e.g. runs/demo) or one stage's folder"),
    out: Path | None = typer.Option(None, "--out", help="HTML file to write (default: RUN_DIR/report.html)"),
):
    """One self-contained HTML report: data and agreement, reward-model audit, curves, detectors, gate, samples."""
    from .report.html import build_report

    if not run_dir.is_dir():
        raise cfg.ConfigError(f"run folder '{run_dir}' not found")
    typer.echo(f"wrote {build_report(run_dir, out)}")


@app.command()
def agreement(
    path: Path = typer.Argument(
        ..., help="judgments JSONL (pair_id, annotator, choice) or a preference file with metadata.votes"
    ),
    json_out: Path | None = typer.Option(None, "--json", help="also write the report as JSON here"),
):
    """Inter-annotator agreement: raw agreement, Cohen's kappa per annotator pair, Fleiss' kappa, Krippendorff's
    alpha."""
    from .feedback.agreement import agreement_report, format_report

    report = agreement_report(path)
    typer.echo(format_report(report))
    if json_out:
        from .train import write_json

        write_json(json_out, report)


@default_app.command("build")
def default_build(force: bool = typer.Option(False, help="rebuild even when a cached build exists")):
    """Build (once) the embedded default: corpus, BPE tokenizer, tiny GPT-2, prompts."""
    from .demo.build import ensure_default

    task = ensure_default(force=force)
    info = task.info
    typer.echo(
        f"default task at {task.root}: {info['parameters']:,} parameters, pre-training loss "
        f"{info['first_loss']:.2f} -> "
        f"{info['final_loss']:.2f}, built in {info['seconds']}s"
    )


@default_app.command("info")
def default_info():
    """Where the embedded default lives and whether it is built."""
    from .demo.build import default_dir

    root = default_dir()
    built = (root / "build.json").is_file()
    typer.echo(f"{root} ({'built' if built else 'not built yet: run `rlhfkit default build`'})")


@config_app.command("show")
def config_show(stage: str = typer.Argument(..., help=" | ".join(cfg.STAGE_CONFIGS))):
    """Print a stage's keys with their defaults and meaning, as a YAML template."""
    if stage not in cfg.STAGE_CONFIGS:
        raise cfg.ConfigError(f"unknown stage '{stage}'; expected one of {', '.join(cfg.STAGE_CONFIGS)}")
    typer.echo("\n".join(cfg.config_template(cfg.STAGE_CONFIGS[stage])))


def main() -> None:
    if os.environ.get("RLHFKIT_TRACEBACK") != "1":
        import warnings

        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except RlhfkitError as exc:
        if os.environ.get("RLHFKIT_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
