"""The synchronous run (``fal.run`` / ``fal_client.run``): queued like any request, answered when done.

Going through the queue keeps one GPU worker in charge of ordering, priorities and cancellation;
the HTTP call only waits. A client that hangs up cancels its request.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from ..schemas import LayerDiffusionInput, LayerDiffusionOutput
from .admission import admit
from .errors import fal_error
from .queue_routes import result_response, wait_until_completed
from .services import APP_ID, KeyDep, ServicesDep

router = APIRouter(prefix=f"/run/{APP_ID}", tags=["run"])

InputBody = Annotated[LayerDiffusionInput | None, Body()]


async def _run(request: Request, services: ServicesDep, key: KeyDep, body: LayerDiffusionInput | None) -> JSONResponse:
    raw_input = body.model_dump(mode="json", exclude_unset=True) if body is not None else {}
    record = await anyio.to_thread.run_sync(lambda: admit(services, key.id, raw_input, request.headers, mode="sync"))
    final = await wait_until_completed(services, record.id, request)
    if final is None:
        return fal_error(499, "The client disconnected; the request was cancelled", "client_disconnected")
    return result_response(final)


@router.post(
    "",
    summary="Generate a transparent image and wait for it",
    responses={200: {"model": LayerDiffusionOutput}},
)
async def run(request: Request, services: ServicesDep, key: KeyDep, body: InputBody = None) -> JSONResponse:
    """Run the model and answer with its output; invalid input is answered with 422 at once."""
    return await _run(request, services, key, body)


@router.post("/{subpath:path}", include_in_schema=False)
async def run_subpath(
    subpath: str, request: Request, services: ServicesDep, key: KeyDep, body: InputBody = None
) -> JSONResponse:
    return await _run(request, services, key, body)
