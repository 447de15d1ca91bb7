"""Which route answers a request. The first rule that applies wins:

1. the route header (routing.header, `X-Rlhfkit-Route` by default) names a route;
2. the request's `model` names a route;
3. (`model: auto`) the risk check (routing.risk, a `module:function` on the prompt text) finds the prompt risky:
   routing.risk_route;
4. (`model: auto`) the key's tier has a route in routing.tiers;
5. default_route (the first route when unset).

A split route then sends each request to one of its two routes, by a hash of the request id or of the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..scoring import load_scorer
from .config import AUTO, ServeConfig
from .store import ServeError


@dataclass(frozen=True)
class Choice:
    route: str  # the route that answers
    asked: str  # the route chosen before any split
    rule: str  # header, model, risk, tier or default


class Router:
    def __init__(self, config: ServeConfig, splits: dict[str, Callable[[str, str], str]]):
        self.config = config
        self.names = list(config.route_settings())
        self.splits = splits  # route name -> pick(request_id, key_id)
        self.risk = load_scorer(config.routing.risk, option="routing.risk") if config.routing.risk else None

    def is_risky(self, prompt_text: str) -> bool:
        try:
            verdict = self.risk(prompt_text)
        except Exception as exc:  # a failing check is the check's problem; say so instead of failing the request
            raise ServeError(
                f"routing.risk {self.config.routing.risk} failed on this prompt: {exc}", status=503
            ) from None
        if isinstance(verdict, bool):
            return verdict
        return float(verdict) >= self.config.routing.risk_threshold

    def choose(
        self, model: str, header: str | None, tier: str | None, prompt_text: str, request_id: str, key_id: str
    ) -> Choice:
        rules = self.config.routing
        if header is not None:
            if header not in self.names:
                raise ServeError(
                    f"header {rules.header}: '{header}' is not a route; routes: {', '.join(self.names)}",
                    status=404,
                    param=rules.header,
                    code="model_not_found",
                )
            asked, rule = header, "header"
        elif model != AUTO:
            if model not in self.names:
                raise ServeError(
                    f"model '{model}' does not exist here; models: {', '.join([AUTO, *self.names])}",
                    status=404,
                    param="model",
                    code="model_not_found",
                )
            asked, rule = model, "model"
        elif self.risk is not None and self.is_risky(prompt_text):
            asked, rule = rules.risk_route, "risk"
        elif tier is not None and tier in rules.tiers:
            asked, rule = rules.tiers[tier], "tier"
        else:
            asked, rule = self.config.first_route(), "default"
        route = self.splits[asked](request_id, key_id) if asked in self.splits else asked
        return Choice(route, asked, rule)
