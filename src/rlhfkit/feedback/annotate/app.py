"""The annotation web app: `create_app(db)` returns a FastAPI app serving the JSON API and three plain pages.

Pages (no login form: the token travels in the URL fragment, which browsers never send to the server):
  /annotate/PROJECT#token=T   an annotator's page        /admin#token=T   projects, imports, invitations
  /admin/PROJECT/dashboard#token=T   agreement and annotator statistics
API: every call sends `Authorization: Bearer TOKEN`. Admin tokens come from `rlhfkit annotate init`; annotator
tokens from an invitation and are valid for their own project only. No token, an unknown or a revoked one: 401; a
token without the right: 403; both are decided before the body is read. Bodies are strict JSON (no NaN or
Infinity) whose text can be stored (no NUL, no lone surrogates): else 422 naming the field. Every write is
committed before its response is sent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ...bodylimit import BodyLimit
from ...data.records import record_to_dict
from ...errors import RlhfkitError
from . import service
from .db import AnnotateError, Database, current_revision, open_database
from .models import Admin, Annotator, Judgment, Pair, Project

STATIC = Path(__file__).parent / "static"
IMPORT_PATHS = ("/pairs", "/margins", "/machine-judgments")
# who may call each API route; every other /api/ route is for admins
ANNOTATOR_ROUTES = {
    "/api/projects/{name}/me",
    "/api/projects/{name}/next",
    "/api/projects/{name}/assignments/{assignment_id}",
    "/api/projects/{name}/assignments/{assignment_id}/judgment",
    "/api/projects/{name}/my-judgments",
}
EITHER_ROUTES = {"/api/whoami", "/api/projects/{name}"}
# the pages load only their own scripts and styles, talk only to this server and cannot be framed
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
AssignmentId = PathParam(..., ge=1, le=service.MAX_ID, description="an assignment id from POST .../next")


class Upload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jsonl: str = Field(..., description="the file's text: one JSON object a line")
    filename: str = Field("upload.jsonl", max_length=200, description="named in error messages")
    role: str = Field("main", description="pairs: main, calibration or anchor")
    kind: str = Field("ai", description="machine judgments: ai or panel, for rows without annotator_kind")


class InviteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=100)


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(..., min_length=1, max_length=2000)


class JudgmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    choice: str = Field(..., description="left, right, tie or both_bad, as shown")
    rationale: str | None = None
    criteria: dict[str, str] | None = None


def strict_json(body: bytes) -> Any:
    """A request body as JSON, refused (422) unless it is strict JSON (no NaN or Infinity) that the store can keep
    (service.json_problem: no NUL or lone surrogate in text, not nested too deeply); the message names the field."""

    def refuse(constant: str):
        raise HTTPException(422, f"the body is not JSON: {constant} is not a JSON number; send a finite number or null")

    try:
        value = json.loads(body, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the body is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise HTTPException(422, "the body is not UTF-8 text") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        raise HTTPException(422, f"the body is not JSON ({exc})") from None
    except RecursionError:
        raise HTTPException(422, f"the body is nested too deeply (at most {service.MAX_DEPTH} levels)") from None
    problem = service.json_problem(value)
    if problem:
        name, what = problem
        raise HTTPException(422, f"field '{name}': {what}" if name else f"the body {what}")
    return value


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


def route_class(check_rights):
    """API routes that call `check_rights(request, access)` (401/403) before the body is read, refuse path text the
    store cannot keep (NUL, lone surrogates), then read the body with strict_json: an anonymous caller never reaches
    the body parser, whatever the body holds."""

    class CheckedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()
            if not self.path.startswith("/api/"):
                return handler
            access = (
                "annotator" if self.path in ANNOTATOR_ROUTES else "either" if self.path in EITHER_ROUTES else "admin"
            )

            async def checked(request: Request) -> Response:
                await run_in_threadpool(check_rights, request, access)
                for key, value in request.path_params.items():
                    if isinstance(value, str) and service.text_problem(value):
                        raise HTTPException(422, f"{key} in the path {service.text_problem(value)}")
                return await handler(StrictJSONRequest(request.scope, request.receive))

            return checked

    return CheckedRoute


def body_limit(max_request_bytes: int, max_import_bytes: int):
    """The annotation app's rule for rlhfkit.bodylimit.BodyLimit: imports have their own, larger limit."""

    def limit(scope) -> tuple[int, dict]:
        is_import = scope["method"] == "POST" and scope["path"].endswith(IMPORT_PATHS)
        max_bytes = max_import_bytes if is_import else max_request_bytes
        option = "--max-import-mb" if is_import else "--max-request-kb"
        return max_bytes, {"detail": f"request body over the limit of {max_bytes} bytes ({option} sets it)"}

    return limit


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_admin(s: Session, request: Request) -> Admin:
    token = _bearer(request)
    if token is None:
        raise HTTPException(401, "missing token: send the header 'Authorization: Bearer TOKEN'")
    admin = service.admin_for_token(s, token)
    if admin is not None:
        return admin
    if service.annotator_for_token(s, token) is not None:
        raise HTTPException(403, "this needs an admin token")
    raise HTTPException(401, "unknown or revoked token")


def require_annotator(s: Session, request: Request, project_name: str) -> tuple[Annotator, Project]:
    """The annotator behind the token, who must belong to `project_name` (else 403, without saying what exists)."""
    token = _bearer(request)
    if token is None:
        raise HTTPException(401, "missing token: send the header 'Authorization: Bearer TOKEN'")
    annotator = service.annotator_for_token(s, token)
    if annotator is None:
        if service.admin_for_token(s, token) is not None:
            raise HTTPException(403, "this is an annotator's endpoint; admins invite themselves to label")
        raise HTTPException(401, "unknown or revoked token")
    project = s.get(Project, annotator.project_id)
    if project.name != project_name:
        raise HTTPException(403, f"your token is not for project '{project_name}'")
    return annotator, project


def check_rights(database: Database, request: Request, access: str) -> None:
    """The rights check of a route ('admin', 'annotator' or 'either'): raises 401 or 403, in its own session."""
    with database.session() as s:
        if access == "admin":
            require_admin(s, request)
        elif access == "annotator":
            require_annotator(s, request, request.path_params.get("name", ""))
        else:
            token = _bearer(request)
            if service.admin_for_token(s, token) is None and service.annotator_for_token(s, token) is None:
                raise HTTPException(
                    401, "missing, unknown or revoked token: send the header 'Authorization: Bearer TOKEN'"
                )


def create_app(
    db: str | Database,
    *,
    max_request_bytes: int = 64 * 1024,
    max_import_bytes: int = 32 * 1024 * 1024,
    max_rationale: int = 2000,
) -> FastAPI:
    """The app over a store (`db`: an open Database, or a URL/path to open and upgrade to the newest schema)."""
    database = db if isinstance(db, Database) else open_database(db, create=True)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if not isinstance(db, Database):
            database.close()

    app = FastAPI(
        title="rlhfkit annotate",
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.router.route_class = route_class(lambda request, access: check_rights(database, request, access))
    app.state.db = database
    app.state.max_rationale = max_rationale
    app.add_middleware(BodyLimit, limit=body_limit(max_request_bytes, max_import_bytes))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RlhfkitError)
    async def user_error(_request: Request, exc: RlhfkitError):
        status = exc.status if isinstance(exc, AnnotateError) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        # FastAPI's answer without the `input` it echoes: a request's whole body, up to the import limit
        errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    def session() -> Session:
        return database.session()

    # ------------------------------------------------------------------------------------------- pages
    def page(name: str) -> FileResponse:
        return FileResponse(
            STATIC / name, media_type="text/html", headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP}
        )

    @app.get("/", include_in_schema=False)
    def index():
        return page("index.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return page("admin.html")

    @app.get("/admin/{project}/dashboard", include_in_schema=False)
    def dashboard_page(project: str):
        return page("dashboard.html")

    @app.get("/annotate/{project}", include_in_schema=False)
    def annotate_page(project: str):
        return page("annotate.html")

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "schema": current_revision(database.engine)}

    # --------------------------------------------------------------------------------------- who am I
    @app.get("/api/whoami")
    def whoami(request: Request):
        with session() as s:
            token = _bearer(request)
            admin = service.admin_for_token(s, token)
            if admin is not None:
                return {"role": "admin", "name": admin.name}
            annotator = service.annotator_for_token(s, token)
            if annotator is None:
                raise HTTPException(401, "missing or unknown token")
            return {"role": "annotator", "name": annotator.name, "project": s.get(Project, annotator.project_id).name}

    # ------------------------------------------------------------------------------------------ admin
    @app.get("/api/projects")
    def projects(request: Request):
        with session() as s:
            require_admin(s, request)
            return service.list_projects(s)

    @app.post("/api/projects", status_code=201)
    def create_project(settings: service.ProjectSettings, request: Request):
        with session() as s:
            require_admin(s, request)
            project = service.create_project(s, settings)
            s.commit()
            return service.project_view(project)

    @app.post("/api/projects/{name}/pairs")
    def import_pairs(name: str, upload: Upload, request: Request):
        with session() as s:
            require_admin(s, request)
            project = service.get_project(s, name)
            count = service.import_pairs(
                s, project, service.jsonl_text_rows(upload.jsonl, upload.filename), upload.filename, upload.role
            )
            s.commit()
            return {"imported": count, "role": upload.role}

    @app.post("/api/projects/{name}/margins")
    def import_margins(name: str, upload: Upload, request: Request):
        with session() as s:
            require_admin(s, request)
            project = service.get_project(s, name)
            count = service.import_margins(
                s, project, service.jsonl_text_rows(upload.jsonl, upload.filename), upload.filename
            )
            s.commit()
            return {"imported": count}

    @app.post("/api/projects/{name}/machine-judgments")
    def import_machine_judgments(name: str, upload: Upload, request: Request):
        with session() as s:
            require_admin(s, request)
            project = service.get_project(s, name)
            result = service.import_judgments(
                s, project, service.jsonl_text_rows(upload.jsonl, upload.filename), upload.filename, upload.kind
            )
            s.commit()
            return result

    @app.get("/api/projects/{name}/annotators")
    def annotators(name: str, request: Request):
        with session() as s:
            require_admin(s, request)
            project = service.get_project(s, name)
            counts = dict(
                s.execute(
                    select(Judgment.annotator_id, func.count())
                    .where(Judgment.project_id == project.id)
                    .group_by(Judgment.annotator_id)
                ).all()
            )
            out = []
            for annotator in s.scalars(
                select(Annotator).where(Annotator.project_id == project.id).order_by(Annotator.id)
            ):
                row = {"name": annotator.name, "kind": annotator.kind, "judgments": counts.get(annotator.id, 0)}
                if annotator.kind == "human":
                    row["calibration"] = service.calibration_status(s, project, annotator)
                out.append(row)
            return out

    @app.post("/api/projects/{name}/annotators", status_code=201)
    def invite(name: str, body: InviteIn, request: Request):
        with session() as s:
            require_admin(s, request)
            project = service.get_project(s, name)
            annotator, token = service.invite(s, project, body.name)
            s.commit()
            path = f"/annotate/{project.name}#token={token}"
            return {
                "name": annotator.name,
                "token": token,
                "path": path,
                "url": str(request.base_url).rstrip("/") + path,
            }

    @app.post("/api/projects/{name}/annotators/{annotator}/revoke")
    def revoke(name: str, annotator: str, request: Request):
        with session() as s:
            require_admin(s, request)
            revoked = service.revoke_annotator(s, service.get_project(s, name), annotator)
            s.commit()
            return {"name": revoked.name, "revoked": True}

    @app.post("/api/projects/{name}/annotators/{annotator}/override")
    def override(name: str, annotator: str, body: OverrideIn, request: Request):
        with session() as s:
            admin = require_admin(s, request)
            project = service.get_project(s, name)
            status = service.override_calibration(s, project, annotator, admin.name, body.reason)
            s.commit()
            return status

    @app.get("/api/projects/{name}/dashboard")
    def dashboard(name: str, request: Request):
        with session() as s:
            require_admin(s, request)
            return service.dashboard(s, service.get_project(s, name))

    @app.get("/api/projects/{name}/judgments")
    def judgments(name: str, request: Request):
        with session() as s:
            require_admin(s, request)
            return service.export_judgments(s, service.get_project(s, name))

    @app.get("/api/projects/{name}/export.jsonl")
    def export(name: str, request: Request):
        with session() as s:
            require_admin(s, request)
            pairs, counts = service.export_preferences(s, service.get_project(s, name))
            body = "".join(json.dumps(record_to_dict(p), ensure_ascii=False, allow_nan=False) + "\n" for p in pairs)
            return Response(
                body,
                media_type="application/x-ndjson",
                headers={
                    "X-Export-Counts": json.dumps(counts),
                    "Content-Disposition": f'attachment; filename="{name}-preferences.jsonl"',
                },
            )

    # ------------------------------------------------------------------------- admin or annotator
    @app.get("/api/projects/{name}")
    def project(name: str, request: Request):
        with session() as s:
            token = _bearer(request)
            if service.admin_for_token(s, token) is not None:
                return service.project_view(service.get_project(s, name))
            _, project = require_annotator(s, request, name)
            return service.project_view(project)

    # -------------------------------------------------------------------------------------- annotator
    @app.get("/api/projects/{name}/me")
    def me(name: str, request: Request):
        with session() as s:
            annotator, project = require_annotator(s, request, name)
            return {
                "name": annotator.name,
                "project": service.project_view(project),
                "calibration": service.calibration_status(s, project, annotator),
                "progress": service.annotator_progress(s, project, annotator),
            }

    @app.post("/api/projects/{name}/next")
    def next_item(name: str, request: Request):
        with session() as s:
            annotator, project = require_annotator(s, request, name)
            result = service.next_assignment(s, project, annotator)
            s.commit()
            return result

    @app.get("/api/projects/{name}/assignments/{assignment_id}")
    def assignment(name: str, request: Request, assignment_id: int = AssignmentId):
        with session() as s:
            annotator, project = require_annotator(s, request, name)
            item = service.get_own_assignment(s, annotator, assignment_id)
            return service.assignment_view(item, s.get(Pair, item.pair_id), project)

    @app.post("/api/projects/{name}/assignments/{assignment_id}/judgment")
    def submit(name: str, body: JudgmentIn, request: Request, assignment_id: int = AssignmentId) -> dict[str, Any]:
        with session() as s:
            annotator, project = require_annotator(s, request, name)
            try:
                result = service.submit_judgment(
                    s,
                    project,
                    annotator,
                    assignment_id,
                    body.choice,
                    body.rationale,
                    body.criteria,
                    max_rationale=app.state.max_rationale,
                )
                s.commit()
            except IntegrityError:
                # the same assignment submitted twice at once: the other request stored it; answer as it did
                s.rollback()
                stored = service.existing_judgment(s, assignment_id)
                if stored is None:
                    raise
                result = service.judgment_response(stored)
            return result

    @app.get("/api/projects/{name}/my-judgments")
    def my_judgments(name: str, request: Request):
        with session() as s:
            annotator, _ = require_annotator(s, request, name)
            return service.own_judgments(s, annotator)

    return app


SERVE_ENV = "RLHFKIT_ANNOTATE_SERVE"


def app_from_environment() -> FastAPI:
    """The app of one `rlhfkit annotate serve --workers N` worker process: the store and limits come from the
    environment variable SERVE_ENV (JSON, set by the serve command), the schema is already upgraded."""
    settings = json.loads(os.environ[SERVE_ENV])
    database = open_database(settings.pop("db"), connections=settings.pop("connections"))
    return create_app(database, **settings)


def serve_in_background(
    db: str, port: int | None = None, timeout: float = 60.0, workers: int = 1
) -> tuple[subprocess.Popen, str]:
    """Start `rlhfkit annotate serve --db DB [--workers N]` as a child process on 127.0.0.1 (a free port unless given)
    and wait until /healthz answers; returns (the process, its base URL). For scripts and tests; stop it with
    terminate() or kill()."""
    import httpx

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit.cli", "annotate", "serve", "--db", db, "--port", str(port)]
        + (["--workers", str(workers)] if workers > 1 else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AnnotateError(
                f"the annotation server exited with status {process.returncode}: "
                f"{process.stderr.read().decode(errors='replace')[-2000:]}"
            )
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AnnotateError(f"the annotation server did not answer on {base} within {timeout:.0f} s")
