"""One log line per HTTP request, with the fal request id it created or touched.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so streaming responses pass straight through;
the line is written once the response is sent (for an SSE stream: when the stream ends).
Probes, scrapes and status polls (``fal_client`` polls ten times a second) are logged at DEBUG.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import request_id_context
from .hosts import PROXY_PATH

logger = logging.getLogger("layerdiffuse.access")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/requests"})
_REQUEST_ID_IN_PATH = re.compile(r"/requests/([0-9a-fA-F-]{8,64})(?:/|$)")


def is_routine(method: str, path: str) -> bool:
    return path in QUIET_PATHS or (method == "GET" and path.endswith("/status"))


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        if path == PROXY_PATH:  # the JS client's proxy mode: the fal URL it means is in a header
            target = Headers(scope=scope).get("x-fal-target-url")
            path = urlsplit(target).path if target else path
        match = _REQUEST_ID_IN_PATH.search(path)
        request_id = match.group(1) if match else None
        status = 500

        async def send_and_log(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = Headers(raw=message.get("headers", [])).get("x-fal-request-id") or request_id
            await send(message)

        with request_id_context(request_id):
            try:
                await self.app(scope, receive, send_and_log)
            finally:
                level = logging.DEBUG if is_routine(scope["method"], path) else logging.INFO
                logger.log(
                    level,
                    "%s %s %d %.1f ms",
                    scope["method"],
                    path,
                    status,
                    (time.perf_counter() - started) * 1000,
                    extra={"request_id": request_id},
                )
