"""The playground: a static page at ``/`` that talks to the queue API like any other client."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .services import APP_ID, Services

ASSETS = files("layerdiffuse_server") / "playground"


def mount(app: FastAPI, services: Services) -> None:
    """``/`` serves the page with this server's facts filled in (the https port for the Python snippet)."""
    https_port = str(services.settings.tls_port or "")
    page = (
        (ASSETS / "index.html")
        .read_text(encoding="utf-8")
        .replace("{{APP_ID}}", APP_ID)
        .replace("{{HTTPS_PORT}}", https_port)
    )

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.mount("/playground", StaticFiles(directory=str(ASSETS)), name="playground")
