"""fal's queue: submit, status (polled and streamed), result, cancel — under ``/queue/{app id}``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.convertors import PathConvertor, register_url_convertor

from ..endpoints import APP_ID, ENDPOINTS, Endpoint, endpoint_at
from ..errors import NotFoundError
from ..lifecycle import wait_for_change
from ..schemas import LayerDiffusionOutput
from ..store.contracts import ApiKey, CancelOutcome, RequestRecord, RequestState
from .admission import admit_in_lane, endpoint_body_limit
from .bodies import budgeted_json_object
from .errors import error_response, fal_error
from .payloads import (
    CancelAnswer,
    QueueStatus,
    Submitted,
    error_responses,
    request_urls,
    status_document,
    wants_logs,
)
from .services import KeyDep, Services, ServicesDep

router = APIRouter(prefix=f"/queue/{APP_ID}", tags=["queue"])


def input_doc(endpoint: Endpoint) -> dict[str, Any]:
    """The request body of an endpoint, for routes that read it themselves (see app.SELF_READ_BODIES)."""
    schema = {"$ref": f"#/components/schemas/{endpoint.input_model.__name__}"}
    # Text to image needs no body at all (every field has a default); the others need their images.
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": bool(endpoint.path)}}


SUBMIT_DOC = input_doc(ENDPOINTS[0])
LogsQuery = Annotated[str | None, Query(description="1/true to include log lines (0/false without)")]


def fal_base(request: Request) -> str:
    return request.state.fal_base


def result_response(record: RequestRecord) -> JSONResponse:
    """The stored outcome exactly as it was produced: output with 200, or the error status and body."""
    headers = {"x-fal-request-id": record.id}
    if record.error_type:
        headers["X-Fal-Error-Type"] = record.error_type
    if record.error_type == "request_timeout":
        headers["X-Fal-Request-Timeout-Type"] = "user"
    return JSONResponse(record.response, status_code=record.status_code or 500, headers=headers)


async def visible_request(services: Services, key: ApiKey, request_id: str) -> RequestRecord | None:
    return await anyio.to_thread.run_sync(services.manager.visible_to, key, request_id)


def not_found(request_id: str) -> JSONResponse:
    return error_response(NotFoundError(f"Request {request_id} not found"))


async def _submit(
    request: Request, services: Services, key: ApiKey, fal_webhook: str | None, endpoint: Endpoint
) -> JSONResponse:
    async with budgeted_json_object(request, endpoint_body_limit(services, endpoint), services.body_budget()) as raw:
        record = await admit_in_lane(services, key.id, raw, request.headers, endpoint=endpoint, webhook_url=fal_webhook)
    position = await anyio.to_thread.run_sync(services.manager.queue_position, record)
    base = fal_base(request)
    body: dict[str, Any] = {"status": record.state.value, "request_id": record.id, **request_urls(base, record.id)}
    body |= {"queue_position": position if record.state is RequestState.QUEUED else 0, "gateway_request_id": record.id}
    return JSONResponse(body, headers={"x-fal-request-id": record.id})


WebhookQuery = Annotated[
    str | None, Query(max_length=2048, description="URL to POST fal's webhook payload to when the request completes")
]


@router.post(
    "",
    summary="Submit a request to the queue",
    openapi_extra=SUBMIT_DOC,
    response_model=Submitted,
    responses=error_responses(401, 413, 422, 429, 503),
)
async def submit(
    request: Request, services: ServicesDep, key: KeyDep, fal_webhook: WebhookQuery = None
) -> JSONResponse:
    """Queue a request. Input errors surface at result time (status COMPLETED with an error), as on fal."""
    return await _submit(request, services, key, fal_webhook, ENDPOINTS[0])


def _submit_to(endpoint: Endpoint) -> Any:
    async def submit_endpoint(
        request: Request, services: ServicesDep, key: KeyDep, fal_webhook: WebhookQuery = None
    ) -> JSONResponse:
        return await _submit(request, services, key, fal_webhook, endpoint)

    submit_endpoint.__doc__ = f"Queue a request for {endpoint.title.lower()}; status and result as above."
    return submit_endpoint


for _endpoint in ENDPOINTS[1:]:
    router.add_api_route(
        f"/{_endpoint.path}",
        _submit_to(_endpoint),
        methods=["POST"],
        summary=f"Submit: {_endpoint.title.lower()}",
        openapi_extra=input_doc(_endpoint),
        response_model=Submitted,
        responses=error_responses(401, 413, 422, 429, 503),
    )


class _SubmissionPath(PathConvertor):
    """A sub-path that may name an endpoint: none with a ``requests`` segment, which are the request
    routes' (a POST there is a 405 naming their methods, not a submission to an unknown endpoint)."""

    regex = r"(?!(?:[^/]*/)*requests(?:/|$)).+"


register_url_convertor("submission", _SubmissionPath())


@router.post("/{subpath:submission}", include_in_schema=False)
async def submit_subpath(
    subpath: str, request: Request, services: ServicesDep, key: KeyDep, fal_webhook: WebhookQuery = None
) -> JSONResponse:
    return await _submit(request, services, key, fal_webhook, endpoint_at(subpath))


@router.get(
    "/requests/{request_id}/status",
    summary="Status of a request",
    response_model=QueueStatus,
    responses={202: {"model": QueueStatus, "description": "Queued or running"}, **error_responses(401, 404, 422)},
)
async def status(
    request_id: str, request: Request, services: ServicesDep, key: KeyDep, logs: LogsQuery = None
) -> JSONResponse:
    """202 while queued or in progress, 200 when completed; ``?logs=1`` includes the log lines."""
    record = await visible_request(services, key, request_id)
    if record is None:
        return not_found(request_id)
    document, _ = await anyio.to_thread.run_sync(_document, services, record, fal_base(request), wants_logs(logs), 0)
    code = 200 if record.state is RequestState.COMPLETED else 202
    return JSONResponse(document, status_code=code, headers={"x-fal-request-id": record.id})


def _document(
    services: Services, record: RequestRecord, base: str, with_logs: bool, after_seq: int
) -> tuple[dict[str, Any], int]:
    """The status document (logs after ``after_seq`` only) and the last log sequence number in it."""
    position = services.manager.queue_position(record) if record.state is RequestState.QUEUED else None
    logs = services.manager.logs(record.id, after_seq) if with_logs else None
    last_seq = logs[-1].seq if logs else after_seq
    return status_document(record, base, queue_position=position, logs=logs), last_seq


STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: one `data:` status document (`QueueStatus`, with only the log "
        "lines that are new) per change, `COMPLETED` last; `: keep-alive` comments between",
        # Before OpenAPI 3.2 (and its itemSchema), the schema of an event stream is that of each event.
        "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/QueueStatus"}}},
    },
    **error_responses(401, 404, 422),
}


@router.get(
    "/requests/{request_id}/status/stream",
    summary="Status of a request as server-sent events",
    response_class=StreamingResponse,
    responses=STREAM_DOC,
)
async def status_stream(
    request_id: str, request: Request, services: ServicesDep, key: KeyDep, logs: LogsQuery = None
) -> Response:
    """One event per change carrying only new log lines; the stream ends after the COMPLETED event."""
    record = await visible_request(services, key, request_id)
    if record is None:
        return not_found(request_id)
    return StreamingResponse(
        _status_events(services, request_id, fal_base(request), wants_logs(logs)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "x-fal-request-id": request_id},
    )


async def _status_events(services: Services, request_id: str, base: str, with_logs: bool) -> AsyncIterator[str]:
    """Events until COMPLETED; when the server stops, the stream ends at the drain deadline with the
    status as it stands (the request itself lives on in the queue)."""
    keepalive = services.settings.sse_keepalive_seconds
    last_log_seq = 0
    last_sent: tuple[Any, ...] | None = None
    last_write = time.monotonic()
    async with services.events.watch(request_id) as changed:
        while True:
            record = await anyio.to_thread.run_sync(services.manager.get, request_id)
            if record is None:  # deleted by retention while streaming
                return
            document, seq = await anyio.to_thread.run_sync(_document, services, record, base, with_logs, last_log_seq)
            new_logs, last_log_seq = seq != last_log_seq, seq
            fingerprint = (record.state, document.get("queue_position"))
            if new_logs or fingerprint != last_sent:
                yield f"data: {json.dumps(document)}\n\n"
                last_sent, last_write = fingerprint, time.monotonic()
            if record.state is RequestState.COMPLETED or services.draining.expired():
                return
            if time.monotonic() - last_write >= keepalive:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
            await wait_for_change(changed, services.draining.timeout(min(services.events.poll_seconds, keepalive)))


@router.get(
    "/requests/{request_id}",
    summary="Result of a completed request",
    response_model=LayerDiffusionOutput,
    responses=error_responses(400, 401, 404, 422, 499, 500, 503, 504),
)
async def result(request_id: str, services: ServicesDep, key: KeyDep) -> JSONResponse:
    """The output (200), or the error the request ended with (its own status and body)."""
    record = await visible_request(services, key, request_id)
    if record is None:
        return not_found(request_id)
    if record.state is not RequestState.COMPLETED:
        return fal_error(400, "Request is still in progress", "bad_request", **{"x-fal-request-id": record.id})
    return result_response(record)


@router.put(
    "/requests/{request_id}/cancel",
    summary="Cancel a request",
    status_code=202,
    response_model=CancelAnswer,
    responses={
        400: {"model": CancelAnswer, "description": "Already completed"},
        404: {"model": CancelAnswer, "description": "Not found (or another key's)"},
        **error_responses(401),
    },
)
async def cancel(request_id: str, services: ServicesDep, key: KeyDep) -> JSONResponse:
    """A queued request never runs; a running one stops between denoising steps."""
    record = await visible_request(services, key, request_id)
    if record is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    outcome = await anyio.to_thread.run_sync(services.manager.cancel, request_id)
    if outcome is CancelOutcome.ALREADY_COMPLETED:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
    if outcome is CancelOutcome.NOT_FOUND:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)


# The request routes under each endpoint's sub-path as well (``…/image-to-image/requests/{id}/status``):
# the clients use the app id's, but a URL written by hand with the endpoint in it gets the same answer.
for _endpoint in ENDPOINTS[1:]:
    for _path, _handler, _method in (
        ("/requests/{request_id}/status", status, "GET"),
        ("/requests/{request_id}/status/stream", status_stream, "GET"),
        ("/requests/{request_id}", result, "GET"),
        ("/requests/{request_id}/cancel", cancel, "PUT"),
    ):
        router.add_api_route(f"/{_endpoint.path}{_path}", _handler, methods=[_method], include_in_schema=False)
