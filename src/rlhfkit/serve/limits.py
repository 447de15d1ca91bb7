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
from starlette.responses import JSONResponse

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


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app reads it."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int, on_refused=None):
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request body over the limit of {self.max_bytes} bytes (limits.max_body_bytes sets it)"
        body = {"error": {"message": detail, "type": "invalid_request_error", "param": None, "code": "too_large"}}
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if self.on_refused:
                self.on_refused()
            return await JSONResponse(body, status_code=413)(scope, receive, send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyLimit.TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyLimit.TooLarge:
            if not started:
                if self.on_refused:
                    self.on_refused()
                await JSONResponse(body, status_code=413)(scope, receive, send)
