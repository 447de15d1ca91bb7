"""One ASGI middleware for the apps (the annotation app, the gateway): a request body over its limit gets 413
before the app reads it, whether the client announced its length or streams it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse


class BodyLimit:
    """`limit(scope) -> (max bytes, the 413 body)` decides per request; `on_refused()` is told of each refusal."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: Callable[[dict], tuple[int, dict[str, Any]]], on_refused=None):
        self.app, self.limit, self.on_refused = app, limit, on_refused

    async def refuse(self, body: dict, scope, receive, send) -> None:
        if self.on_refused:
            self.on_refused()
        await JSONResponse(body, status_code=413)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes, body = self.limit(scope)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return await self.refuse(body, scope, receive, send)
        received = 0
        started = refused = False

        async def counted_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # answer now: the app turns a failed body read into its own 400, which tracked_send then drops
                    if not started and not refused:
                        refused = True
                        await self.refuse(body, scope, receive, send)
                    raise BodyLimit.TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyLimit.TooLarge:
            if not started and not refused:
                await self.refuse(body, scope, receive, send)
