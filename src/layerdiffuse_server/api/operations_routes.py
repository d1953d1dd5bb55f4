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


@router.get(
    "/readyz",
    summary="Ready for work: the store and file store are writable (and this process's model loaded)",
    responses={503: {"description": "Not ready; `problems` says why"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """503 while something this process needs is missing: the database or the file store, and in the
    embedded mode the model (until it has loaded, or for good, with the reason, if it failed to).
    An API node without a worker is ready without a model: requests wait for workers in the queue."""
    worker = services.local_worker
    names = ["database", "files"]
    problems: dict[str, str] = {}
    if worker is not None:
        names.insert(0, "model")
        if worker.load_error is not None:
            problems["model"] = f"failed to load: {worker.load_error}"
        elif not worker.ready:
            problems["model"] = "loading"
    if services.draining.started:
        problems["shutdown"] = "this process is stopping"
        names.append("shutdown")
    for name, check in (("database", services.store.check_writable), ("files", services.blobs.check_writable)):
        try:
            await anyio.to_thread.run_sync(check)
        except Exception as error:
            problems[name] = f"not writable: {error}"
    checks = {name: name not in problems for name in names}
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
