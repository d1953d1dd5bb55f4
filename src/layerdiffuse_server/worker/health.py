"""A worker process's own small HTTP face: liveness, readiness and its Prometheus metrics, on a port
of its own (``--port``), for the orchestrator that runs it. No API here: clients talk to API nodes."""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..files import BlobStore
from ..observability import Metrics
from ..observability.metrics import CONTENT_TYPE
from ..store.contracts import Store
from .generation_worker import GenerationWorker


def create_health_app(worker: GenerationWorker, store: Store, blobs: BlobStore, metrics: Metrics) -> Starlette:
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        problems: dict[str, str] = {}
        if worker.load_error is not None:
            problems["model"] = f"failed to load: {worker.load_error}"
        elif not worker.ready:
            problems["model"] = "loading"
        if worker.stopped:
            problems["worker"] = "stopped"
        for name, check in (("database", store.check_writable), ("files", blobs.check_writable)):
            try:
                await anyio.to_thread.run_sync(check)
            except Exception as error:
                problems[name] = f"not writable: {error}"
        body: dict[str, object] = {
            "status": "not ready" if problems else "ready",
            "worker": {"id": worker.worker_id, "state": worker.state.value, "model": worker.model_name},
        }
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=503 if problems else 200)

    async def metrics_page(_request: Request) -> Response:
        return Response(await anyio.to_thread.run_sync(metrics.exposition), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_page)])
