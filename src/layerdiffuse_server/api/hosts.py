"""Which fal service a request is for, whichever way the client reached us.

fal spreads its API over four hosts (``fal.run``, ``queue.fal.run``, ``rest.fal.ai``,
``v3.fal.media``); we serve all four from one listener under internal prefixes ``/run``,
``/queue``, ``/rest`` and ``/cdn``. A request finds its service by, in order:

1. the ``x-fal-target-url`` header on ``/api/fal/proxy`` (the JS client's ``proxyUrl`` mode, the
   protocol of fal's own server proxy);
2. a path prefix (``FAL_RUN_HOST=host:8443/run``, ``FAL_QUEUE_RUN_HOST=host:8443/queue``);
3. the ``Host`` header (DNS or a CONNECT proxy pointing fal's host names, or ``queue.<name>``, at us).

The base URL the client used is kept in ``scope["state"]["fal_base"]`` so the URLs we hand back
(``status_url`` …) lead the client back the same way.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

SERVICES = ("run", "queue", "rest", "cdn")
PROXY_PATH = "/api/fal/proxy"
FAL_HOSTS = {
    "fal.run": "run",
    "queue.fal.run": "queue",
    "rest.fal.ai": "rest",
    "rest.alpha.fal.ai": "rest",
    "v3.fal.media": "cdn",
    "v3b.fal.media": "cdn",
}


def service_for_host(hostname: str | None) -> str | None:
    if not hostname:
        return None
    hostname = hostname.lower()
    if hostname in FAL_HOSTS:
        return FAL_HOSTS[hostname]
    if hostname.startswith("queue."):
        return "queue"
    return None


class FalHostRouting:
    def __init__(self, app: ASGIApp, *, app_owners: tuple[str, ...]) -> None:
        self.app = app
        self.app_owners = app_owners

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        origin = f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}"
        if path == PROXY_PATH:
            target = headers.get("x-fal-target-url")
            parts = urlsplit(target) if target else None
            service = service_for_host(parts.hostname) if parts else None
            if parts is None or service is None:
                await _reject(
                    scope,
                    send,
                    "Invalid request: x-fal-target-url must name a fal.run, queue.fal.run, "
                    "rest.fal.ai or v3.fal.media URL",
                )
                return
            scope = _rewrite(scope, f"/{service}{parts.path or '/'}", parts.query.encode())
            scope["state"]["fal_base"] = f"{parts.scheme}://{parts.netloc}"
        else:
            first = path.split("/", 2)[1] if path.count("/") >= 1 else ""
            if first in SERVICES:
                scope = _rewrite(scope, path, scope.get("query_string", b""))
                scope["state"]["fal_base"] = f"{origin}/{first}"
            else:
                service = service_for_host(urlsplit(f"//{headers.get('host', '')}").hostname)
                if service is None and first in self.app_owners:
                    service = "run"
                if service is not None:
                    scope = _rewrite(scope, f"/{service}{path}", scope.get("query_string", b""))
                scope.setdefault("state", {})["fal_base"] = origin
        await self.app(scope, receive, send)


def _rewrite(scope: Scope, path: str, query: bytes) -> Scope:
    scope = dict(scope)
    scope["path"] = path
    scope["raw_path"] = path.encode()
    scope["query_string"] = query
    scope["state"] = dict(scope.get("state") or {})
    return scope


async def _reject(scope: Scope, send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
