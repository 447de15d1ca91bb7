"""`rlhfkit annotate ...`: create the store, serve the app, manage projects from the shell, import and export.

The commands work on the store directly (`--db`: a SQLite file, `annotate.sqlite` here by default, or a
database URL such as postgresql://user:password@host/db). FastAPI, SQLAlchemy and uvicorn are imported inside
the commands so `rlhfkit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="The annotation web app: people label pairs in the browser; calibration, anchors, agreement, export.",
    no_args_is_help=True,
)

DB_HELP = "SQLite file or database URL (postgresql://user:password@host/db)"
DbOpt = typer.Option("annotate.sqlite", "--db", help=DB_HELP)
ProjectOpt = typer.Option(..., "--project", "-p", help="project name")


def _open(db: str, create: bool = False):
    from .db import open_database

    return open_database(db, create=create)


@app.command()
def init(
    db: str = DbOpt,
    name: str = typer.Option("admin", "--name", help="who the admin token belongs to (kept with overrides)"),
):
    """Create the store (or upgrade its schema to the newest) and print a new admin token, shown once."""
    from .db import current_revision, shown_url
    from .service import create_admin

    database = _open(db, create=True)
    with database.session() as s:
        token = create_admin(s, name)
        s.commit()
    typer.echo(f"annotation store ready: {shown_url(database.url)} (schema {current_revision(database.engine)})")
    typer.echo(f"admin token for '{name}' (shown once, stored only as a hash): {token}")
    typer.echo(f"next: rlhfkit annotate serve --db {db}   then open http://127.0.0.1:8000/admin#token={token}")
    database.close()


@app.command()
def serve(
    db: str = DbOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    max_request_kb: int = typer.Option(64, "--max-request-kb", min=1, help="largest request body in KiB (larger: 413)"),
    max_import_mb: int = typer.Option(
        32, "--max-import-mb", min=1, help="largest import upload (pairs, margins, judgments) in MiB"
    ),
    max_rationale: int = typer.Option(
        2000, "--max-rationale", min=1, help="longest rationale in characters (longer: 422)"
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="worker processes (PostgreSQL only: SQLite has one writer at a time); 60 database connections in all",
    ),
):
    """Serve the annotation app (upgrades the schema first). Pages: /admin, /annotate/PROJECT,
    /admin/PROJECT/dashboard."""
    import json
    import os

    import uvicorn

    from ...config import ConfigError
    from .app import SERVE_ENV, create_app
    from .db import shown_url

    database = _open(db)
    if workers > 1 and database.url.startswith("sqlite"):
        database.close()
        raise ConfigError(
            f"--workers {workers}: SQLite has one writer at a time, so only one process may serve it; use a "
            "PostgreSQL store (--db postgresql://...) for several workers"
        )
    limits = {
        "max_request_bytes": max_request_kb * 1024,
        "max_import_bytes": max_import_mb * 1024 * 1024,
        "max_rationale": max_rationale,
    }
    typer.echo(
        f"serving {shown_url(database.url)} on http://{host}:{port}/ with {workers} worker"
        f"{'s' if workers > 1 else ''}  (admin page: /admin#token=ADMIN_TOKEN)",
        err=True,
    )
    if workers == 1:
        uvicorn.run(create_app(database, **limits), host=host, port=port, log_level="warning")
        return
    # each worker opens its own connections (the queue's row lock keeps hand-outs safe between them)
    database.close()
    os.environ[SERVE_ENV] = json.dumps({"db": db, "connections": max(4, 60 // workers), **limits})
    uvicorn.run(
        "rlhfkit.feedback.annotate.app:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
    )


@app.command("create-project")
def create_project(
    config: Path = typer.Argument(
        ...,
        help="project YAML: name, rubric, criteria, overlap, ... and optional pairs/calibration/anchors/margins files",
    ),
    db: str = DbOpt,
):
    """Create a project from a YAML file and import the files it names (all or nothing)."""
    from ...config import load_config
    from ...data.records import read_jsonl
    from . import service

    settings = load_config(service.ProjectFile, config)
    database = _open(db)
    with database.session() as s:
        project = service.create_project(s, settings)
        lines = [
            f"created project '{project.name}' (overlap {project.overlap}, calibration threshold "
            f"{project.agreement_threshold:.0%}, "
            f"anchor rate {project.anchor_rate:g}, criteria: {', '.join(project.criteria) or 'overall only'})"
        ]
        for role, file in (
            ("main", settings.pairs),
            ("calibration", settings.calibration),
            ("anchor", settings.anchors),
        ):
            if file:
                path = config.parent / file
                lines.append(
                    f"imported {service.import_pairs(s, project, read_jsonl(path), str(path), role)} {role} pairs "
                    f"from {path}"
                )
        if settings.margins:
            path = config.parent / settings.margins
            lines.append(
                f"imported {service.import_margins(s, project, read_jsonl(path), str(path))} reward margins from {path}"
            )
        s.commit()
    typer.echo("\n".join(lines))


@app.command("import-pairs")
def import_pairs(
    path: Path = typer.Argument(
        ...,
        help="JSONL: {prompt, response_a, response_b} rows, or preference rows (prompt/chosen/rejected, e.g. "
        "`rlhfkit pairs` output)",
    ),
    project: str = ProjectOpt,
    role: str = typer.Option(
        "main", "--role", help="main (to label), calibration (everyone labels first) or anchor (known answers)"
    ),
    db: str = DbOpt,
):
    """Add pairs to a project; every row is checked first, a bad one stops the import with file, line and field."""
    from ...data.records import read_jsonl
    from . import service

    database = _open(db)
    with database.session() as s:
        count = service.import_pairs(s, service.get_project(s, project), read_jsonl(path), str(path), role)
        s.commit()
    typer.echo(f"imported {count} {role} pairs into '{project}'")


@app.command("import-margins")
def import_margins(
    path: Path | None = typer.Argument(
        None,
        help="JSONL of {pair_id, margin, disagreement?}: margin = r(a) - r(b), disagreement = an ensemble's std over "
        "members of sigmoid(r_a - r_b)",
    ),
    project: str = ProjectOpt,
    reward_model: str | None = typer.Option(
        None,
        "--reward-model",
        help="compute the margins with this reward model (an `rlhfkit reward train` model directory) instead of "
        "reading a file; an ensemble (`reward train ensemble=K`) stores its members' disagreement too",
    ),
    ensemble_method: str = typer.Option(
        "mean", "--ensemble-method", help="a reward-model ensemble: combine its members by mean, min or uwo"
    ),
    ensemble_coef: float = typer.Option(0.5, "--ensemble-coef", help="uwo: weight of the members' variance"),
    db: str = DbOpt,
):
    """Reward-model margins per pair (and an ensemble's disagreement); dynamic sampling gives pairs with |margin| <
    margin_below more judgments, or, under sample_by disagreement, those with disagreement > disagreement_above."""
    from ...config import ConfigError
    from ...data.records import read_jsonl
    from ...losses import ENSEMBLE_METHODS
    from . import service

    if (path is None) == (reward_model is None):
        raise ConfigError("give either a margins FILE or --reward-model DIR")
    if ensemble_method not in ENSEMBLE_METHODS or not ensemble_coef >= 0:
        raise ConfigError(
            f"--ensemble-method {ensemble_method} --ensemble-coef {ensemble_coef}: give one of "
            f"{', '.join(ENSEMBLE_METHODS)} and a coefficient >= 0"
        )
    database = _open(db)
    with database.session() as s:
        target = service.get_project(s, project)
        if reward_model:
            margins = compute_margins(s, target, reward_model, ensemble_method, ensemble_coef)
            source = f"--reward-model {reward_model}"
            count = service.import_margins(s, target, list(enumerate(margins, start=1)), source)
            with_disagreement = sum("disagreement" in m for m in margins)
        else:
            count, with_disagreement = service.import_margins(s, target, read_jsonl(path), str(path)), 0
        s.commit()
    typer.echo(
        f"stored {count} reward margins in '{project}'"
        + (f" ({with_disagreement} with an ensemble disagreement)" if with_disagreement else "")
    )


def compute_margins(s, project, model: str, ensemble_method: str = "mean", ensemble_coef: float = 0.5) -> list[dict]:
    """{pair_id, margin} for every pair of the project: r(prompt, a) - r(prompt, b), scored exactly as
    `rlhfkit judge kind=reward_model` scores (a directory without a reward head is refused there, with a clear error;
    an ensemble's members combined by `ensemble_method`, and its disagreement: the std over members of
    sigmoid(r_a - r_b), scoring.preference_disagreement). A pair with no room left for a response after truncation
    gets no margin."""
    from sqlalchemy import select

    from ...scoring import preference_disagreement
    from ..judge import Question, RewardModelJudge
    from .models import Pair

    pairs = s.scalars(select(Pair).where(Pair.project_id == project.id).order_by(Pair.id)).all()
    judge = RewardModelJudge(model, ensemble_method=ensemble_method, ensemble_coef=ensemble_coef)
    verdicts = judge.judge([Question(p.prompt, p.response_a, p.response_b) for p in pairs])
    disagreement = [None] * len(pairs)
    if len(judge.scorer.models) > 1:
        prompts = [p.prompt for p in pairs]
        members_a = judge.scorer.score_members(prompts, [p.response_a for p in pairs], judge.head)
        members_b = judge.scorer.score_members(prompts, [p.response_b for p in pairs], judge.head)
        disagreement = preference_disagreement(members_a, members_b)
    margins = []
    for pair, verdict, doubt in zip(pairs, verdicts, disagreement):
        first, second = verdict.detail["reward_first"], verdict.detail["reward_second"]
        if first is not None and second is not None:
            margins.append(
                {
                    "pair_id": pair.external_id,
                    "margin": round(first - second, 6),
                    **({"disagreement": round(doubt, 6)} if doubt is not None else {}),
                }
            )
    return margins


@app.command("import-judgments")
def import_judgments(
    path: Path = typer.Argument(
        ...,
        help="judgments JSONL: {pair_id, annotator, choice, shown_first?, annotator_kind?} (what `rlhfkit pairs` "
        "and `rlhfkit judge` write)",
    ),
    project: str = ProjectOpt,
    kind: str = typer.Option("ai", "--kind", help="ai or panel: the machine kind of rows without annotator_kind"),
    db: str = DbOpt,
):
    """Store machine judgments (AI judges, simulated panels) next to the human ones; they never count as human votes."""
    from ...data.records import read_jsonl
    from . import service

    database = _open(db)
    with database.session() as s:
        result = service.import_judgments(s, service.get_project(s, project), read_jsonl(path), str(path), kind)
        s.commit()
    typer.echo(
        f"imported {result['imported']} machine judgments from {', '.join(result['annotators'])} into '{project}'"
        + (f" ({result['already_stored']} already stored, skipped)" if result["already_stored"] else "")
    )


@app.command()
def invite(
    name: str = typer.Argument(..., help="the annotator's name, unique in the project"),
    project: str = ProjectOpt,
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="where the app is served, for the printed link"),
    db: str = DbOpt,
):
    """Create an annotator with their own token and print their link (the token is shown once); for an annotator
    whose token was revoked, a new token."""
    from . import service

    database = _open(db)
    with database.session() as s:
        annotator, token = service.invite(s, service.get_project(s, project), name)
        s.commit()
    typer.echo(f"annotator '{annotator.name}' invited to '{project}'; token (shown once): {token}")
    typer.echo(f"link: {url.rstrip('/')}/annotate/{project}#token={token}")


@app.command()
def revoke(
    name: str | None = typer.Argument(None, help="the annotator whose token to revoke (with --project)"),
    project: str | None = typer.Option(None, "--project", "-p", help="the annotator's project"),
    admin: str | None = typer.Option(None, "--admin", help="revoke every admin token of this name instead"),
    token: str | None = typer.Option(None, "--token", help="revoke this token instead, an admin's or an annotator's"),
    db: str = DbOpt,
):
    """Revoke a token (a leaked link): it gets 401 from the next request on. An annotator keeps their judgments
    and `invite` with the same name gives them a new link; `init` makes a new admin token."""
    from ...config import ConfigError
    from . import service

    if sum(x is not None for x in (name, admin, token)) != 1:
        raise ConfigError("give one of: NAME --project P (an annotator), --admin NAME, --token TOKEN")
    if name is not None and project is None:
        raise ConfigError(f"annotator '{name}': give their project with --project P")
    database = _open(db)
    with database.session() as s:
        if name is not None:
            service.revoke_annotator(s, service.get_project(s, project), name)
            done = f"revoked the token of annotator '{name}' of '{project}'; `invite {name}` gives them a new one"
        elif admin is not None:
            count = service.revoke_admins(s, admin)
            done = f"revoked {count} admin token{'s' if count > 1 else ''} of '{admin}'"
        else:
            done = f"revoked the token of {service.revoke_token(s, token)}"
        s.commit()
    typer.echo(done)


@app.command()
def override(
    name: str = typer.Argument(..., help="annotator whose main queue to open"),
    project: str = ProjectOpt,
    reason: str = typer.Option(..., "--reason", help="why; kept with the project and shown on the dashboard"),
    admin: str = typer.Option("admin", "--admin", help="who decided"),
    db: str = DbOpt,
):
    """Open an annotator's main queue although their calibration agreement is under the threshold (recorded)."""
    from . import service

    database = _open(db)
    with database.session() as s:
        status = service.override_calibration(s, service.get_project(s, project), name, admin, reason)
        s.commit()
    agreement = "n/a" if status["agreement"] is None else f"{status['agreement']:.0%}"
    typer.echo(
        f"'{name}' may label the main queue of '{project}' (calibration agreement {agreement}, threshold "
        f"{status['threshold']:.0%}); override recorded"
    )


@app.command()
def stats(
    project: str = ProjectOpt,
    db: str = DbOpt,
    json_out: Path | None = typer.Option(None, "--json", help="also write the whole dashboard as JSON here"),
):
    """The dashboard as text: progress, agreement, kappas, position bias, per-annotator accuracy and drift."""
    from ...atomic import check_writable, write_json
    from . import service

    if json_out:
        check_writable(json_out, "--json", folder=False)
    database = _open(db)
    with database.session() as s:
        board = service.dashboard(s, service.get_project(s, project))
    typer.echo(format_dashboard(board))
    if json_out:
        write_json(json_out, board)


def format_dashboard(board: dict) -> str:
    def num(value, percent=False):
        return "n/a" if value is None else (f"{value:.0%}" if percent else f"{value:.3f}")

    p, agreement, bias = board["progress"], board["agreement"] or {}, board["position_bias"]
    lines = [
        f"project {board['project']['name']}: {p['complete']} of {p['pairs']} pairs have "
        f"{board['project']['overlap']} human judgments "
        f"({p['human_judgments']} human, {p['machine_judgments']} machine judgments; {p['disputed']} disputed, "
        f"{p['resampled']} re-presented)",
        f"  raw agreement {num(agreement.get('raw_agreement'))}, mean Cohen's kappa "
        f"{num(agreement.get('mean_cohen_kappa'))}, "
        f"Fleiss' kappa {num(agreement.get('fleiss_kappa'))}, Krippendorff's alpha "
        f"{num(agreement.get('krippendorff_alpha'))}",
        f"  position bias: the left side won {num(bias['left_share'], True)} of {bias['decisive']} decisive judgments",
    ]
    for key, kappa in (agreement.get("cohen_kappa") or {}).items():
        lines.append(f"  kappa {key.replace('|', ' / ')}: {kappa:.3f}")
    for person in board["annotators"]:
        cal = person["calibration"]
        trend = " -> ".join(f"{t['accuracy']:.2f}" for t in person["anchor_trend"]) or "no anchors yet"
        lines.append(
            f"  {person['name']}: {person['judgments']} judgments; calibration {cal['state']} "
            f"({num(cal['agreement'], True)}); "
            f"anchor accuracy {num(person['anchor_accuracy'], True)} (trend {trend}); left side won "
            f"{num(person['position_bias']['left_share'], True)}"
        )
    for machine in board["machine_annotators"]:
        lines.append(
            f"  {machine['name']} ({machine['kind']}): kappa with the human majority "
            f"{num(machine['kappa_with_human_majority'])} "
            f"on {machine['shared_with_human_majority']} pairs"
        )
    return "\n".join(lines)


@app.command()
def export(
    project: str = ProjectOpt,
    out: Path = typer.Option(
        ..., "--out", "-o", help="preference JSONL to write (what `rlhfkit reward train` and `rlhfkit dpo` read)"
    ),
    judgments: Path | None = typer.Option(
        None, "--judgments", help="also write every judgment here, in the judgments format `rlhfkit agreement` reads"
    ),
    db: str = DbOpt,
):
    """Majority labels as preference pairs; pairs whose majority is tie or both_bad, or that have none, are left
    out and counted."""
    from ...atomic import check_writable
    from ...data.records import write_jsonl
    from ...errors import DataError
    from . import service

    check_writable(out, "--out", folder=False)
    if judgments:
        check_writable(judgments, "--judgments", folder=False)
    database = _open(db)
    with database.session() as s:
        target = service.get_project(s, project)
        pairs, counts = service.export_preferences(s, target)
        rows = service.export_judgments(s, target) if judgments else None
    if not pairs:
        raise DataError(
            f"project '{project}': no pair has a human majority for a or b yet (left out: {_left_out(counts)}); "
            "nothing written"
        )
    write_jsonl(out, pairs)
    typer.echo(f"wrote {len(pairs)} preference pairs to {out} (left out: {_left_out(counts)})")
    if judgments:
        write_jsonl(judgments, rows)
        typer.echo(f"wrote {len(rows)} judgments to {judgments}")


def _left_out(counts: dict) -> str:
    return (
        f"{counts['tie']} tie, {counts['both_bad']} both_bad, {counts['no_majority']} without a majority, "
        f"{counts['unlabelled']} unlabelled"
    )
