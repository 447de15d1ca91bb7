"""`rlhfkit serve ...`: run the gateway, read its audit log, manage its API keys.

`rlhfkit serve [--config FILE] [key=value ...]` runs the server (it is `rlhfkit serve start`); `rlhfkit serve log`
prints the audit log; `rlhfkit serve keys add|list|revoke` manages keys. FastAPI, torch and uvicorn are imported
inside the commands so `rlhfkit --help` stays fast.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer
from typer.core import TyperGroup

from ..errors import ConfigError


class StartByDefault(TyperGroup):
    """`rlhfkit serve ARGS` is `rlhfkit serve start ARGS` unless ARGS starts with a subcommand or asks for help."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=StartByDefault,
    help="The OpenAI-compatible gateway: local checkpoints or upstream servers, keys, limits, audit log, metrics.",
)
keys_app = typer.Typer(help="API keys of the gateway (stored as hashes; a key is shown once).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DbOpt = typer.Option("serve.sqlite", "--db", help="the gateway's store: SQLite file or database URL")
STAGE = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=STAGE, epilog="Override any key after the options: port=8001 routes.fast.model=default")
def start(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (keys: docs/serving.md)"),
):
    """Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /v1/feedback, /metrics)."""
    import uvicorn

    from ..config import load_config
    from ..sqlstore import shown_url
    from .app import create_app
    from .config import ServeConfig

    settings = load_config(ServeConfig, config, list(ctx.args))
    application = create_app(settings)
    routes = ", ".join(f"{name} ({cp})" for name, cp in application.state.gateway.checkpoints().items())
    typer.echo(
        f"serving on http://{settings.host}:{settings.port}/v1 (routes: {routes}; log: "
        f"{shown_url(application.state.gateway.database.url)})",
        err=True,
    )
    uvicorn.run(application, host=settings.host, port=settings.port, log_level="warning")


def moment(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 date or time (UTC unless it says), or a duration back from now: 30m, 2h, 7d."""
    if text is None:
        return None
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if relative:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[relative.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: float(relative.group(1))})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option} '{text}': give an ISO date or time (2026-12-01T09:30) or a duration (30m, 2h, 7d)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@app.command()
def log(
    db: str = DbOpt,
    since: str | None = typer.Option(None, "--since", help="from this time (ISO 8601, UTC) or this long ago (2h)"),
    until: str | None = typer.Option(None, "--until", help="before this time, same forms"),
    route: str | None = typer.Option(None, "--route", help="only this route"),
    key: str | None = typer.Option(None, "--key", help="only this key (its name)"),
    limit: int = typer.Option(20, "--limit", min=1, help="the newest N entries"),
    format: str = typer.Option("table", "--format", help="table, or json (one entry a line, every field)"),
):
    """The audit log: every request with its route, checkpoint, prompt, generated tokens and latency."""
    from . import store

    if format not in ("table", "json"):
        raise ConfigError(f"--format '{format}': expected table or json")
    database = store.open_store(db)
    rows = store.entries(
        database, moment(since, "--since"), moment(until, "--until"), route=route, key=key, limit=limit
    )
    database.close()
    if format == "json":
        for row in rows:
            typer.echo(json.dumps(store.entry_dict(row), ensure_ascii=False))
        return
    typer.echo(format_entries(rows))


def format_entries(rows) -> str:
    if not rows:
        return "no entries"
    table = [("time (UTC)", "id", "key", "route", "checkpoint", "tokens", "ms", "status", "response")]
    for e in rows:
        response = e.response.replace("\n", " ")
        table.append(
            (
                e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                e.id,
                e.key_name or "-",
                e.route,
                e.checkpoint if len(e.checkpoint) <= 40 else "..." + e.checkpoint[-37:],
                f"{e.prompt_tokens}+{e.completion_tokens}",
                f"{e.latency_ms:.0f}",
                e.status,
                response if len(response) <= 40 else response[:37] + "...",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


@keys_app.command("add")
def keys_add(
    name: str = typer.Argument(..., help="who the key is for; unique"),
    tier: str = typer.Option("default", "--tier", help="routing tier (routing.tiers maps tiers to routes)"),
    requests: str | None = typer.Option(None, "--requests", help="this key's request limit, e.g. 10/minute"),
    tokens: str | None = typer.Option(None, "--tokens", help="this key's token limit, e.g. 5000/minute"),
    admin: bool = typer.Option(False, "--admin", help="may call /admin/reload and rate any response"),
    db: str = DbOpt,
):
    """Create an API key and print it, once (only its hash is stored)."""
    from . import store
    from .config import check_limit

    check_limit(requests, "--requests")
    check_limit(tokens, "--tokens")
    database = store.open_store(db)
    key = store.add_key(database, name, tier, requests=requests, tokens=tokens, admin=admin)
    database.close()
    typer.echo(f"key for '{name}' (tier {tier}{', admin' if admin else ''}; shown once, stored only as a hash):")
    typer.echo(key)


@keys_app.command("list")
def keys_list(db: str = DbOpt):
    """Every key: name, tier, limits, whether revoked (never the key itself)."""
    from . import store

    database = store.open_store(db)
    rows = store.list_keys(database)
    database.close()
    if not rows:
        typer.echo("no keys; `rlhfkit serve keys add NAME` makes one")
    for k in rows:
        limits = f"requests {k.requests_limit or 'config'}, tokens {k.tokens_limit or 'config'}"
        flags = (", admin" if k.admin else "") + (", REVOKED" if k.revoked else "")
        typer.echo(f"{k.name}  {k.prefix}...  tier {k.tier}  {limits}{flags}")


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(..., help="the key's name"), db: str = DbOpt):
    """Revoke a key (a running server refuses it within 5 seconds)."""
    from . import store

    database = store.open_store(db)
    store.revoke_key(database, name)
    database.close()
    typer.echo(f"key '{name}' revoked")
