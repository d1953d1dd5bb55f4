"""``create_app(services)``: the FastAPI application and the background work that lives with it
(webhook delivery, housekeeping, and in the embedded mode the worker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .. import __version__
from ..command_name import command
from ..endpoints import APP_ID, ENDPOINTS
from ..store.contracts import Notice, NoticeKind
from . import (
    docs_routes,
    gallery_routes,
    info_routes,
    operations_routes,
    playground_routes,
    queue_routes,
    run_routes,
    storage_routes,
)
from .access_log import AccessLog
from .errors import install_error_handlers
from .hosts import FalHostRouting
from .openai_images import router as openai_router
from .security_headers import SecurityHeaders
from .services import Services, ServicesDep

logger = logging.getLogger(__name__)

DESCRIPTION = f"""Self-hosted **{APP_ID}**: SDXL + LayerDiffuse, prompt → transparent RGBA PNG.

Speaks fal's protocol, so the official clients (`fal-client`, `@fal-ai/client`) work unmodified.
Every API route needs `Authorization: Key <key id>:<secret>` (create keys with `{command("keys create")}`).
OpenAI's Images API is served under `/v1` for the unmodified `openai` SDKs (`base_url=<server>/v1`): the
same keys, sent as `Authorization: Bearer <key id>:<secret>`.
The run and queue routes are also reachable under fal's host names (`Host: fal.run`, `queue.fal.run`,
`rest.fal.ai`, `v3.fal.media`) and through `/api/fal/proxy` with an `x-fal-target-url` header.
"""


def begin_drain(services: Services) -> None:
    """The first moment of a graceful stop: waiting answers get ``shutdown_grace_seconds``, and this
    process's worker claims nothing more and starts its own stop at once, beside the connections'
    (the app's shutdown waits for it), so the whole stop keeps the same bound."""
    if services.draining.started:
        return
    grace = services.settings.shutdown_grace_seconds
    logger.info("stopping: waiting answers and the running batch get %.0f s", grace)
    services.draining.begin(grace)
    services.events.wake_all()
    if services.local_worker is not None:
        services.local_worker.begin_stop()
        threading.Thread(target=services.local_worker.stop, args=(grace,), name="worker-stop", daemon=True).start()


async def _housekeeping(services: Services) -> None:
    while True:
        await anyio.to_thread.run_sync(services.housekeeper.tick)
        await asyncio.sleep(services.housekeeper.interval)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    services.events.bind(asyncio.get_running_loop())
    tasks = [asyncio.create_task(_housekeeping(services), name="housekeeping")]
    unsubscribe = None
    deliverer = services.deliverer
    if deliverer is not None:

        def completed(notice: Notice) -> None:
            if notice.kind in (NoticeKind.COMPLETED, NoticeKind.RESYNC):
                deliverer.wake()

        unsubscribe = services.manager.subscribe(completed)
        tasks.append(asyncio.create_task(deliverer.run(), name="webhooks"))
    if services.local_worker is not None:
        services.local_worker.start()
    try:
        yield
    finally:
        begin_drain(services)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if unsubscribe is not None:
            unsubscribe()
        if services.local_worker is not None:
            await anyio.to_thread.run_sync(services.local_worker.stop, services.draining.timeout(float("inf")))
        services.events.close()


#: Bodies that routes read themselves (strictly, see :mod:`.bodies`), so FastAPI does not see them.
SELF_READ_BODIES: tuple[type[BaseModel], ...] = (
    *(endpoint.input_model for endpoint in ENDPOINTS),
    storage_routes.InitiateUpload,
)


def checkpoint_choices(field: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The ``model_name`` field's schema with the operator's checkpoints as its choices (none listed: only null),
    so that clients generated from the document offer what the server takes."""
    choices: list[dict[str, Any]] = [{"type": "string", "enum": names}] if names else []
    return {key: value for key, value in field.items() if key != "anyOf"} | {"anyOf": [*choices, {"type": "null"}]}


def _openapi_with_body_schemas(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the schemas of the bodies the routes refer to by ``$ref``."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        checkpoints = sorted(app.state.services.settings.checkpoints)
        for model in SELF_READ_BODIES:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            if "model_name" in schema.get("properties", {}):
                schema["properties"]["model_name"] = checkpoint_choices(schema["properties"]["model_name"], checkpoints)
            schemas[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title=APP_ID,
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,  # served by docs_routes, from local files
        redoc_url=None,
    )
    app.state.services = services
    app.openapi = lambda: _openapi_with_body_schemas(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    app.include_router(run_routes.router)
    app.include_router(queue_routes.router)
    app.include_router(storage_routes.router)
    app.include_router(gallery_routes.router)
    app.include_router(operations_routes.router)
    app.include_router(info_routes.router)
    app.include_router(openai_router)
    playground_routes.mount(app, services)
    docs_routes.mount(app)

    @app.get("/.well-known/jwks.json", tags=["webhooks"], summary="Public keys that sign webhooks")
    async def jwks(services: ServicesDep) -> JSONResponse:
        return JSONResponse(services.signing_keys.jwks(), headers={"Cache-Control": "public, max-age=3600"})

    app.add_middleware(FalHostRouting, app_owners=(APP_ID.split("/")[0],))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type", "x-request-id"],
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AccessLog)
    return app
