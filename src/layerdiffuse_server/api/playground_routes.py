"""The playground: a static page at ``/`` that talks to the queue API like any other client.

The page keeps an API key in the browser, so it runs under a strict Content-Security-Policy: its
own script and style only (no inline code, no eval), images and downloads only from this origin,
the public file URL's origin and, when files are served by redirect, the object store's.
"""

from __future__ import annotations

import html
from importlib.resources import files
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..command_name import command_name
from ..endpoints import APP_ID
from .services import Services

ASSETS = files("layerdiffuse_server") / "playground"


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def content_security_policy(services: Services) -> str:
    file_origins = ["'self'", _origin(services.base_url), _origin(services.files_url)]
    if services.settings.file_delivery == "redirect":
        sample = services.blobs.presigned_url(
            "csp-origin-probe", file_name="x.png", content_type="image/png", expires_seconds=60
        )
        file_origins.append(_origin(sample))
    sources = " ".join(dict.fromkeys(origin for origin in file_origins if origin))
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {sources} data: blob:",
            f"connect-src {sources}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def mount(app: FastAPI, services: Services) -> None:
    """``/`` serves the page with this server's facts filled in (the https port for the Python snippet, how
    to type the command on this host)."""
    https_port = str(services.settings.tls_port or "")
    page = (
        (ASSETS / "index.html")
        .read_text(encoding="utf-8")
        .replace("{{APP_ID}}", APP_ID)
        .replace("{{HTTPS_PORT}}", https_port)
        .replace("{{COMMAND}}", html.escape(command_name()))
    )
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": content_security_policy(services)}

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    app.mount("/playground", StaticFiles(directory=str(ASSETS)), name="playground")
