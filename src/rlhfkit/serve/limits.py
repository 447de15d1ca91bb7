"""Per-key rate limits (the `limits` package, moving windows in memory) and the request body size limit.

Two limits per key: requests, and tokens. A request is charged its prompt tokens plus the max_tokens it asked for
when it arrives (what it may use), so it is refused before any work is done; the 429 says which limit and carries
`Retry-After`, the seconds until the window has room again. The counts live in the server's memory: a restart
starts them afresh, and each server of several counts on its own.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from .config import parse_limit
from .store import ServeError


class RateLimits:
    def __init__(self, requests: str | None, tokens: str | None):
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.defaults = {"requests": requests, "tokens": tokens}
        self.items: dict[str, RateLimitItem | None] = {}

    def item(self, text: str | None) -> RateLimitItem | None:
        if text not in self.items:
            self.items[text] = parse_limit(text) if text else None
        return self.items[text]

    def charge(self, who: str, tokens: int, requests_limit: str | None, tokens_limit: str | None) -> None:
        """Count one request of `tokens` tokens against `who`'s limits (the key's own, else the config's), or raise a
        429 ServeError naming the limit and when to retry. A request refused by either limit is charged nothing."""
        checks = [
            ("requests", self.item(requests_limit or self.defaults["requests"]), 1),
            ("tokens", self.item(tokens_limit or self.defaults["tokens"]), tokens),
        ]
        for kind, item, cost in checks:
            if item is None:
                continue
            if cost > item.amount:
                raise ServeError(
                    f"this request needs {cost} tokens (prompt plus max_tokens) and the key's limit is {item}; "
                    "ask for fewer max_tokens",
                    status=400,
                    param="max_tokens",
                    code=kind,
                )
            if not self.limiter.test(item, kind, who, cost=cost):
                stats = self.limiter.get_window_stats(item, kind, who)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise ServeError(
                    f"rate limit: {item} {'' if kind == 'requests' else 'of tokens '}for this key reached; retry in "
                    f"{wait} s",
                    status=429,
                    code=kind,
                    headers={"Retry-After": str(wait)},
                )
        for kind, item, cost in checks:
            if item is not None:
                self.limiter.hit(item, kind, who, cost=cost)


def body_limit(max_bytes: int):
    """The gateway's rule for rlhfkit.bodylimit.BodyLimit: one limit, refused with an OpenAI-style error body."""
    detail = f"request body over the limit of {max_bytes} bytes (limits.max_body_bytes sets it)"
    body = {"error": {"message": detail, "type": "invalid_request_error", "param": None, "code": "too_large"}}
    return lambda scope: (max_bytes, body)
