"""The gateway's config: routes (local models, run roots that follow their `current` checkpoint, upstream servers,
A/B splits), the rules that choose a route per request, keys and limits, batching, the audit store.

Loaded like a stage config: `rlhfkit.config.load_config(ServeConfig, FILE, ["port=8001", "routes.fast.model=default"])`.
Every key is documented in docs/serving.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import Strict
from ..errors import ConfigError


class SplitSettings(Strict):
    a: str = Field(..., description="route that takes the share 1 - share_b")
    b: str = Field(..., description="route that takes share_b of the requests")
    share_b: float = Field(0.5, ge=0, le=1, description="fixed share of requests sent to b")
    by: Literal["request", "key"] = Field(
        "request",
        description="what the split hashes: the request id (X-Request-Id header, else the response id) or the API key "
        "(every request of a key goes the same way)",
    )


class RouteSettings(Strict):
    model: str | None = Field(
        None,
        description="a local model: an HF model directory, 'default' (the embedded tiny model), or a run root (a "
        "folder with a `current` link or registry.sqlite), whose current checkpoint is served and followed",
    )
    upstream: str | None = Field(
        None,
        description="base URL of an OpenAI-compatible server (vLLM, SGLang, TGI, another rlhfkit serve), ending in /v1",
    )
    upstream_model: str | None = Field(
        None, description="model name sent upstream (default: the name the client asked for)"
    )
    upstream_key_env: str | None = Field(
        None, description="environment variable holding the upstream's API key (sent as a Bearer token)"
    )
    split: SplitSettings | None = Field(None, description="an A/B split between two other routes")

    @model_validator(mode="after")
    def one_kind(self):
        kinds = [k for k in ("model", "upstream", "split") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a route has exactly one of model, upstream or split (this one has {kinds or 'none'})")
        if self.upstream is not None and not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream '{self.upstream}' is not an http:// or https:// URL")
        return self


class RoutingSettings(Strict):
    header: str | None = Field(
        "X-Rlhfkit-Route", description="request header that names a route (null: the header is ignored)"
    )
    tiers: dict[str, str] = Field(
        default_factory=dict, description="API key tier -> route, for requests that ask for the `auto` model"
    )
    risk: str | None = Field(
        None,
        description="risk check as module:function f(prompt_text) -> bool or score, e.g. "
        "rlhfkit.evaluate.safety:is_unsafe; a risky prompt goes to risk_route",
    )
    risk_threshold: float = Field(0.5, description="a score at or above this is risky (a bool True always is)")
    risk_route: str | None = Field(None, description="route for risky prompts (needed with risk)")


class LimitSettings(Strict):
    requests: str | None = Field(
        "120/minute",
        description="requests per key, as the `limits` package reads it ('10/second', '1000/hour'); null: none",
    )
    tokens: str | None = Field(
        "60000/minute",
        description="tokens per key; a request is charged its prompt tokens plus its max_tokens on arrival; null: none",
    )
    max_body_bytes: int = Field(256 * 1024, gt=0, description="largest request body (larger: 413)")
    max_messages: int = Field(64, gt=0, description="most chat messages in one request (more: 400)")
    max_tokens: int = Field(256, gt=0, description="largest max_tokens a request may ask for (more: 400)")
    default_max_tokens: int = Field(64, gt=0, description="max_tokens of a request that gives none")
    max_prompt_chars: int = Field(32000, gt=0, description="longest prompt in characters (longer: 400)")

    @field_validator("requests", "tokens")
    @classmethod
    def parses(cls, value: str | None) -> str | None:
        if value is not None and parse_limit(value) is None:
            raise ValueError(f"'{value}' is not a rate limit like '60/minute' or '10 per second'")
        return value


class BatchSettings(Strict):
    max_batch: int = Field(16, gt=0, description="most requests a local model generates for at once")
    wait_ms: float = Field(5.0, ge=0, description="how long the batcher gathers requests before it starts a batch")


class ServeConfig(Strict):
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    db: str = Field(
        "serve.sqlite", description="audit log and keys: a SQLite file or a database URL (postgresql://...)"
    )
    model: str = Field(
        "runs/demo",
        description="what the route `main` serves when `routes` is empty: a model directory, 'default', or a run root "
        "whose current checkpoint is followed (see routes.NAME.model)",
    )
    routes: dict[str, RouteSettings] = Field(
        default_factory=dict, description="named routes; clients ask for one by its name as the `model`"
    )
    default_route: str | None = Field(None, description="route of `auto` requests no rule picks (default: the first)")
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    require_key: bool = Field(True, description="refuse requests without a valid API key (401)")
    limits: LimitSettings = Field(default_factory=LimitSettings)
    batching: BatchSettings = Field(default_factory=BatchSettings)
    temperature: float = Field(1.0, ge=0, description="sampling temperature of requests that give none")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass of requests that give none")
    seed: int = Field(0, description="seed of each local model's sampler")
    poll_seconds: float = Field(1.0, gt=0, description="how often run roots are checked for a new current checkpoint")
    upstream_timeout: float = Field(120.0, gt=0, description="seconds to wait on an upstream server")
    threads: int | None = Field(
        None, gt=0, description="torch CPU threads of the local models (default: torch's choice); they run on the CPU"
    )

    @model_validator(mode="after")
    def routes_agree(self):
        names = self.route_settings()
        if self.default_route is not None and self.default_route not in names:
            raise ValueError(f"default_route '{self.default_route}' is not a route ({', '.join(names)})")
        named = [("routing.risk_route", self.routing.risk_route)]
        named += [(f"routing.tiers.{tier}", route) for tier, route in self.routing.tiers.items()]
        for name, route in names.items():
            if route.split is not None:
                for side in ("a", "b"):
                    target = getattr(route.split, side)
                    named.append((f"routes.{name}.split.{side}", target))
                    if target in names and names[target].split is not None:
                        raise ValueError(
                            f"routes.{name}.split.{side}: '{target}' is itself a split; splits do not nest"
                        )
        for key, route in named:
            if route is not None and route not in names:
                raise ValueError(f"{key}: '{route}' is not a route ({', '.join(names)})")
        if self.routing.risk and not self.routing.risk_route:
            raise ValueError("routing.risk needs routing.risk_route: where risky prompts go")
        if AUTO in names:
            raise ValueError(f"'{AUTO}' is the name clients use to let the rules choose; name the route otherwise")
        return self

    def route_settings(self) -> dict[str, RouteSettings]:
        """The routes: those configured, or `main` serving `model`."""
        return dict(self.routes) or {"main": RouteSettings(model=self.model)}

    def first_route(self) -> str:
        return self.default_route or next(iter(self.route_settings()))


AUTO = "auto"  # the model name that lets the routing rules choose


def parse_limit(text: str):
    """The `limits` package's item for '60/minute', or None when it does not parse."""
    from limits import parse

    try:
        return parse(text)
    except ValueError:
        return None


def check_limit(text: str | None, option: str) -> str | None:
    """A rate limit string the `limits` package parses, or a ConfigError naming the option."""
    if text is not None and parse_limit(text) is None:
        raise ConfigError(f"{option}: '{text}' is not a rate limit like '60/minute' or '10 per second'")
    return text
