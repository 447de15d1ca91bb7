"""The `rlhfkit` command: parse, load the config, call one stage. Errors a user can cause print one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from . import config as cfg
from .atomic import check_writable
from .errors import RlhfkitError
from .feedback.annotate.cli import app as annotate_app
from .serve.cli import app as serve_app
from .stages import GROUPS, STAGES, Stage, command_name

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
default_app = typer.Typer(help="The embedded default task (tiny review model, corpus, prompts).", no_args_is_help=True)
config_app = typer.Typer(help="Show stage configs.", no_args_is_help=True)
registry_app = typer.Typer(help="The checkpoint registry of a run root.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(default_app, name="default")
app.add_typer(config_app, name="config")
app.add_typer(registry_app, name="registry")
app.add_typer(annotate_app, name="annotate")
app.add_typer(serve_app, name="serve")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file; see `rlhfkit config show STAGE`.")


def load_stage_config(kind: str, config: Path | None, ctx: typer.Context):
    return cfg.load_config(STAGES[kind].config, config, list(ctx.args))


def run_stage(stage: Stage, config, *args):
    """Run a stage into its output_dir: refused up front when that cannot be written; a failed run into a new
    folder leaves none behind (atomic.run_folder)."""
    from .atomic import run_folder

    out = getattr(config, "output_dir", None)
    if out is None:
        return stage.run(config, *args)
    check_writable(out, "output_dir")
    with run_folder(out):
        return stage.run(config, *args)


def stage_command(kind: str, stage: Stage):
    """The CLI command of one registered stage: load its config (file, then command-line overrides) and run it."""
    if stage.checkpoint:

        def command(
            ctx: typer.Context,
            checkpoint: str = typer.Argument(..., help="model directory to check"),
            config: Path | None = ConfigOpt,
        ):
            result = run_stage(stage, load_stage_config(kind, config, ctx), checkpoint)
            raise typer.Exit(0 if result.passed else 1)

    else:

        def command(ctx: typer.Context, config: Path | None = ConfigOpt):
            result = run_stage(stage, load_stage_config(kind, config, ctx))
            # a verdict that is data, not an error (shift with fail_on_shift): the outputs stay, the status says it
            if isinstance(result, dict) and result.get("exit_code"):
                raise typer.Exit(result["exit_code"])

    return command


groups = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in GROUPS.items()}
for group_name, group in groups.items():
    app.add_typer(group, name=group_name)
for kind, stage in STAGES.items():
    if not stage.command:
        continue
    group_name, command_text = command_name(kind)
    target = app if group_name is None else groups[group_name]
    target.command(command_text, help=stage.help, context_settings=STAGE, epilog=OVERRIDES)(stage_command(kind, stage))


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
    """The whole loop on the embedded default, as a cached pipeline: SFT, pairs, reward model, DPO, evaluation,
    gate, report. Exits 1 when the DPO model fails the acceptance gate."""
    from .stages import demo as stage

    if show:
        typer.echo(f"# {stage.PIPELINE}")
        typer.echo(stage.PIPELINE.read_text().rstrip())
        return
    summary = stage.run(list(ctx.args), force=force or [], dry_run=dry_run)
    raise typer.Exit(0 if dry_run or summary["gate_passed"] else 1)


@app.command(
    context_settings=STAGE, epilog="Override any key after the file: rounds=5 window.rounds=3 policy.algorithm=grpo"
)
def flywheel(
    ctx: typer.Context,
    config: str | None = typer.Argument(None, help="flywheel YAML (keys: docs/flywheel.md)"),
    demo: bool = typer.Option(
        False, "--demo", help="the packaged example: 3 small rounds on the default task with simulated users"
    ),
    show: bool = typer.Option(False, "--show", help="print the packaged example file and exit"),
):
    """Rounds of gateway traffic -> pairs -> labels -> reward model -> shift check -> policy -> gate -> promote or
    roll back; each round a cached, resumable pipeline in OUTPUT_DIR/round-N. Rerun to resume after a kill."""
    from .flywheel import DEMO
    from .flywheel.config import FlywheelConfig
    from .flywheel.rounds import run as run_rounds

    overrides = list(ctx.args)
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `rlhfkit flywheel --demo rounds=2`: an override, not a file
        config = None
    if show:
        typer.echo(f"# {DEMO}")
        typer.echo(DEMO.read_text().rstrip())
        return
    if config is None and not demo:
        raise cfg.ConfigError("give a flywheel YAML file, or --demo for the packaged example (--show prints it)")
    settings = cfg.load_config(FlywheelConfig, DEMO if config is None else Path(config), overrides)
    summary = run_rounds(settings)
    typer.echo(
        f"flywheel: {len(summary['rounds']) - 1} rounds in {summary['output_dir']}; report {summary.get('report')}"
    )


@data_app.command("validate")
def data_validate(
    path: str = typer.Argument(
        ..., help="JSONL (.gz allowed), Parquet, CSV, JSON or Arrow file, save_to_disk folder, or Hub dataset id"
    ),
    kind: str | None = typer.Option(
        None, help="sft, prompt, preference or unpaired (default: guessed from the first record)"
    ),
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
    path: str = typer.Argument(..., help="file to import (JSONL, or any source `data validate` reads)"),
    format: str = typer.Option(
        ...,
        "--format",
        "-f",
        help="trl, hh (Anthropic HH-RLHF) or ultrafeedback (to pairs); trl-unpaired (TRL's KTO layout) or "
        "pairs-unpaired (pairs as thumbs: chosen true, rejected false) (to unpaired records)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="preference or unpaired JSONL to write"),
):
    """Convert preference data to the rlhfkit preference or unpaired schema (written atomically; nothing on error)."""
    from .atomic import write_json
    from .data.importers import import_records
    from .data.records import write_jsonl

    check_writable(out, "--out", folder=False)
    pairs, report = import_records(path, format)
    write_jsonl(out, pairs)
    report_file = out.with_name(out.name.removesuffix(".gz").removesuffix(".jsonl") + ".import.json")
    write_json(report_file, report.as_dict())
    typer.echo(f"{report.summary()}; wrote {out}; every skipped line in {report_file}")


@registry_app.command("list")
def registry_list(root: Path = typer.Option(Path("runs/demo"), "--root", help="run root holding registry.sqlite")):
    """Every registered checkpoint with its gate result; * marks the current one."""
    from .evaluate.registry import Registry, format_registry

    if not (root / "registry.sqlite").is_file():
        raise cfg.ConfigError(f"{root}: no registry.sqlite here; `rlhfkit gate CHECKPOINT` creates it")
    typer.echo(format_registry(Registry(root).list()))


@app.command()
def export(
    checkpoint: Path = typer.Argument(
        ..., help="model directory (a stage's OUTPUT_DIR/model, or an adapter-only save)"
    ),
    out: Path = typer.Argument(..., help="folder to write the clean HF directory into"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="run root whose registry has the checkpoint (default: two folders up, as the gate records it)",
    ),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="also upload it to this Hub repo (online)"),
):
    """A checkpoint as a clean HF directory: LoRA merged, one dtype, the model card with its registry record."""
    from .release import export_checkpoint

    check_writable(out, "OUT")
    written = export_checkpoint(checkpoint, out, dtype, root, push_to_hub)
    typer.echo(f"exported {checkpoint} to {written}" + (f" and pushed to {push_to_hub}" if push_to_hub else ""))


@app.command()
def rollback(root: Path = typer.Option(Path("runs/demo"), "--root", help="run root holding registry.sqlite")):
    """Make the last passing checkpoint before the current one current (ROOT/current points to it)."""
    from .evaluate.registry import Registry, update_current_link

    if not (root / "registry.sqlite").is_file():
        raise cfg.ConfigError(f"{root}: no registry.sqlite here; `rlhfkit gate CHECKPOINT` creates it")
    checkpoint = Registry(root).rollback()
    update_current_link(root, checkpoint.path)
    typer.echo(f"current checkpoint is now #{checkpoint.id}: {checkpoint.path} ({root / 'current'} points to it)")


@app.command()
def detect(
    run_dir: Path = typer.Argument(
        ..., help="a run folder with metrics.jsonl (ppo, grpo, rloo), or an eval folder with eval.json"
    ),
    strict: bool = typer.Option(False, help="exit 1 when any detector fires"),
):
    """Reward hacking, length drift, mode collapse, stock phrase and KL blow-up over a run's metrics; mode collapse
    and stock phrase of each evaluated model against the eval's baseline; each with its evidence."""
    import json

    from .evaluate.detectors import eval_detectors, format_verdicts, load_metrics, run_detectors

    evaluation = run_dir / "eval.json" if run_dir.is_dir() else run_dir
    if evaluation.name == "eval.json" and evaluation.is_file():
        found = eval_detectors(json.loads(evaluation.read_text()))
        verdicts = [v for model_verdicts in found.values() for v in model_verdicts]
        for model, model_verdicts in found.items():
            typer.echo(f"{model}:\n{format_verdicts(model_verdicts)}")
    else:
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
    check_writable(out or run_dir / "report.html", "--out", folder=False)
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

    if json_out:
        check_writable(json_out, "--json", folder=False)
    report = agreement_report(path)
    typer.echo(format_report(report))
    if json_out:
        from .atomic import write_json

        write_json(json_out, report)


@default_app.command("build")
def default_build(force: bool = typer.Option(False, help="rebuild even when a cached build exists")):
    """Build (once) the embedded default: corpus, BPE tokenizer, tiny GPT-2, prompts."""
    from .resolve import default_task

    task = default_task(force=force)
    info = task.info
    typer.echo(
        f"default task at {task.root}: {info['parameters']:,} parameters, pre-training loss "
        f"{info['first_loss']:.2f} -> "
        f"{info['final_loss']:.2f}, built in {info['seconds']}s"
    )


@default_app.command("info")
def default_info():
    """Where the embedded default lives and whether it is built."""
    from .resolve import default_task_dir

    root = default_task_dir()
    built = (root / "build.json").is_file()
    typer.echo(f"{root} ({'built' if built else 'not built yet: run `rlhfkit default build`'})")


@config_app.command("show")
def config_show(stage: str = typer.Argument(..., help=" | ".join(STAGES))):
    """Print a stage's keys with their defaults and meaning, as a YAML template."""
    if stage not in STAGES:
        raise cfg.ConfigError(f"unknown stage '{stage}'; expected one of {', '.join(STAGES)}")
    typer.echo("\n".join(cfg.config_template(STAGES[stage].config)))


def main() -> None:
    if os.environ.get("RLHFKIT_TRACEBACK") != "1":
        import warnings

        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()
    except RlhfkitError as exc:
        if os.environ.get("RLHFKIT_TRACEBACK") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system refused (disk full, permissions changed mid-run): not a bug of ours
        if os.environ.get("RLHFKIT_TRACEBACK") == "1":
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (set RLHFKIT_TRACEBACK=1 for the traceback)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
