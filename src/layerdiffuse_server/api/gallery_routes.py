"""The caller's recent requests, newest first: the playground's gallery, and a way back to a request
whose id was lost. Not part of fal's protocol (fal keeps request history in its dashboard)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..store.contracts import RequestRecord
from .payloads import error_responses, request_urls, utc_stamp
from .services import KeyDep, ServicesDep

router = APIRouter(tags=["requests"])


class RequestSummary(BaseModel):
    request_id: str
    endpoint_id: str = Field(description="The endpoint it was sent to, e.g. fal-ai/layer-diffusion/image-to-image")
    status: str = Field(description="IN_QUEUE, IN_PROGRESS or COMPLETED")
    created_at: str
    completed_at: str | None
    input: dict[str, Any]
    status_code: int | None = Field(description="The result's HTTP status once completed (200 for an image)")
    output: dict[str, Any] | None = Field(description="The result body of a successful request")
    error: str | None
    status_url: str
    response_url: str
    cancel_url: str


class RequestList(BaseModel):
    requests: list[RequestSummary]


def summary(record: RequestRecord, queue_base: str) -> RequestSummary:
    succeeded = record.status_code == 200
    return RequestSummary(
        request_id=record.id,
        endpoint_id=record.app_id,
        status=record.state.value,
        created_at=utc_stamp(record.created_at, "seconds"),
        completed_at=utc_stamp(record.completed_at, "seconds") if record.completed_at is not None else None,
        input=record.input,
        status_code=record.status_code,
        output=record.response if succeeded else None,
        error=record.error,
        **request_urls(queue_base, record.id),
    )


@router.get(
    "/api/requests",
    summary="This key's recent requests, newest first",
    response_model=RequestList,
    responses=error_responses(401, 422),
)
async def recent_requests(
    request: Request, services: ServicesDep, key: KeyDep, limit: Annotated[int, Query(ge=1, le=200)] = 24
) -> RequestList:
    records = await anyio.to_thread.run_sync(services.manager.recent, key.id, limit)
    queue_base = f"{str(request.base_url).rstrip('/')}/queue"
    return RequestList(requests=[summary(record, queue_base) for record in records])
