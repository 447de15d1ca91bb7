"""The gateway app: `create_app(config)` returns a FastAPI app speaking the OpenAI API over the configured routes.

  POST /v1/chat/completions   POST /v1/completions   (stream: true for server-sent events)
  GET  /v1/models             POST /v1/feedback      POST /admin/reload (admin keys)
  GET  /metrics (Prometheus)  GET  /healthz

Every call but /metrics and /healthz sends `Authorization: Bearer KEY` (keys from `rlhfkit serve keys add`).
Refusals are 4xx with an OpenAI-style body, {"error": {"message", "type", "param", "code"}}, whose message says what
is wrong. Every answered request is in the audit log before its client has the end of the response.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..bodylimit import BodyLimit
from ..errors import RlhfkitError
from ..sqlstore import Database, StoreError, hash_token
from . import store
from .backends import Generation, LocalModel, LocalRoute, SplitRoute, UpstreamRoute
from .config import AUTO, ServeConfig
from .limits import RateLimits, body_limit
from .metrics import Metrics
from .routing import Router
from .store import ApiKey, Entry, Feedback, ServeError

KEY_CACHE_SECONDS = 5.0  # a revoked key stops working within this time
LOCAL_IGNORED = {"user", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "service_tier", "metadata"}


# ------------------------------------------------------------------------------------------------ request bodies


def encodable(text: str) -> str:
    """Text a tokenizer can take: JSON allows lone surrogates (\\ud800), UTF-8 and the tokenizers do not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds an unpaired surrogate at character {exc.start}; send valid Unicode text") from None
    return text


Text = Annotated[str, AfterValidator(encodable)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"] = Field(..., description="only text parts are supported")
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI fields: passed upstream; local routes refuse what they lack
    model: Text = Field(..., min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def prompt(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Sampling):
    prompt: Text | list[Text]

    @model_validator(mode="after")
    def one_prompt(self):
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: give one prompt (a string, or a list of one string)")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str | None = Field(None, max_length=64, description="thumbs: the response rated")
    rating: Literal["up", "down"] | None = Field(None, description="thumbs: up or down")
    chosen: str | None = Field(None, max_length=64, description="choice: the response preferred")
    rejected: str | None = Field(None, max_length=64, description="choice: the other response shown beside it")
    text: Text | None = Field(None, max_length=4000, description="optional comment")

    @model_validator(mode="after")
    def one_kind(self):
        thumbs = self.response_id is not None or self.rating is not None
        choice = self.chosen is not None or self.rejected is not None
        if thumbs == choice:
            raise ValueError("give either response_id and rating (thumbs) or chosen and rejected (a choice)")
        if thumbs and (self.response_id is None or self.rating is None):
            raise ValueError(f"thumbs feedback needs {'rating' if self.rating is None else 'response_id'} too")
        if choice and (self.chosen is None or self.rejected is None):
            raise ValueError(f"a choice needs {'rejected' if self.rejected is None else 'chosen'} too")
        if choice and self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same response")
        return self


# ------------------------------------------------------------------------------------------------ helpers


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
    return {
        "error": {
            "message": message,
            "type": kind.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Decoder:
    """Token ids -> text deltas: the text of all ids so far, less what was sent (a token ending inside a UTF-8
    character waits for the next)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


# ------------------------------------------------------------------------------------------------ the app


class Gateway:
    """The routes, store, limits and metrics behind the app."""

    def __init__(self, config: ServeConfig, database: Database):
        self.config, self.database = config, database
        self.metrics = Metrics()
        self.limits = RateLimits(config.limits.requests, config.limits.tokens)
        self.keys: dict[str, tuple[ApiKey, float]] = {}
        self.routes: dict[str, Any] = {}
        try:
            for name, settings in config.route_settings().items():
                if settings.model is not None:
                    self.routes[name] = LocalRoute(name, settings.model, self.make_model, self.reloaded)
                elif settings.upstream is not None:
                    self.routes[name] = UpstreamRoute(
                        name, settings.upstream, settings.upstream_model, settings.upstream_key_env,
                        config.upstream_timeout,
                    )  # fmt: skip
                else:
                    split = settings.split
                    self.routes[name] = SplitRoute(name, split.a, split.b, split.share_b, split.by)
        except BaseException:
            self.close()
            raise
        splits = {name: r.pick for name, r in self.routes.items() if isinstance(r, SplitRoute)}
        self.router = Router(config, splits)
        self.stop = threading.Event()
        self.poller = threading.Thread(target=self.poll, name="checkpoint poller", daemon=True)

    def make_model(self, path: Path, label: str) -> LocalModel:
        batching = self.config.batching
        return LocalModel(
            path,
            label,
            max_batch=batching.max_batch,
            wait_ms=batching.wait_ms,
            seed=self.config.seed,
            on_batch=lambda size: self.metrics.batch_size.labels(label).observe(size),
        )

    def reloaded(self, route: LocalRoute) -> None:
        self.metrics.reloads.labels(route.name).inc()

    def poll(self) -> None:
        while not self.stop.wait(self.config.poll_seconds):
            self.reload()

    def reload(self) -> list[str]:
        """Check every run-root route now; the names of those that switched checkpoint."""
        return [name for name, r in self.routes.items() if isinstance(r, LocalRoute) and r.check()]

    def checkpoints(self) -> dict[str, str | None]:
        return {name: getattr(r, "checkpoint", None) for name, r in self.routes.items()}

    def close(self) -> None:
        if hasattr(self, "stop"):
            self.stop.set()
        for route in self.routes.values():
            route.close()

    # ------------------------------------------------------------------------------------------ keys

    def authenticate(self, request: Request) -> ApiKey | None:
        """The key of the request (cached a few seconds), None when keys are optional and none was sent."""
        token = bearer(request)
        if token is None:
            if self.config.require_key:
                raise ServeError("missing API key: send the header 'Authorization: Bearer KEY'", status=401)
            return None
        digest = hash_token(token)
        cached = self.keys.get(digest)
        if cached is not None and time.monotonic() - cached[1] < KEY_CACHE_SECONDS:
            return cached[0]
        key = store.find_key(self.database, token)
        if key is None:
            raise ServeError("unknown or revoked API key", status=401, code="invalid_api_key")
        self.keys[digest] = (key, time.monotonic())
        return key


def create_app(config: ServeConfig, database: Database | None = None) -> FastAPI:
    """The app over `config` (its store opened from config.db unless `database` is given); loads the local models
    before it returns."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    own_db = database is None
    database = database or store.open_store(config.db)
    try:
        gateway = Gateway(config, database)
    except BaseException:
        if own_db:
            database.close()
        raise

    @asynccontextmanager
    async def lifespan(_app):
        gateway.poller.start()
        yield
        gateway.close()
        if own_db:
            database.close()

    app = FastAPI(title="rlhfkit serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.gateway = gateway
    metrics = gateway.metrics
    app.add_middleware(
        BodyLimit,
        limit=body_limit(config.limits.max_body_bytes),
        on_refused=lambda: metrics.refused.labels("413").inc(),
    )

    def refusal(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
        if status == 429:
            metrics.rate_limited.labels(code or "requests").inc()
        elif 400 <= status < 500:
            metrics.refused.labels(str(status)).inc()
        return JSONResponse(error_body(message, status, param, code), status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def serve_error(_request: Request, exc: ServeError):
        return refusal(exc.status, str(exc), exc.param, exc.code, exc.headers)

    @app.exception_handler(RlhfkitError)
    async def user_error(_request: Request, exc: RlhfkitError):
        return refusal(exc.status if isinstance(exc, StoreError) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
        if "json" not in request.headers.get("content-type", "") and tuple(first.get("loc", ())) == ("body",):
            return refusal(400, "send the body as JSON, with the header 'Content-Type: application/json'")
        if first.get("type") == "json_invalid":
            return refusal(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})")
        where = field_path(tuple(first.get("loc", ())))
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return refusal(422, f"{where}: {message}{more}", param=where, code=first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return refusal(exc.status_code, message)

    # ------------------------------------------------------------------------------------------ plain routes

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "routes": gateway.checkpoints()}

    @app.get("/metrics")
    def metrics_page():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        await run_in_threadpool(gateway.authenticate, request)
        names = [AUTO, *gateway.routes]
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rlhfkit"} for name in names],
        }

    @app.post("/admin/reload")
    async def reload(request: Request):
        key = await run_in_threadpool(gateway.authenticate, request)
        if key is None or not key.admin:
            raise ServeError("reloading needs an admin key (`rlhfkit serve keys add NAME --admin`)", status=403)
        switched = await run_in_threadpool(gateway.reload)
        return {"switched": switched, "routes": gateway.checkpoints()}

    @app.post("/v1/feedback", status_code=201)
    async def feedback(body: FeedbackIn, request: Request):
        key = await run_in_threadpool(gateway.authenticate, request)
        targets = [body.response_id] if body.response_id else [body.chosen, body.rejected]
        for name, target in zip(("response_id",) if body.response_id else ("chosen", "rejected"), targets):
            entry = await run_in_threadpool(store.get_entry, database, target)
            # another key's responses are as unknown as missing ones
            if entry is None or (key is not None and not key.admin and entry.key_id != key.id):
                raise ServeError(f"{name}: no logged response '{target}'", status=404, param=name)
        row = Feedback(
            entry_id=targets[0],
            kind="thumbs" if body.response_id else "choice",
            rating=body.rating,
            other_id=None if body.response_id else body.rejected,
            text=body.text,
            key_id=key.id if key else None,
        )
        feedback_id = await run_in_threadpool(store.add_feedback, database, row)
        return {"id": feedback_id, "kind": row.kind, "response_id": targets[0]}

    # ------------------------------------------------------------------------------------------ completions

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if len(body.messages) > config.limits.max_messages:
            raise ServeError(
                f"messages: {len(body.messages)} messages, over the limit of {config.limits.max_messages}",
                param="messages",
            )
        return await complete(request, body, "chat.completions", body.prompt())

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await complete(request, body, "completions", body.text())

    async def complete(request: Request, body: Sampling, endpoint: str, prompt: str | list[dict]):
        arrived, created = time.monotonic(), store.utcnow()
        key = await run_in_threadpool(gateway.authenticate, request)
        limits = config.limits
        asked_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        param = "max_tokens" if body.max_tokens else "max_completion_tokens"
        if asked_tokens is not None and asked_tokens > limits.max_tokens:
            raise ServeError(f"{param}: {asked_tokens} is over this server's cap of {limits.max_tokens}", param=param)
        max_tokens = asked_tokens or limits.default_max_tokens
        plain = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        where = "prompt" if isinstance(prompt, str) else "messages"
        if len(plain) > limits.max_prompt_chars:
            raise ServeError(
                f"{where}: {len(plain)} characters, over the limit of {limits.max_prompt_chars}", param=where
            )
        prefix = "chatcmpl-" if endpoint == "chat.completions" else "cmpl-"
        response_id = prefix + uuid.uuid4().hex
        request_id = request.headers.get("x-request-id") or response_id
        header = request.headers.get(config.routing.header) if config.routing.header else None
        choice = await run_in_threadpool(
            gateway.router.choose,
            body.model,
            header,
            key.tier if key else None,
            plain,
            request_id,
            str(key.id) if key else "anonymous",
        )
        route = gateway.routes[choice.route]
        who = str(key.id) if key else "anonymous"
        key_limits = (key.requests_limit, key.tokens_limit) if key else (None, None)
        params = {
            "max_tokens": max_tokens,
            "temperature": config.temperature if body.temperature is None else body.temperature,
            "top_p": config.top_p if body.top_p is None else body.top_p,
        }
        entry = Entry(
            id=response_id,
            created_at=created,
            key_id=key.id if key else None,
            key_name=key.name if key else None,
            route=choice.route,
            endpoint=endpoint,
            stream=body.stream,
            prompt=prompt,
            params={**params, "rule": choice.rule, "asked": choice.asked},
        )
        headers = {"X-Rlhfkit-Route": choice.route}
        if isinstance(route, UpstreamRoute):
            gateway.limits.charge(who, len(plain) // 4 + max_tokens, *key_limits)  # no tokenizer here: ~4 chars a token
            entry.checkpoint = route.checkpoint
            headers["X-Rlhfkit-Checkpoint"] = route.checkpoint
            metrics.in_flight.labels(choice.route).inc()  # down again in finish_entry, whatever the outcome
            request_body = body.model_dump(exclude_none=True)
            if asked_tokens is None:  # the cap holds upstream too: the upstream's own default may be far larger
                request_body["max_tokens"] = max_tokens
            path = "/chat/completions" if endpoint == "chat.completions" else "/completions"
            if body.stream:
                return StreamingResponse(
                    upstream_stream(route, path, request_body, entry, arrived),
                    media_type="text/event-stream",
                    headers=headers,
                )
            return JSONResponse(await upstream_once(route, path, request_body, entry, arrived), headers=headers)
        refuse_unsupported(body, choice.route)
        charged = False
        while True:  # a hot reload may retire the model between rendering and queueing: render again on the new one
            model = route.model
            text = model.render(prompt)
            ids = model.encode(text)
            if not ids:
                raise ServeError(f"{where}: the prompt is empty", param=where)
            if len(ids) + max_tokens > model.context:
                raise ServeError(
                    f"{where}: the prompt is {len(ids)} tokens and max_tokens {max_tokens}; together over this model's "
                    f"context of {model.context} tokens (shorten the prompt or ask for fewer tokens)",
                    param=where,
                    code="context_length_exceeded",
                )
            if not charged:
                gateway.limits.charge(who, len(ids) + max_tokens, *key_limits)
                charged = True
            generation = Generation(ids, max_tokens, params["temperature"], params["top_p"], asyncio.get_running_loop())
            if model.submit(generation):
                metrics.in_flight.labels(choice.route).inc()
                break
        entry.prompt_text, entry.prompt_tokens, entry.checkpoint = text, len(ids), generation.checkpoint
        headers["X-Rlhfkit-Checkpoint"] = generation.checkpoint
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            stream = local_stream(generation, model, entry, endpoint, arrived, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        return JSONResponse(await local_once(generation, model, entry, endpoint, arrived), headers=headers)

    def refuse_unsupported(body: Sampling, route: str) -> None:
        if body.n not in (None, 1):
            raise ServeError(f"n: route '{route}' answers one choice per request (n=1)", param="n")
        for name, value in (body.model_extra or {}).items():
            if name not in LOCAL_IGNORED and value not in (None, False, [], {}):
                raise ServeError(f"{name}: not supported by the local route '{route}'", param=name)

    # ------------------------------------------------------------------------------------------ local answers

    def finish_entry(entry: Entry, arrived: float, first_at: float | None, status: str, error: str | None = None):
        metrics.in_flight.labels(entry.route).dec()
        entry.latency_ms = round((time.monotonic() - arrived) * 1000, 3)
        entry.ttft_ms = None if first_at is None else round((first_at - arrived) * 1000, 3)
        entry.status, entry.error = status, error
        labels = (entry.route, entry.checkpoint)
        metrics.requests.labels(*labels, entry.endpoint, status).inc()
        metrics.tokens.labels(*labels, "prompt").inc(entry.prompt_tokens or 0)
        metrics.tokens.labels(*labels, "completion").inc(entry.completion_tokens or 0)
        metrics.latency.labels(*labels).observe(entry.latency_ms / 1000)
        if first_at is not None:
            metrics.ttft.labels(*labels).observe(entry.ttft_ms / 1000)

    def write_later(entry: Entry) -> None:
        """Log an entry without waiting (a request whose client went away cannot await anything)."""
        threading.Thread(target=store.append, args=(database, entry), daemon=False).start()

    async def local_tokens(generation: Generation, model: LocalModel):
        """Text deltas as the batcher produces them; ends at done, raises a ServeError on a model failure."""
        decoder = Decoder(model.tokenizer)
        while True:
            kind, value = await generation.events.get()
            if kind == "token":
                delta = decoder.add(value)
                if delta:
                    yield delta
            elif kind == "done":
                return
            else:
                raise ServeError(value, status=503)

    def local_entry(generation: Generation, entry: Entry, text: str) -> None:
        entry.response, entry.token_ids = text, list(generation.token_ids)
        entry.completion_tokens = len(generation.token_ids)
        entry.finish_reason = generation.finish_reason

    def usage(entry: Entry) -> dict:
        total = entry.prompt_tokens + entry.completion_tokens
        return {
            "prompt_tokens": entry.prompt_tokens,
            "completion_tokens": entry.completion_tokens,
            "total_tokens": total,
        }

    async def local_once(generation: Generation, model: LocalModel, entry: Entry, endpoint: str, arrived: float):
        try:
            text = "".join([delta async for delta in local_tokens(generation, model)])
        except ServeError as exc:
            local_entry(generation, entry, "")
            finish_entry(entry, arrived, generation.first_token_at, "error", str(exc))
            await run_in_threadpool(store.append, database, entry)
            raise
        except asyncio.CancelledError:
            generation.cancelled = True
            local_entry(generation, entry, "")
            finish_entry(entry, arrived, generation.first_token_at, "cancelled")
            write_later(entry)
            raise
        local_entry(generation, entry, text)
        finish_entry(entry, arrived, generation.first_token_at, "ok")
        await run_in_threadpool(store.append, database, entry)  # on disk before the client has the answer
        return answer(entry, endpoint, text, generation.finish_reason)

    def answer(entry: Entry, endpoint: str, text: str, finish_reason: str | None) -> dict:
        if endpoint == "chat.completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        return {
            "id": entry.id,
            "object": "chat.completion" if endpoint == "chat.completions" else "text_completion",
            "created": int(entry.created_at.timestamp()),
            "model": entry.route,
            "system_fingerprint": entry.checkpoint,
            "choices": [{**choice, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(entry),
        }

    def chunk(entry: Entry, endpoint: str, delta: str | None, finish_reason: str | None = None, first=False) -> dict:
        if endpoint == "chat.completions":
            content = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": content}
        else:
            choice = {"index": 0, "text": delta or ""}
        return {
            "id": entry.id,
            "object": "chat.completion.chunk" if endpoint == "chat.completions" else "text_completion",
            "created": int(entry.created_at.timestamp()),
            "model": entry.route,
            "system_fingerprint": entry.checkpoint,
            "choices": [{**choice, "finish_reason": finish_reason, "logprobs": None}],
        }

    async def local_stream(generation, model, entry: Entry, endpoint: str, arrived: float, include_usage: bool):
        pieces, logged = [], False
        try:
            if endpoint == "chat.completions":
                yield sse(chunk(entry, endpoint, None, first=True))
            try:
                async for delta in local_tokens(generation, model):
                    pieces.append(delta)
                    yield sse(chunk(entry, endpoint, delta))
            except ServeError as exc:
                local_entry(generation, entry, "".join(pieces))
                finish_entry(entry, arrived, generation.first_token_at, "error", str(exc))
                logged = True  # before the await: a cancelled task's write still finishes in its thread
                await run_in_threadpool(store.append, database, entry)
                yield sse(error_body(str(exc), 503))
                return
            local_entry(generation, entry, "".join(pieces))
            finish_entry(entry, arrived, generation.first_token_at, "ok")
            logged = True
            await run_in_threadpool(store.append, database, entry)  # committed before the client sees the end
            yield sse(chunk(entry, endpoint, None, generation.finish_reason))
            if include_usage:
                yield sse({**chunk(entry, endpoint, None), "choices": [], "usage": usage(entry)})
            yield sse("[DONE]")
        finally:
            if not logged:  # the client went away mid-stream: stop generating, log what was sent
                generation.cancelled = True
                local_entry(generation, entry, "".join(pieces))
                finish_entry(entry, arrived, generation.first_token_at, "cancelled")
                write_later(entry)

    # ------------------------------------------------------------------------------------------ upstream answers

    def upstream_entry(entry: Entry, text: str, usage_row: dict | None, finish_reason: str | None, pieces: int):
        entry.response, entry.token_ids, entry.finish_reason = text, None, finish_reason
        entry.prompt_tokens = int((usage_row or {}).get("prompt_tokens") or 0)
        entry.completion_tokens = int((usage_row or {}).get("completion_tokens") or pieces)

    async def upstream_once(route: UpstreamRoute, path: str, body: dict, entry: Entry, arrived: float) -> dict:
        try:
            data = await route.complete(path, body)
            try:
                first = (data.get("choices") or [{}])[0]
                text = (first.get("message") or {}).get("content") if "message" in first else first.get("text")
            except (AttributeError, TypeError, IndexError) as exc:
                raise ServeError(f"upstream {route.url} answered an unexpected body ({exc})", status=502) from None
        except ServeError as exc:
            upstream_entry(entry, "", None, None, 0)
            finish_entry(entry, arrived, None, "error", str(exc))
            await run_in_threadpool(store.append, database, entry)
            raise
        except asyncio.CancelledError:
            upstream_entry(entry, "", None, None, 0)
            finish_entry(entry, arrived, None, "cancelled")
            write_later(entry)
            raise
        upstream_entry(entry, text or "", data.get("usage"), first.get("finish_reason"), 0)
        finish_entry(entry, arrived, None, "ok")
        await run_in_threadpool(store.append, database, entry)
        return {**data, "id": entry.id}

    async def upstream_stream(route: UpstreamRoute, path: str, body: dict, entry: Entry, arrived: float):
        pieces, first_at, finish_reason, usage_row, logged = [], None, None, None, False
        try:
            try:
                async for part in route.stream(path, body):
                    for choice in part.get("choices") or []:
                        delta = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
                        if delta:
                            first_at = first_at or time.monotonic()
                            pieces.append(delta)
                        finish_reason = choice.get("finish_reason") or finish_reason
                    usage_row = part.get("usage") or usage_row
                    yield sse({**part, "id": entry.id})
            except ServeError as exc:
                upstream_entry(entry, "".join(pieces), usage_row, finish_reason, len(pieces))
                finish_entry(entry, arrived, first_at, "error", str(exc))
                logged = True
                await run_in_threadpool(store.append, database, entry)
                yield sse(error_body(str(exc), exc.status))
                return
            upstream_entry(entry, "".join(pieces), usage_row, finish_reason, len(pieces))
            finish_entry(entry, arrived, first_at, "ok")
            logged = True
            await run_in_threadpool(store.append, database, entry)
            yield sse("[DONE]")
        finally:
            if not logged:
                upstream_entry(entry, "".join(pieces), usage_row, finish_reason, len(pieces))
                finish_entry(entry, arrived, first_at, "cancelled")
                write_later(entry)

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_in_background(
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    port: int | None = None,
    env: dict | None = None,
    timeout: float = 120.0,
) -> tuple[subprocess.Popen, str]:
    """Start `rlhfkit serve --config CONFIG OVERRIDES port=PORT` as a child process on 127.0.0.1 (a free port unless
    given) and wait until /healthz answers; returns (the process, its base URL, without /v1). For scripts and tests;
    stop it with terminate() or kill()."""
    import tempfile

    import httpx

    port = port or free_port()
    command = [sys.executable, "-m", "rlhfkit.cli", "serve"]
    command += ["--config", str(config)] if config else []
    command += [*(overrides or []), "host=127.0.0.1", f"port={port}"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the server runs) not a pipe: a server that writes much to stderr must never block on it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise ServeError(
                f"the gateway exited with status {process.returncode}: {log.read().decode(errors='replace')[-2000:]}",
                status=503,
            )
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise ServeError(f"the gateway did not answer on {base} within {timeout:.0f} s", status=503)
