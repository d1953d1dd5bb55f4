"""``create_app(services)``: the FastAPI application and the background tasks that live with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from .. import __version__
from ..retention import run_retention
from . import gallery_routes, operations_routes, playground_routes, queue_routes, run_routes, storage_routes
from .access_log import AccessLog
from .errors import install_error_handlers
from .hosts import FalHostRouting
from .services import APP_ID, Services, ServicesDep

DESCRIPTION = f"""Self-hosted **{APP_ID}**: SDXL + LayerDiffuse, prompt → transparent RGBA PNG.

Speaks fal's protocol, so the official clients (`fal-client`, `@fal-ai/client`) work unmodified.
Every API route needs `Authorization: Key <key id>:<secret>` (create keys with `layerdiffuse keys create`).
The run and queue routes are also reachable under fal's host names (`Host: fal.run`, `queue.fal.run`,
`rest.fal.ai`, `v3.fal.media`) and through `/api/fal/proxy` with an `x-fal-target-url` header.
"""


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    services.events.bind(asyncio.get_running_loop())
    tasks = []
    if services.worker is not None:
        services.worker.start()
    if services.deliverer is not None:
        tasks.append(asyncio.create_task(services.deliverer.run(), name="webhooks"))
    tasks.append(asyncio.create_task(run_retention(services), name="retention"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if services.worker is not None:
            await asyncio.to_thread(services.worker.stop)


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title=APP_ID,
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(run_routes.router)
    app.include_router(queue_routes.router)
    app.include_router(storage_routes.router)
    app.include_router(gallery_routes.router)
    app.include_router(operations_routes.router)
    playground_routes.mount(app, services)

    @app.get("/.well-known/jwks.json", tags=["webhooks"], summary="Public keys that sign webhooks")
    async def jwks(services: ServicesDep) -> JSONResponse:
        return JSONResponse(services.signing_key.jwks(), headers={"Cache-Control": "public, max-age=3600"})

    app.add_middleware(FalHostRouting, app_owners=(APP_ID.split("/")[0],))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type"],
    )
    app.add_middleware(AccessLog)
    return app
