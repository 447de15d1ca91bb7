"""The annotation workflow as plain functions over a SQLAlchemy session; the web app and the CLI both call them.

- projects and tokens: `create_project`, `create_admin`, `invite` (tokens are returned once, stored as sha256),
  `revoke_annotator`, `revoke_admins`, `revoke_token`
- imports: `import_pairs`, `import_margins`, `import_judgments` (machine judgments), each validating every row
  with an error naming file, line and field
- the queue: `next_assignment` serves, in order, the calibration pairs, then (once calibration passed) main
  pairs mixed with anchors; `submit_judgment` stores a label, idempotently per assignment
- `dashboard` (progress, agreement, kappas, position bias, per-annotator accuracy and drift, human-AI agreement)
- `export_preferences` and `export_judgments`

Rules worth knowing (also in README, "Annotation app"):
- Calibration agreement is the share of calibration pairs on which the annotator gave the reference answer:
  the pair's known `answer` when it has one, otherwise the strict majority of the *other* human annotators
  (pairs without either are not scored). The main queue opens when every calibration pair is labelled and
  the agreement is >= the project's threshold, or when an admin overrides (recorded with name and reason).
- Dynamic sampling: a main pair wants `overlap` human judgments; one whose uploaded reward margin
  |r(a) - r(b)| is below `margin_below` wants one more; once a pair has what it wants, if its most common choice
  has less than `dispute_below` of the votes it wants one more again; never more than `max_judgments`. With
  `sample_by: disagreement` an ensemble's uploaded disagreement plays the margin's part: the most disputed by the
  members first, and one above `disagreement_above` wants one more.
- The majority of a pair is the choice of more than half of its human votes; machine judgments never count
  toward a pair's judgments, its majority or the human agreement.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any, Literal

from pydantic import Field, model_validator
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from ...config import Strict
from ...data.records import (
    PreferencePair,
    Where,
    jsonl_lines,
    parse_common,
    parse_prompt,
    parse_record,
    parse_response,
    type_name,
)
from ...errors import DataError
from ...sqlstore import hash_token, new_token
from ..agreement import agreement_report, cohen_kappa, parse_choice, parse_identifier, percent_agreement
from .db import AnnotateError
from .models import Admin, Annotator, Assignment, CalibrationOverride, Judgment, Pair, Project, utcnow

SIDES = ("left", "right", "tie", "both_bad")
ROLES = ("main", "calibration", "anchor")
MACHINE_KINDS = ("ai", "panel")


class NotFound(AnnotateError):
    status = 404


class Forbidden(AnnotateError):
    status = 403


class Conflict(AnnotateError):
    status = 409


# ------------------------------------------------------------------------------------------------ tokens


def create_admin(s: Session, name: str = "admin") -> str:
    token, digest = new_token()
    s.add(Admin(name=name, token_hash=digest))
    s.flush()
    return token


def admin_for_token(s: Session, token: str | None) -> Admin | None:
    return s.scalar(select(Admin).where(Admin.token_hash == hash_token(token))) if token else None


def annotator_for_token(s: Session, token: str | None) -> Annotator | None:
    return s.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token))) if token else None


# ---------------------------------------------------------------------------------------------- projects

# the largest value of an integer setting (overlap, max_judgments, batch_size, anchor_window); booleans are refused
MAX_SETTING = 1000


class ProjectSettings(Strict):
    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="project name: letters, digits, _ . - (used in URLs)",
    )
    rubric: str = Field("", description="markdown shown to annotators above every pair")
    criteria: list[str] = Field(
        default_factory=list,
        description="per-criterion choices asked besides the overall one, e.g. [helpfulness, harmlessness]",
    )
    overlap: int = Field(2, ge=1, le=MAX_SETTING, strict=True, description="human judgments wanted per pair")
    max_judgments: int | None = Field(
        None,
        ge=1,
        le=MAX_SETTING,
        strict=True,
        description="cap of dynamic sampling: most human judgments a disputed or low-confidence pair gets (default "
        "overlap + 2)",
    )
    agreement_threshold: float = Field(
        0.65,
        ge=0,
        le=1,
        strict=True,
        description="calibration agreement an annotator needs before the main queue opens",
    )
    anchor_rate: float = Field(
        0.1, ge=0, le=1, strict=True, description="share of each batch that is anchor pairs (known answers)"
    )
    batch_size: int = Field(
        10,
        ge=1,
        le=MAX_SETTING,
        strict=True,
        description="items per batch; every batch gets round(anchor_rate * batch_size) anchors, at least 1 when "
        "anchor_rate > 0 and at most batch_size - 1, at places drawn at random per annotator and batch",
    )
    dispute_below: float = Field(
        0.6,
        ge=0,
        le=1,
        strict=True,
        description="a pair whose most common human choice has less than this share of its votes is disputed and "
        "gets one more judgment",
    )
    margin_below: float | None = Field(
        None,
        ge=0,
        strict=True,
        allow_inf_nan=False,
        description="a pair whose uploaded reward margin |r(a) - r(b)| is below this gets overlap + 1 judgments "
        "(null: off)",
    )
    sample_by: Literal["margin", "disagreement"] = Field(
        "margin",
        description="what dynamic sampling reads as the reward model's doubt about a pair: margin (fresh pairs with "
        "the smallest uploaded |margin| first; margin_below) or disagreement (the pairs a reward-model ensemble's "
        "members disagree on most first, from the uploaded disagreement; disagreement_above)",
    )
    disagreement_above: float | None = Field(
        None,
        ge=0,
        le=0.5,
        strict=True,
        allow_inf_nan=False,
        description="sample_by disagreement: a pair whose ensemble disagreement (std over members of sigmoid(r_a - "
        "r_b), 0 to 0.5) is above this gets overlap + 1 judgments (null: off)",
    )
    anchor_window: int = Field(
        5,
        ge=1,
        le=MAX_SETTING,
        strict=True,
        description="anchor judgments per point of an annotator's accuracy trend (drift)",
    )

    @model_validator(mode="after")
    def _check(self):
        for name, value in (("name", self.name), ("rubric", self.rubric), *(("criteria", c) for c in self.criteria)):
            if text_problem(value):
                raise ValueError(f"{name} {text_problem(value)}")
        if self.max_judgments is not None and self.max_judgments < self.overlap:
            raise ValueError(f"max_judgments ({self.max_judgments}) must be at least overlap ({self.overlap})")
        names = [c.strip() for c in self.criteria]
        if any(not c for c in names) or len(set(names)) != len(names):
            raise ValueError("criteria must be distinct, non-empty names")
        return self


class ProjectFile(ProjectSettings):
    """`rlhfkit annotate create-project FILE.yaml`: the settings plus files to import (paths relative to the YAML)."""

    pairs: str | None = Field(None, description="JSONL of pairs to label (role main)")
    calibration: str | None = Field(
        None,
        description="JSONL of calibration pairs (known `answer` optional; chosen/rejected rows: the answer is 'a')",
    )
    anchors: str | None = Field(None, description="JSONL of anchor pairs with known answers")
    margins: str | None = Field(
        None, description="JSONL of reward margins {pair_id, margin, disagreement?} (disagreement: of an ensemble)"
    )


def create_project(s: Session, settings: ProjectSettings) -> Project:
    if s.scalar(select(Project).where(Project.name == settings.name)):
        raise Conflict(f"project '{settings.name}' exists already")
    values = settings.model_dump(include=set(ProjectSettings.model_fields))
    values["criteria"] = [c.strip() for c in settings.criteria]
    values["max_judgments"] = settings.max_judgments or settings.overlap + 2
    project = Project(**values)
    s.add(project)
    s.flush()
    return project


def get_project(s: Session, name: str) -> Project:
    project = s.scalar(select(Project).where(Project.name == name))
    if project is None:
        names = s.scalars(select(Project.name).order_by(Project.name)).all()
        known = (
            f"projects here: {', '.join(names)}"
            if names
            else "there are no projects yet; create one with `rlhfkit annotate create-project`"
        )
        raise NotFound(f"unknown project '{name}' ({known})")
    return project


def project_view(project: Project) -> dict[str, Any]:
    return {
        "name": project.name,
        "rubric": project.rubric,
        "criteria": list(project.criteria),
        "overlap": project.overlap,
        "max_judgments": project.max_judgments,
        "agreement_threshold": project.agreement_threshold,
        "anchor_rate": project.anchor_rate,
        "batch_size": project.batch_size,
        "dispute_below": project.dispute_below,
        "margin_below": finite(project.margin_below),
        "sample_by": project.sample_by,
        "disagreement_above": finite(project.disagreement_above),
        "anchor_window": project.anchor_window,
    }


def list_projects(s: Session) -> list[dict[str, Any]]:
    out = []
    for project in s.scalars(select(Project).order_by(Project.name)):
        counts = dict(
            s.execute(select(Pair.role, func.count()).where(Pair.project_id == project.id).group_by(Pair.role)).all()
        )
        out.append({**project_view(project), "pairs": {role: counts.get(role, 0) for role in ROLES}})
    return out


def invite(s: Session, project: Project, name: str) -> tuple[Annotator, str]:
    """A new annotator and their token; an annotator whose token was revoked gets a new one (their judgments stay
    theirs)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise AnnotateError("annotator name: give 1 to 100 characters")
    if text_problem(name):
        raise AnnotateError(f"annotator name {text_problem(name)}")
    token, digest = new_token()
    existing = s.scalar(select(Annotator).where(Annotator.project_id == project.id, Annotator.name == name))
    if existing is not None and existing.kind == "human" and existing.token_hash is None:
        existing.token_hash = digest
        s.flush()
        return existing, token
    if existing is not None:
        raise Conflict(f"project '{project.name}' already has an annotator named '{name}'")
    annotator = Annotator(project_id=project.id, name=name, kind="human", token_hash=digest)
    s.add(annotator)
    s.flush()
    return annotator, token


def revoke_annotator(s: Session, project: Project, name: str) -> Annotator:
    """Revoke an annotator's token: from the next request on it gets 401. Their judgments stay; `invite` with the
    same name gives them a new token."""
    annotator = get_annotator(s, project, name)
    if annotator.kind != "human":
        raise AnnotateError(f"'{name}' is a machine annotator; it has no token to revoke")
    if annotator.token_hash is None:
        raise Conflict(f"the token of '{name}' in project '{project.name}' is revoked already")
    annotator.token_hash = None
    s.flush()
    return annotator


def revoke_admins(s: Session, name: str) -> int:
    """Revoke every admin token of `name` (they get 401 from the next request on); returns how many."""
    admins = s.scalars(select(Admin).where(Admin.name == name)).all()
    if not admins:
        names = sorted(set(s.scalars(select(Admin.name))))
        raise NotFound(f"no admin token for '{name}' (admins: {', '.join(names) or 'none'})")
    for admin in admins:
        s.delete(admin)
    s.flush()
    return len(admins)


def revoke_token(s: Session, token: str) -> str:
    """Revoke one token, an admin's or an annotator's; returns whose it was."""
    admin = admin_for_token(s, token)
    if admin is not None:
        s.delete(admin)
        s.flush()
        return f"admin '{admin.name}'"
    annotator = annotator_for_token(s, token)
    if annotator is None:
        raise NotFound("no such token here (never issued, or revoked already)")
    annotator.token_hash = None
    s.flush()
    return f"annotator '{annotator.name}' of project '{s.get(Project, annotator.project_id).name}'"


def get_annotator(s: Session, project: Project, name: str) -> Annotator:
    annotator = s.scalar(select(Annotator).where(Annotator.project_id == project.id, Annotator.name == name))
    if annotator is None:
        raise NotFound(f"project '{project.name}' has no annotator named '{name}'")
    return annotator


def override_calibration(s: Session, project: Project, name: str, admin: str, reason: str) -> dict[str, Any]:
    """Open an annotator's main queue whatever their calibration agreement; recorded with who and why."""
    annotator = get_annotator(s, project, name)
    if annotator.kind != "human":
        raise AnnotateError(f"'{name}' is a machine annotator; only people go through calibration")
    if not reason.strip():
        raise AnnotateError("an override needs a reason (it is kept with the project)")
    status = calibration_status(s, project, annotator)
    s.add(
        CalibrationOverride(
            annotator_id=annotator.id, admin=admin, reason=reason.strip(), agreement=status["agreement"]
        )
    )
    s.flush()
    return calibration_status(s, project, annotator)


# ------------------------------------------------------------------------------------------ stored values

# Integer columns are 32-bit on PostgreSQL: no row has a larger id, so a larger one in a request is refused
MAX_ID = 2**31 - 1
# deeper JSON than a record needs would only reach the stack limit of the JSON encoder when stored
MAX_DEPTH = 64


def text_problem(text: str) -> str | None:
    """What keeps `text` out of the store, or None: NUL (PostgreSQL refuses it) and lone surrogates (`\\ud800`:
    valid JSON, but not Unicode text that UTF-8 can encode)."""
    if "\x00" in text:
        return f"holds a NUL character (\\u0000, at character {text.index(chr(0)) + 1}); remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"holds a lone surrogate ({ascii(text[exc.start])[1:-1]}, at character {exc.start + 1}), which is not "
            "Unicode text; remove or replace it"
        )
    return None


def json_problem(value: Any) -> tuple[str | None, str] | None:
    """(field, what is wrong) for the first part of a decoded JSON value that the store cannot keep or strict JSON
    readers cannot read back: text with NUL or a lone surrogate (values and keys), NaN or Infinity, an integer
    beyond +-2^63 (no column or float holds it), nesting deeper than MAX_DEPTH. None when all is well. Walked
    without recursion."""
    stack: list[tuple[str | None, Any, int]] = [(None, value, 0)]
    while stack:
        name, item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return name, f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if text_problem(key):
                    return name, f"a key {text_problem(key)}"
                stack.append((f"{name}.{key}" if name else key, child, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{name or ''}[{i}]", child, depth + 1) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str) and text_problem(item):
            return name, text_problem(item)
        elif isinstance(item, float) and not math.isfinite(item):
            shown = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
            return name, f"{shown} is not a JSON number; give a finite number or null"
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
            return name, f"the integer {str(item)[:20]}... is beyond +-2^63; give a smaller one, or a string"
    return None


def check_row(obj: Any, where: Where) -> None:
    """Refuse an imported row json_problem finds fault with, naming its line and field."""
    problem = json_problem(obj)
    if problem:
        raise where.fail(*problem)


def finite(value: Any) -> Any:
    """`value` with NaN and Infinity (which stores filled before they were refused may hold) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(child) for key, child in value.items()}
    if isinstance(value, list):
        return [finite(child) for child in value]
    return value


# ----------------------------------------------------------------------------------------------- imports


def jsonl_text_rows(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of uploaded JSONL text; broken JSON is a DataError, as in
    read_jsonl."""
    return jsonl_lines(text.splitlines(), source)


@dataclass
class PairRow:
    line: int
    external_id: str
    prompt: Any
    response_a: str
    response_b: str
    answer: str | None = None
    margin: float | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _last_reply(value: str | list) -> str:
    return value[-1]["content"] if isinstance(value, list) else value


def _optional_number(obj: dict, key: str, where: Where) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.fail(key, f"expected a finite number, got {type_name(value)}")
    return float(value)


def parse_pair_row(obj: Any, where: Where, lineno: int, role: str) -> PairRow:
    """A pair to label: {prompt, response_a, response_b} or a preference record {prompt, chosen, rejected} (chosen
    becomes a, rejected b; as a calibration or anchor pair its known answer is then 'a'). Optional: id, category,
    metadata, answer ('a'|'b'|'tie'|'both_bad'), reward_margin (r(a) - r(b) from a reward model)."""
    if not isinstance(obj, dict):
        raise where.fail(None, f"expected a JSON object, got {type_name(obj)}")
    if "response_a" in obj or "response_b" in obj:
        common = parse_common(obj, where)
        prompt = parse_prompt(obj, where)
        response_a = _last_reply(parse_response(obj, "response_a", where))
        response_b = _last_reply(parse_response(obj, "response_b", where))
        if response_a.strip() == response_b.strip():
            raise where.fail("response_b", "identical to response_a; a pair needs two different responses")
        implied = None
    else:
        record = parse_record(obj, "preference", where)
        common = {k: getattr(record, k) for k in ("id", "category", "metadata") if getattr(record, k) not in (None, {})}
        prompt, response_a, response_b = record.prompt, record.chosen, record.rejected
        implied = "a" if role in ("calibration", "anchor") else None
    answer = parse_choice(obj["answer"], "answer", where) if obj.get("answer") is not None else implied
    if role == "anchor" and answer is None:
        raise where.fail("answer", "missing: an anchor pair needs its known answer ('a', 'b', 'tie' or 'both_bad')")
    external_id = str(common["id"]) if "id" in common else f"line-{lineno}"
    if len(external_id) > 200:
        raise where.fail("id", "longer than 200 characters")
    return PairRow(
        lineno,
        external_id,
        prompt,
        response_a,
        response_b,
        answer,
        _optional_number(obj, "reward_margin", where),
        common.get("category"),
        dict(common.get("metadata") or {}),
    )


def import_pairs(s: Session, project: Project, rows: Iterable[tuple[int, Any]], source: str, role: str = "main") -> int:
    """Validate every row, then add them all (nothing is added when a row is bad). Returns how many."""
    if role not in ROLES:
        raise AnnotateError(f"--role '{role}': expected one of {', '.join(ROLES)}")
    parsed: list[PairRow] = []
    first_line: dict[str, int] = {}
    for lineno, obj in rows:
        where = Where(source, lineno)
        check_row(obj, where)
        row = parse_pair_row(obj, where, lineno, role)
        if row.external_id in first_line:
            raise where.fail(
                "id", f"pair id '{row.external_id}' appears twice (first at line {first_line[row.external_id]})"
            )
        first_line[row.external_id] = lineno
        parsed.append(row)
    if not parsed:
        raise DataError(f"{source}: no pairs")
    existing = set(
        s.scalars(select(Pair.external_id).where(Pair.project_id == project.id, Pair.external_id.in_(list(first_line))))
    )
    for row in parsed:
        if row.external_id in existing:
            raise Where(source, row.line).fail("id", f"pair '{row.external_id}' is already in project '{project.name}'")
    s.add_all(
        Pair(
            project_id=project.id,
            external_id=row.external_id,
            role=role,
            prompt=row.prompt,
            response_a=row.response_a,
            response_b=row.response_b,
            answer=row.answer,
            margin=row.margin,
            category=row.category,
            extra=row.metadata,
        )
        for row in parsed
    )
    s.flush()
    return len(parsed)


def _pairs_by_external_id(s: Session, project: Project) -> dict[str, Pair]:
    return {p.external_id: p for p in s.scalars(select(Pair).where(Pair.project_id == project.id))}


def import_margins(s: Session, project: Project, rows: Iterable[tuple[int, Any]], source: str) -> int:
    """Reward margins {pair_id, margin, disagreement}: margin = r(a) - r(b) from a reward model, disagreement = an
    ensemble's std over members of sigmoid(r_a - r_b) (a row gives either or both); dynamic sampling uses |margin|,
    or the disagreement under sample_by disagreement."""
    pairs = _pairs_by_external_id(s, project)
    count = 0
    for lineno, obj in rows:
        where = Where(source, lineno)
        check_row(obj, where)
        if not isinstance(obj, dict):
            raise where.fail(None, f"expected a JSON object, got {type_name(obj)}")
        pair_id = str(parse_identifier(obj, "pair_id", where))
        if pair_id not in pairs:
            raise where.fail("pair_id", f"no pair '{pair_id}' in project '{project.name}'")
        if "margin" not in obj and "disagreement" not in obj:
            raise where.fail("margin", "missing (give margin, an ensemble's disagreement, or both)")
        if "margin" in obj:
            pairs[pair_id].margin = _optional_number(obj, "margin", where)
        if "disagreement" in obj:
            disagreement = _optional_number(obj, "disagreement", where)
            if disagreement is not None and not 0 <= disagreement <= 0.5:
                raise where.fail("disagreement", f"{disagreement} is outside [0, 0.5] (a std of probabilities)")
            pairs[pair_id].disagreement = disagreement
        count += 1
    if not count:
        raise DataError(f"{source}: no margins")
    s.flush()
    return count


SWAP = {"a": "b", "b": "a"}


def import_judgments(
    s: Session, project: Project, rows: Iterable[tuple[int, Any]], source: str, kind: str = "ai"
) -> dict[str, Any]:
    """Machine judgments in the judgments format {pair_id, annotator, choice, shown_first?, annotator_kind?,
    chosen_side?}
    (chosen_side 'b': the row's a/b are the other way round from the imported pair's chosen/rejected, and are swapped).
    They are stored as made by machine annotators (`annotator_kind` 'ai' or 'panel'; `kind` when a row has none),
    never count toward a pair's human judgments, and a row already stored (same annotator and pair) is skipped."""
    if kind not in MACHINE_KINDS:
        raise AnnotateError(f"--kind '{kind}': expected one of {', '.join(MACHINE_KINDS)}")
    pairs = _pairs_by_external_id(s, project)
    annotators = {a.name: a for a in s.scalars(select(Annotator).where(Annotator.project_id == project.id))}
    stored = set(
        s.execute(select(Judgment.annotator_id, Judgment.pair_id).where(Judgment.project_id == project.id)).all()
    )
    seen: dict[tuple[str, str], int] = {}
    new: list[tuple[dict, Any]] = []
    for lineno, obj in rows:
        where = Where(source, lineno)
        check_row(obj, where)
        if not isinstance(obj, dict):
            raise where.fail(None, f"expected a JSON object, got {type_name(obj)}")
        pair_id = str(parse_identifier(obj, "pair_id", where))
        name = obj.get("annotator")
        if not isinstance(name, str) or not name.strip():
            raise where.fail(
                "annotator", "missing" if name is None else f"expected a non-empty string, got {type_name(name)}"
            )
        if "choice" not in obj:
            raise where.fail("choice", "missing")
        choice = parse_choice(obj["choice"], "choice", where)
        shown_first = obj.get("shown_first")
        if shown_first is not None and shown_first not in ("a", "b"):
            raise where.fail("shown_first", f"expected 'a' or 'b', got {shown_first!r}")
        chosen_side = obj.get("chosen_side")
        if chosen_side is not None and chosen_side not in ("a", "b"):
            raise where.fail("chosen_side", f"expected 'a' or 'b', got {chosen_side!r}")
        if (
            chosen_side == "b"
        ):  # `rlhfkit pairs` votes in sampling order where the second sample became chosen (= a here)
            choice, shown_first = SWAP.get(choice, choice), SWAP.get(shown_first, shown_first)
        row_kind = obj.get("annotator_kind", kind)
        if row_kind not in MACHINE_KINDS:
            raise where.fail(
                "annotator_kind",
                f"expected 'ai' or 'panel', got {row_kind!r} (people label through the annotation page)",
            )
        rationale = obj.get("rationale")
        if rationale is not None and not isinstance(rationale, str):
            raise where.fail("rationale", f"expected a string, got {type_name(rationale)}")
        if pair_id not in pairs:
            raise where.fail("pair_id", f"no pair '{pair_id}' in project '{project.name}'")
        if name in annotators and annotators[name].kind == "human":
            raise where.fail(
                "annotator",
                f"'{name}' is a human annotator of project '{project.name}'; give machine annotators other names",
            )
        key = (pair_id, name)
        if key in seen:
            raise where.fail(
                "annotator",
                f"'{name}' already judged pair '{pair_id}' at line {seen[key]}; keep one judgment per annotator "
                "and pair",
            )
        seen[key] = lineno
        new.append(
            (
                {
                    "pair": pairs[pair_id],
                    "name": name,
                    "kind": row_kind,
                    "choice": choice,
                    "shown_first": shown_first,
                    "rationale": rationale,
                },
                where,
            )
        )
    if not new:
        raise DataError(f"{source}: no judgments")
    imported = skipped = 0
    for row, _ in new:
        annotator = annotators.get(row["name"])
        if annotator is None:
            annotator = annotators[row["name"]] = Annotator(project_id=project.id, name=row["name"], kind=row["kind"])
            s.add(annotator)
            s.flush()
        if (annotator.id, row["pair"].id) in stored:
            skipped += 1
            continue
        s.add(
            Judgment(
                project_id=project.id,
                pair_id=row["pair"].id,
                annotator_id=annotator.id,
                choice=row["choice"],
                shown_first=row["shown_first"],
                rationale=row["rationale"],
                criteria={},
            )
        )
        imported += 1
    s.flush()
    return {"imported": imported, "already_stored": skipped, "annotators": sorted({row["name"] for row, _ in new})}


# -------------------------------------------------------------------------------------------------- votes


def majority(choices: list[str]) -> tuple[str | None, float]:
    """(the choice of more than half of the votes, or None; the most common choice's share of the votes)."""
    if not choices:
        return None, 0.0
    top, count = Counter(choices).most_common(1)[0]
    return (top if 2 * count > len(choices) else None), count / len(choices)


def _human_votes(s: Session, project: Project, roles: tuple[str, ...] = ("main",)) -> dict[int, list[tuple[int, str]]]:
    """pair id -> [(annotator id, choice)] of human judgments."""
    rows = s.execute(
        select(Judgment.pair_id, Judgment.annotator_id, Judgment.choice)
        .join(Annotator, Annotator.id == Judgment.annotator_id)
        .join(Pair, Pair.id == Judgment.pair_id)
        .where(Judgment.project_id == project.id, Annotator.kind == "human", Pair.role.in_(roles))
    ).all()
    votes: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for pair_id, annotator_id, choice in rows:
        votes[pair_id].append((annotator_id, choice))
    return votes


# ------------------------------------------------------------------------------------------- calibration


def calibration_status(s: Session, project: Project, annotator: Annotator) -> dict[str, Any]:
    """state: 'none' (no calibration set), 'in_progress', 'waiting' (no reference to score against yet), 'passed',
    'failed' or 'overridden'; `open` says whether the main queue is open."""
    calibration = s.scalars(
        select(Pair).where(Pair.project_id == project.id, Pair.role == "calibration").order_by(Pair.id)
    ).all()
    base = {
        "threshold": project.agreement_threshold,
        "total": len(calibration),
        "done": 0,
        "scored": 0,
        "agreement": None,
        "override": None,
    }
    if not calibration:
        return {**base, "state": "none", "open": True}
    override = s.scalar(
        select(CalibrationOverride)
        .where(CalibrationOverride.annotator_id == annotator.id)
        .order_by(CalibrationOverride.id.desc())
        .limit(1)
    )
    if override is not None:
        base["override"] = {"admin": override.admin, "reason": override.reason, "at": _iso(override.created_at)}
    votes = _human_votes(s, project, ("calibration",))
    mine = {pair_id: choice for pair_id, pairs in votes.items() for who, choice in pairs if who == annotator.id}
    references = {}
    for pair in calibration:
        if pair.answer:
            references[pair.id] = pair.answer
        else:
            winner, _ = majority([choice for who, choice in votes.get(pair.id, []) if who != annotator.id])
            if winner:
                references[pair.id] = winner
    scored = [pair_id for pair_id in mine if pair_id in references]
    agreement = percent_agreement([mine[p] for p in scored], [references[p] for p in scored]) if scored else None
    status = {**base, "done": len(mine), "scored": len(scored), "agreement": agreement}
    if override is not None:
        return {**status, "state": "overridden", "open": True}
    if len(mine) < len(calibration):
        return {**status, "state": "in_progress", "open": False}
    if agreement is None:
        return {**status, "state": "waiting", "open": False}
    passed = agreement >= project.agreement_threshold
    return {**status, "state": "passed" if passed else "failed", "open": passed}


# ------------------------------------------------------------------------------------------------- queue


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _aware(moment).isoformat(timespec="seconds")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)  # SQLite hands back naive UTC


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)
    return str(prompt)


def assignment_view(assignment: Assignment, pair: Pair, project: Project) -> dict[str, Any]:
    """What the annotator sees. Anchors look like any other pair; sides follow the assignment's draw."""
    left, right = (
        (pair.response_a, pair.response_b) if assignment.shown_first == "a" else (pair.response_b, pair.response_a)
    )
    return {
        "id": assignment.id,
        "phase": "calibration" if assignment.phase == "calibration" else "labelling",
        "prompt": prompt_text(pair.prompt),
        "left": left,
        "right": right,
        "criteria": list(project.criteria),
        "done": assignment.done,
    }


# Main pairs an annotator may get next, best first. A pair wants `overlap` human judgments, or overlap + 1 when its
# reward margin |r(a) - r(b)| is under `margin_below`; once it has that many, it wants one more while its most
# common choice has less than `dispute_below` of the votes; never more than `max_judgments`. Open assignments
# count as judgments to come. Order: pairs short of `overlap` first (those closest to it first, so pairs get
# finished), then the extra judgments of dynamic sampling (most disputed first, then least confident margin), then
# import order. Under sample_by disagreement the ensemble's disagreement stands in for the margin: "low confidence" is
# disagreement > disagreement_above, and the least confident is the most disagreed-on (DOUBT below).
#
# The counting is done in the database, and only over "touched" pairs: those with a human judgment or an open main
# assignment. An untouched pair always wants more (overlap >= 1), ranks after every touched pair short of `overlap`
# and before every touched pair past it, and among untouched pairs the order is (|margin|, import order). So the
# best untouched pair is one indexed lookup, and the work per request grows with the judgments made, not with the
# size of the project.
_TOUCHED = """
WITH per_choice AS (
    SELECT j.pair_id, COUNT(*) AS n FROM judgments j JOIN annotators a ON a.id = j.annotator_id
    WHERE j.project_id = :project AND a.kind = 'human' GROUP BY j.pair_id, j.choice),
tally AS (SELECT pair_id, SUM(n) AS votes, MAX(n) AS top FROM per_choice GROUP BY pair_id),
pending AS (
    SELECT pair_id, COUNT(*) AS open FROM assignments
    WHERE project_id = :project AND done = :no AND phase = 'main' GROUP BY pair_id),
touched AS (SELECT pair_id FROM tally UNION SELECT pair_id FROM pending)
"""

CANDIDATES = (
    _TOUCHED
    + """,
counted AS (
    SELECT p.id, {doubt} AS doubt, COALESCE(t.votes, 0) AS votes, COALESCE(t.top, 0) AS top,
           COALESCE(t.votes, 0) + COALESCE(o.open, 0) AS taken,
           CASE WHEN {low} THEN :overlap + 1 ELSE :overlap END AS base
    FROM touched x JOIN pairs p ON p.id = x.pair_id LEFT JOIN tally t ON t.pair_id = p.id LEFT JOIN pending o ON
    o.pair_id = p.id
    WHERE p.project_id = :project AND p.role = 'main'
      AND p.id NOT IN (SELECT pair_id FROM assignments WHERE annotator_id = :annotator)),
wanted AS (
    SELECT id, doubt, votes, top, taken,
           CASE WHEN votes > 0 AND votes >= base AND top < CAST(:dispute_below AS DOUBLE PRECISION) * votes THEN
           votes + 1 ELSE base END AS wants
    FROM counted)
SELECT id, taken, COUNT(*) OVER () AS candidates FROM wanted
WHERE taken < CASE WHEN wants > :max_judgments THEN :max_judgments ELSE wants END
ORDER BY CASE WHEN taken < :overlap THEN 0 ELSE 1 END,
         CASE WHEN taken < :overlap THEN -taken WHEN votes > 0 THEN CAST(top AS REAL) / votes ELSE 1.0 END,
         COALESCE(doubt, 1e30), id
LIMIT 1
"""
)

# What the reward model's doubt about a pair is, per sample_by: (the column, an SQL order key that is smallest for the
# least confident pair, the condition for one more judgment). A pair without the column's value has no doubt key.
DOUBT = {
    "margin": (
        "margin",
        "ABS(p.margin)",
        "p.margin IS NOT NULL AND ABS(p.margin) < CAST(:margin_below AS DOUBLE PRECISION)",
    ),
    "disagreement": (
        "disagreement",
        "-p.disagreement",
        "p.disagreement IS NOT NULL AND p.disagreement > CAST(:disagreement_above AS DOUBLE PRECISION)",
    ),
}

# Main pairs this annotator cannot get as untouched ones: touched, or already theirs.
EXCLUDED = (
    _TOUCHED
    + """
SELECT COUNT(*) FROM (SELECT pair_id FROM touched UNION SELECT pair_id FROM assignments WHERE annotator_id =
:annotator) x
JOIN pairs p ON p.id = x.pair_id WHERE p.project_id = :project AND p.role = 'main'
"""
)

# The first untouched main pair in `order`, restricted by `which` (pairs with a margin, by |margin|; then the rest,
# in import order, which walks the primary key and stops at the first hit).
UNTOUCHED = """
SELECT p.id FROM pairs p
WHERE p.project_id = :project AND p.role = 'main' AND {which}
  AND NOT EXISTS (SELECT 1 FROM judgments j JOIN annotators a ON a.id = j.annotator_id
                  WHERE j.project_id = :project AND j.pair_id = p.id AND a.kind = 'human')
  AND NOT EXISTS (SELECT 1 FROM assignments x WHERE x.pair_id = p.id
                  AND ((x.done = :no AND x.phase = 'main') OR x.annotator_id = :annotator))
ORDER BY {order}
LIMIT 1
"""


def _main_queue(s: Session, project: Project, annotator: Annotator) -> tuple[int | None, int]:
    """(the best main pair for this annotator or None, how many main pairs are open to them)."""
    params = {
        "project": project.id,
        "annotator": annotator.id,
        "no": False,
        "overlap": project.overlap,
        "max_judgments": project.max_judgments,
        "dispute_below": project.dispute_below,
        "margin_below": project.margin_below,
        "disagreement_above": project.disagreement_above,
    }
    column, doubt, low = DOUBT[project.sample_by or "margin"]
    touched = s.execute(text(CANDIDATES.format(doubt=doubt, low=low)), params).first()
    total = s.scalar(select(func.count()).select_from(Pair).where(Pair.project_id == project.id, Pair.role == "main"))
    untouched = total - s.scalar(text(EXCLUDED), params)
    count = untouched + (touched[2] if touched else 0)
    if touched is not None and touched[1] < project.overlap:
        return touched[0], count  # a pair already under way and short of its overlap comes first
    if untouched:
        for which, order in ((f"p.{column} IS NOT NULL", f"{doubt}, p.id"), (f"p.{column} IS NULL", "p.id")):
            best = s.scalar(text(UNTOUCHED.format(which=which, order=order)), params)
            if best is not None:
                return best, count
    return (touched[0] if touched else None), count


def _anchors_per_batch(project: Project) -> int:
    """round(anchor_rate * batch_size), at least 1 when anchor_rate > 0 and at most batch_size - 1 (a batch holds
    at least one main pair)."""
    if project.anchor_rate <= 0 or project.batch_size < 2:
        return 0
    return min(project.batch_size - 1, max(1, round(project.anchor_rate * project.batch_size)))


def _anchor_places(project: Project, annotator: Annotator, batch: int) -> set[int]:
    """The places of anchors in the annotator's `batch`-th batch of main-queue items, drawn from their secret
    queue_seed: nothing the app shows (ids, positions, counts) tells where they are."""
    seed = f"{annotator.queue_seed or annotator.id}:{batch}"
    return set(random.Random(seed).sample(range(project.batch_size), _anchors_per_batch(project)))


def _unseen_anchors(s: Session, project: Project, mine: list[Assignment]) -> list[int]:
    """Anchor pairs this annotator has not been given: an anchor is never shown twice, as no main pair is."""
    seen = {a.pair_id for a in mine}
    anchors = s.scalars(select(Pair.id).where(Pair.project_id == project.id, Pair.role == "anchor").order_by(Pair.id))
    return [pair_id for pair_id in anchors if pair_id not in seen]


def _items_to_come(project: Project, annotator: Annotator, position: int, mains: int, anchors: int) -> int:
    """How many items the annotator will still be served from queue position `position` on, with `mains` main pairs
    and `anchors` unseen anchors open to them: every main pair, plus each anchor place that comes before the last
    main pair while anchors last. Serving any item, anchor or not, lowers it by one."""
    per_batch, size = _anchors_per_batch(project), project.batch_size
    left, coming = mains, 0  # main pairs not yet placed, anchors placed before the last main pair
    batch, place = divmod(position, size)
    while left and coming < anchors and per_batch:
        if place == 0 and left > size - per_batch:
            # a whole batch before the last main pair: its anchors all come, wherever they are
            coming += min(per_batch, anchors - coming)
            left -= size - per_batch
        else:
            places = _anchor_places(project, annotator, batch)
            for slot in range(place, size):
                if not left or coming == anchors:
                    break
                if slot in places:
                    coming += 1
                else:
                    left -= 1
        batch, place = batch + 1, 0
    return mains + coming


def _assign(s: Session, project: Project, annotator: Annotator, pair_id: int, phase: str) -> Assignment:
    assignment = Assignment(
        project_id=project.id,
        pair_id=pair_id,
        annotator_id=annotator.id,
        phase=phase,
        repeat=0,
        shown_first=secrets.choice("ab"),
        done=False,
    )
    s.add(assignment)
    s.flush()
    return assignment


def _progress(mine: list[Assignment], status: dict[str, Any], remaining: int | None) -> dict[str, Any]:
    return {
        "calibration_done": status["done"],
        "calibration_total": status["total"],
        "judged": sum(a.done and a.phase != "calibration" for a in mine),
        "remaining": remaining,
    }


def _remaining(s: Session, project: Project, annotator: Annotator, mine: list[Assignment], mains: int) -> int:
    """Items still to come after those in `mine` (main pairs and anchors alike), `mains` main pairs being open."""
    position = sum(a.phase in ("main", "anchor") for a in mine)
    return _items_to_come(project, annotator, position, mains, len(_unseen_anchors(s, project, mine)))


def _assignments_of(s: Session, annotator: Annotator) -> list[Assignment]:
    return list(s.scalars(select(Assignment).where(Assignment.annotator_id == annotator.id).order_by(Assignment.id)))


def annotator_progress(s: Session, project: Project, annotator: Annotator) -> dict[str, Any]:
    status = calibration_status(s, project, annotator)
    mine = _assignments_of(s, annotator)
    remaining = (
        _remaining(s, project, annotator, mine, _main_queue(s, project, annotator)[1]) if status["open"] else None
    )
    return _progress(mine, status, remaining)


def next_assignment(s: Session, project: Project, annotator: Annotator) -> dict[str, Any]:
    """The annotator's open assignment, or a new one. state: 'assignment', or when none can be given 'waiting',
    'calibration_failed' or 'done'. progress.remaining counts the items still to come after this one, anchors
    included, so it falls by one with every item served, whatever it is."""
    if s.get_bind().dialect.name != "sqlite":
        # one queue decision at a time per project (SQLite transactions are serialised already: BEGIN IMMEDIATE)
        s.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    mine = _assignments_of(s, annotator)
    status = calibration_status(s, project, annotator)
    main, mains = _main_queue(s, project, annotator) if status["open"] else (None, None)
    current = next((a for a in mine if not a.done), None)
    if current is None:
        current = _new_assignment(s, project, annotator, mine, status, main)
        if current is not None:
            mine.append(current)
            mains = mains - 1 if current.phase == "main" else mains
    remaining = _remaining(s, project, annotator, mine, mains) if status["open"] else None
    out = {
        "project": project.name,
        "annotator": annotator.name,
        "calibration": status,
        "progress": _progress(mine, status, remaining),
    }
    if current is None:
        state = {"failed": "calibration_failed", "waiting": "waiting"}.get(status["state"], "done")
        return {**out, "state": state, "assignment": None}
    return {**out, "state": "assignment", "assignment": assignment_view(current, s.get(Pair, current.pair_id), project)}


def _new_assignment(
    s: Session, project: Project, annotator: Annotator, mine: list[Assignment], status: dict[str, Any], main: int | None
) -> Assignment | None:
    """The first calibration pair not yet seen; else (queue open) the main pair `main`, or an unseen anchor in its
    place when the position is an anchor place."""
    seen = {a.pair_id for a in mine}
    if status["done"] < status["total"]:
        calibration = s.scalars(
            select(Pair.id).where(Pair.project_id == project.id, Pair.role == "calibration").order_by(Pair.id)
        )
        for pair_id in calibration:
            if pair_id not in seen:
                return _assign(s, project, annotator, pair_id, "calibration")
    if not status["open"] or main is None:
        return None  # nothing left to label: no anchor either, they only make sense mixed with real work
    position = sum(a.phase in ("main", "anchor") for a in mine)
    batch, place = divmod(position, project.batch_size)
    if place in _anchor_places(project, annotator, batch):
        anchors = _unseen_anchors(s, project, mine)
        if anchors:
            seed = f"{annotator.queue_seed or annotator.id}:anchor:{position}"
            return _assign(s, project, annotator, random.Random(seed).choice(anchors), "anchor")
    return _assign(s, project, annotator, main, "main")


def get_own_assignment(s: Session, annotator: Annotator, assignment_id: int) -> Assignment:
    assignment = s.get(Assignment, assignment_id)
    if assignment is None or assignment.annotator_id != annotator.id:
        raise NotFound(f"no assignment {assignment_id} in your queue")
    return assignment


def _pair_choice(side: str, shown_first: str) -> str:
    if side == "left":
        return shown_first
    if side == "right":
        return "b" if shown_first == "a" else "a"
    return side


def _side(choice: str, shown_first: str | None) -> str:
    if choice in ("a", "b") and shown_first:
        return "left" if choice == shown_first else "right"
    return choice


def judgment_response(judgment: Judgment) -> dict[str, Any]:
    """The submit response; built from the stored row, so a re-submission gets exactly the same answer."""
    return {
        "assignment_id": judgment.assignment_id,
        "judgment_id": judgment.id,
        "saved": True,
        "choice": _side(judgment.choice, judgment.shown_first),
        "criteria": {name: _side(c, judgment.shown_first) for name, c in (judgment.criteria or {}).items()},
    }


def existing_judgment(s: Session, assignment_id: int) -> Judgment | None:
    return s.scalar(select(Judgment).where(Judgment.assignment_id == assignment_id))


def submit_judgment(
    s: Session,
    project: Project,
    annotator: Annotator,
    assignment_id: int,
    choice: str,
    rationale: str | None = None,
    criteria: dict[str, str] | None = None,
    max_rationale: int = 2000,
) -> dict[str, Any]:
    """Store the annotator's choice for one assignment ('left', 'right', 'tie' or 'both_bad', as shown). A second
    submission for the same assignment changes nothing and gets the first one's response."""
    assignment = get_own_assignment(s, annotator, assignment_id)
    stored = existing_judgment(s, assignment.id)
    if stored is not None:
        return judgment_response(stored)
    if choice not in SIDES:
        raise AnnotateError(f"choice '{choice}': expected one of {', '.join(SIDES)}")
    if rationale is not None and len(rationale) > max_rationale:
        raise AnnotateError(f"rationale is {len(rationale)} characters long; at most {max_rationale} are allowed")
    criteria = criteria or {}
    for name, side in criteria.items():
        if name not in project.criteria:
            known = ", ".join(project.criteria) or "none"
            raise AnnotateError(f"criterion '{name}' is not one of this project's criteria ({known})")
        if side not in SIDES:
            raise AnnotateError(f"criterion '{name}': choice '{side}' is not one of {', '.join(SIDES)}")
    seconds = (utcnow() - _aware(assignment.created_at)).total_seconds()
    judgment = Judgment(
        project_id=project.id,
        pair_id=assignment.pair_id,
        annotator_id=annotator.id,
        assignment_id=assignment.id,
        choice=_pair_choice(choice, assignment.shown_first),
        shown_first=assignment.shown_first,
        criteria={name: _pair_choice(side, assignment.shown_first) for name, side in criteria.items()},
        rationale=(rationale.strip() or None) if rationale else None,
        seconds=round(seconds, 3),
    )
    assignment.done = True
    s.add(judgment)
    s.flush()
    return judgment_response(judgment)


def own_judgments(s: Session, annotator: Annotator) -> list[dict[str, Any]]:
    """An annotator's own labels, as they chose them (left/right as shown); anchors are not marked."""
    rows = s.execute(
        select(Judgment, Pair)
        .join(Pair, Pair.id == Judgment.pair_id)
        .where(Judgment.annotator_id == annotator.id)
        .order_by(Judgment.id)
    ).all()
    return [
        {
            "assignment_id": j.assignment_id,
            "prompt": prompt_text(p.prompt),
            "choice": _side(j.choice, j.shown_first),
            "rationale": j.rationale,
            "at": _iso(j.created_at),
        }
        for j, p in rows
    ]


# ------------------------------------------------------------------------------------------- statistics


@dataclass
class _Row:
    pair: Pair
    annotator: Annotator
    judgment: Judgment
    phase: str | None


def _all_judgments(s: Session, project: Project) -> list[_Row]:
    rows = s.execute(
        select(Judgment, Pair, Annotator, Assignment.phase)
        .join(Pair, Pair.id == Judgment.pair_id)
        .join(Annotator, Annotator.id == Judgment.annotator_id)
        .outerjoin(Assignment, Assignment.id == Judgment.assignment_id)
        .where(Judgment.project_id == project.id)
        .order_by(Judgment.id)
    ).all()
    return [_Row(pair, annotator, judgment, phase) for judgment, pair, annotator, phase in rows]


def agreement_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """rlhfkit's agreement report over judgments rows {pair_id, annotator, choice}; None without any."""
    if not rows:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "judgments.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        report = agreement_report(path)
    report.pop("file", None)
    return report


def _position_bias(judgments: list[Judgment]) -> dict[str, Any]:
    """How often the side shown on the left won, among decisive (a or b) judgments whose display order is known."""
    decisive = [j for j in judgments if j.choice in ("a", "b") and j.shown_first]
    left = sum(j.choice == j.shown_first for j in decisive)
    return {"decisive": len(decisive), "left_wins": left, "left_share": left / len(decisive) if decisive else None}


def _anchor_trend(correct: list[bool], window: int) -> list[dict[str, Any]]:
    """Accuracy over consecutive blocks of `window` anchor judgments, oldest first (the last block may be short)."""
    return [
        {
            "judgments": len(correct[i : i + window]),
            "accuracy": sum(correct[i : i + window]) / len(correct[i : i + window]),
        }
        for i in range(0, len(correct), window)
    ]


def dashboard(s: Session, project: Project) -> dict[str, Any]:
    rows = _all_judgments(s, project)
    pairs = s.scalars(select(Pair).where(Pair.project_id == project.id)).all()
    annotators = s.scalars(select(Annotator).where(Annotator.project_id == project.id).order_by(Annotator.id)).all()
    human = [r for r in rows if r.annotator.kind == "human"]
    labelled = [r for r in human if r.pair.role in ("main", "calibration")]  # anchors are quality control, not data

    votes: dict[int, list[str]] = defaultdict(list)
    voters: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for r in labelled:
        votes[r.pair.id].append(r.judgment.choice)
        voters[r.pair.id].append((r.annotator.id, r.judgment.choice))
    main = [p for p in pairs if p.role == "main"]
    complete = [p for p in main if len(votes.get(p.id, [])) >= project.overlap]
    progress_view = {
        "pairs": len(main),
        "calibration_pairs": sum(p.role == "calibration" for p in pairs),
        "anchor_pairs": sum(p.role == "anchor" for p in pairs),
        "started": sum(bool(votes.get(p.id)) for p in main),
        "complete": len(complete),
        "complete_share": len(complete) / len(main) if main else None,
        "disputed": sum(majority(votes[p.id])[1] < project.dispute_below for p in complete),
        "resampled": sum(len(votes.get(p.id, [])) > project.overlap for p in main),
        "human_judgments": len(human),
        "machine_judgments": len(rows) - len(human),
    }
    report = agreement_of(
        [{"pair_id": r.pair.external_id, "annotator": r.annotator.name, "choice": r.judgment.choice} for r in labelled]
    )

    majorities = {pair_id: majority(choices)[0] for pair_id, choices in votes.items()}
    people, machines = [], []
    for annotator in annotators:
        own = [r for r in rows if r.annotator.id == annotator.id]
        if annotator.kind != "human":
            shared = [(majorities[r.pair.id], r.judgment.choice) for r in own if majorities.get(r.pair.id)]
            machines.append(
                {
                    "name": annotator.name,
                    "kind": annotator.kind,
                    "judgments": len(own),
                    "shared_with_human_majority": len(shared),
                    "agreement_with_human_majority": percent_agreement(*zip(*shared)) if shared else None,
                    "kappa_with_human_majority": cohen_kappa(*zip(*shared)) if len(shared) >= 2 else None,
                    "position_bias": _position_bias([r.judgment for r in own]),
                }
            )
            continue
        anchors = [r for r in own if r.pair.role == "anchor"]
        correct = [r.judgment.choice == r.pair.answer for r in anchors]
        trend = _anchor_trend(correct, project.anchor_window)
        data = [r for r in own if r.pair.role in ("main", "calibration")]
        # agreement with the majority of the other people who labelled the same pair
        matches = []
        for r in data:
            winner, _ = majority([c for who, c in voters[r.pair.id] if who != annotator.id])
            if winner:
                matches.append(winner == r.judgment.choice)
        seconds = [r.judgment.seconds for r in own if r.judgment.seconds is not None]
        people.append(
            {
                "name": annotator.name,
                "judgments": len(data),
                "anchor_judgments": len(anchors),
                "calibration": calibration_status(s, project, annotator),
                "anchor_accuracy": sum(correct) / len(correct) if correct else None,
                "anchor_trend": trend,
                "drift": trend[-1]["accuracy"] - trend[0]["accuracy"] if len(trend) >= 2 else None,
                "agreement_with_others": sum(matches) / len(matches) if matches else None,
                "choices": dict(Counter(r.judgment.choice for r in data)),
                "position_bias": _position_bias([r.judgment for r in own]),
                "median_seconds": median(seconds) if seconds else None,
            }
        )
    overrides = s.execute(
        select(CalibrationOverride, Annotator.name)
        .join(Annotator, Annotator.id == CalibrationOverride.annotator_id)
        .where(Annotator.project_id == project.id)
        .order_by(CalibrationOverride.id)
    ).all()
    return {
        "project": project_view(project),
        "progress": progress_view,
        "agreement": report,
        "position_bias": _position_bias([r.judgment for r in human]),
        "annotators": people,
        "machine_annotators": machines,
        "overrides": [
            {
                "annotator": name,
                "admin": o.admin,
                "reason": o.reason,
                "agreement": o.agreement,
                "at": _iso(o.created_at),
            }
            for o, name in overrides
        ],
    }


# ----------------------------------------------------------------------------------------------- export


def criteria_labels(criteria: dict[str, str | None], winner: str) -> dict[str, str] | None:
    """Per-criterion majorities (a, b, tie, both_bad or None) as a pair's `labels` in its chosen/rejected terms, for
    one reward-model head per criterion; both_bad and no majority say nothing about the order and are left out."""
    terms = {winner: "chosen", "b" if winner == "a" else "a": "rejected", "tie": "tie"}
    labels = {name: terms[choice] for name, choice in criteria.items() if choice in terms}
    return labels or None


def export_preferences(s: Session, project: Project) -> tuple[list[PreferencePair], dict[str, int]]:
    """One preference pair per main or calibration pair whose human majority is a or b (chosen = that response).
    Left out and counted: pairs with no human judgment, no majority (no choice has more than half of the votes),
    or a majority of tie or both_bad. metadata keeps votes {annotator: choice} (humans), agreement (the winning
    choice's share), machine_votes, per-criterion majorities and the reward margin when there is one."""
    rows = _all_judgments(s, project)
    by_pair: dict[int, list[_Row]] = defaultdict(list)
    for r in rows:
        by_pair[r.pair.id].append(r)
    counts = {"exported": 0, "unlabelled": 0, "no_majority": 0, "tie": 0, "both_bad": 0}
    out = []
    for pair in s.scalars(
        select(Pair).where(Pair.project_id == project.id, Pair.role.in_(("main", "calibration"))).order_by(Pair.id)
    ):
        humans = [r for r in by_pair.get(pair.id, []) if r.annotator.kind == "human"]
        machines = [r for r in by_pair.get(pair.id, []) if r.annotator.kind != "human"]
        if not humans:
            counts["unlabelled"] += 1
            continue
        winner, share = majority([r.judgment.choice for r in humans])
        if winner is None:
            counts["no_majority"] += 1
            continue
        if winner in ("tie", "both_bad"):
            counts[winner] += 1
            continue
        metadata = {k: finite(v) for k, v in (pair.extra or {}).items() if k not in ("votes", "agreement")}
        metadata.update(
            {
                "votes": {r.annotator.name: r.judgment.choice for r in humans},
                "agreement": round(share, 4),
                "annotate_project": project.name,
                "pair_role": pair.role,
            }
        )
        if machines:
            metadata["machine_votes"] = {r.annotator.name: r.judgment.choice for r in machines}
        if project.criteria:
            metadata["criteria"] = {
                name: majority([r.judgment.criteria[name] for r in humans if name in (r.judgment.criteria or {})])[0]
                for name in project.criteria
            }
        if pair.margin is not None:
            metadata["reward_margin"] = finite(pair.margin)
        if pair.disagreement is not None:
            metadata["ensemble_disagreement"] = finite(pair.disagreement)
        chosen, rejected = (pair.response_a, pair.response_b) if winner == "a" else (pair.response_b, pair.response_a)
        out.append(
            PreferencePair(
                prompt=pair.prompt,
                chosen=chosen,
                rejected=rejected,
                id=pair.external_id,
                category=pair.category,
                annotator="annotate",
                metadata=metadata,
                labels=criteria_labels(metadata.get("criteria") or {}, winner),
            )
        )
        counts["exported"] += 1
    return out, counts


def export_judgments(s: Session, project: Project) -> list[dict[str, Any]]:
    """Every judgment of a main or calibration pair in the judgments format `rlhfkit agreement` reads:
    {pair_id, annotator, choice, shown_first, annotator_kind} (+ rationale and criteria when given)."""
    out = []
    for r in _all_judgments(s, project):
        if r.pair.role == "anchor":
            continue
        row: dict[str, Any] = {
            "pair_id": r.pair.external_id,
            "annotator": r.annotator.name,
            "choice": r.judgment.choice,
        }
        if r.judgment.shown_first:
            row["shown_first"] = r.judgment.shown_first
        row["annotator_kind"] = r.annotator.kind
        if r.judgment.rationale:
            row["rationale"] = r.judgment.rationale
        if r.judgment.criteria:
            row["criteria"] = r.judgment.criteria
        out.append(row)
    return out
