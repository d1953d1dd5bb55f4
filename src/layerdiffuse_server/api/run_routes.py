"""The synchronous run (``fal.run`` / ``fal_client.run``): queued like any request, answered when done.

Going through the queue keeps the workers in charge of ordering, priorities and cancellation; the
HTTP call only waits. A client that hangs up cancels its request. When the server stops, a run
still waiting at the drain deadline is cancelled and answered 503, since nobody could fetch its
result once this connection is gone.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..endpoints import APP_ID, ENDPOINTS, Endpoint, endpoint_at
from ..lifecycle import outcomes, wait_for_change
from ..schemas import LayerDiffusionOutput
from ..store.contracts import RequestRecord, RequestState
from .admission import admit_in_lane, endpoint_body_limit
from .bodies import budgeted_json_object
from .errors import ending_response
from .payloads import error_responses
from .queue_routes import SUBMIT_DOC, input_doc, result_response
from .services import KeyDep, Services, ServicesDep

router = APIRouter(prefix=f"/run/{APP_ID}", tags=["run"])


async def _admit(request: Request, services: Services, key_id: str, endpoint: Endpoint) -> RequestRecord:
    """The admitted request (invalid input raises its 422 now, and nothing is stored); its input as
    received (inline images and all) is let go of here, not kept for the whole wait."""
    async with budgeted_json_object(request, endpoint_body_limit(services, endpoint), services.body_budget()) as raw:
        return await admit_in_lane(services, key_id, raw, request.headers, endpoint=endpoint, mode="sync")


async def _run(request: Request, services: Services, key_id: str, endpoint: Endpoint) -> JSONResponse:
    record = await _admit(request, services, key_id, endpoint)
    final = await wait_for_result(services, record, request)
    if final is None:
        return ending_response(outcomes.client_disconnected())
    if final.state is not RequestState.COMPLETED:
        return ending_response(outcomes.server_stopping())
    return result_response(final)


async def wait_for_result(services: Services, record: RequestRecord, request: Request) -> RequestRecord | None:
    """The request once completed; None if the client went away (the request is then cancelled).

    While the server drains, the wait ends at the deadline, or at once when this process's own
    worker has stopped and the request is still queued (nothing here will run it); the request is
    cancelled and returned as it stands.
    """
    request_id = record.id
    async with services.events.watch(request_id, logs=False) as changed:
        while True:
            current = await anyio.to_thread.run_sync(services.manager.get, request_id)
            if current is None or current.state is RequestState.COMPLETED:
                return current
            if await request.is_disconnected():
                await anyio.to_thread.run_sync(services.manager.cancel, request_id, outcomes.client_disconnected())
                return None
            worker = services.local_worker
            stranded = worker is not None and worker.stopped and current.state is RequestState.QUEUED
            if services.draining.expired() or (services.draining.started and stranded):
                await anyio.to_thread.run_sync(services.manager.cancel, request_id)
                return current
            await wait_for_change(changed, services.draining.timeout(services.events.poll_seconds))


@router.post(
    "",
    summary="Generate a transparent image and wait for it",
    openapi_extra=SUBMIT_DOC,
    response_model=LayerDiffusionOutput,
    responses=error_responses(401, 413, 422, 429, 500, 503, 504),
)
async def run(request: Request, services: ServicesDep, key: KeyDep) -> JSONResponse:
    """Run the model and answer with its output; invalid input is answered with 422 at once."""
    return await _run(request, services, key.id, ENDPOINTS[0])


def _run_at(endpoint: Endpoint) -> Any:
    async def run_endpoint(request: Request, services: ServicesDep, key: KeyDep) -> JSONResponse:
        return await _run(request, services, key.id, endpoint)

    run_endpoint.__doc__ = (
        f"{endpoint.title}, answered when done; invalid input (or an unreadable image) is a 422 at once."
    )
    return run_endpoint


for _endpoint in ENDPOINTS[1:]:
    router.add_api_route(
        f"/{_endpoint.path}",
        _run_at(_endpoint),
        methods=["POST"],
        summary=_endpoint.title,
        openapi_extra=input_doc(_endpoint),
        response_model=LayerDiffusionOutput,
        responses=error_responses(401, 413, 422, 429, 500, 503, 504),
    )


@router.post("/{subpath:path}", include_in_schema=False)
async def run_subpath(subpath: str, request: Request, services: ServicesDep, key: KeyDep) -> JSONResponse:
    """The app's other endpoints (``…/image-to-image`` and the conditioned layers); see endpoints.py."""
    return await _run(request, services, key.id, endpoint_at(subpath))
