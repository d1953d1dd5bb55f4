"""Probes and metrics for orchestrators and Prometheus; no API key, nothing secret in them."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..observability.metrics import CONTENT_TYPE
from .services import ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready for work: the model is loaded and the store is writable")
async def readyz(services: ServicesDep) -> JSONResponse:
    """503 until the model has loaded (or forever, with the reason, if it failed to)."""
    worker = services.worker
    problems: dict[str, str] = {}
    if worker is None:
        problems["model"] = "this process runs no worker"
    elif worker.load_error is not None:
        problems["model"] = f"failed to load: {worker.load_error}"
    elif not worker.ready:
        problems["model"] = "loading"
    try:
        await anyio.to_thread.run_sync(services.store.check_writable)
    except Exception as error:
        problems["database"] = f"not writable: {error}"
    if not await anyio.to_thread.run_sync(services.blobs.writable):
        problems["files"] = "the file store is not writable"
    checks = {name: name not in problems for name in ("model", "database", "files")}
    body: dict[str, object] = {"status": "not ready" if problems else "ready", "checks": checks}
    if problems:
        body["problems"] = problems
    if worker is not None:
        body["worker"] = {"id": worker.worker_id, "state": worker.state.value, "model": worker.model_name}
    return JSONResponse(body, status_code=503 if problems else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    body = await anyio.to_thread.run_sync(services.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE)
