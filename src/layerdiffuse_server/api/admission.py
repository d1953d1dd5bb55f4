"""Turning an HTTP call into a queued request: platform headers, webhook target, queue limit, input check.

Input errors of a queued request are recorded as its outcome (status COMPLETED with a 422 result),
as fal's queue does; the sync run answers them at once.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import Headers

from ..errors import InvalidInputError, LayerDiffuseError
from ..schemas import LayerDiffusionInput
from ..store.contracts import Completion, NewRequest, Priority, RequestRecord
from ..webhooks.targets import check_webhook_url
from ..worker.generation_worker import validation_completion
from .services import APP_ID, Services


class QueueFullError(LayerDiffuseError):
    """The queue is full; try again later."""

    status_code = 429
    error_type = "rate_limited"


class ModelUnavailableError(LayerDiffuseError):
    """The model could not be loaded."""

    status_code = 503
    error_type = "runner_scheduling_failure"


def parse_priority(headers: Headers) -> Priority:
    value = headers.get("x-fal-queue-priority", "normal").strip().lower()
    try:
        return Priority[value]
    except KeyError:
        raise InvalidInputError(
            f"must be 'normal' or 'low', got {value!r}", field="x-fal-queue-priority", location="header"
        ) from None


def parse_start_deadline(headers: Headers, now: float) -> float | None:
    value = headers.get("x-fal-request-timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidInputError(
            f"must be a positive number of seconds, got {value!r}", field="x-fal-request-timeout", location="header"
        )
    return now + seconds


def validate_input(raw: dict[str, Any]) -> Completion | None:
    """None when the input is valid, else the 422 outcome the request ends with."""
    try:
        LayerDiffusionInput.model_validate(raw)
    except ValidationError as error:
        return validation_completion(error)
    return None


def admit(
    services: Services,
    key_id: str,
    raw_input: dict[str, Any],
    headers: Headers,
    *,
    webhook_url: str | None = None,
    invalid_input: Completion | None = None,
    mode: str = "queue",
) -> RequestRecord:
    """Store a new request (queued, or already completed when its input is invalid)."""
    now = time.time()
    request = NewRequest(
        id=str(uuid.uuid4()),
        app_id=APP_ID,
        key_id=key_id,
        input=raw_input,
        priority=parse_priority(headers),
        webhook_url=check_webhook_url(webhook_url, services.webhook_networks) if webhook_url else None,
        start_deadline=parse_start_deadline(headers, now),
    )
    if invalid_input is None:
        worker = services.worker
        if worker is not None and worker.load_error is not None:
            raise ModelUnavailableError(f"the model failed to load, so nothing can run: {worker.load_error}")
        depth = sum(services.store.requests.queue_depth().values())
        if depth >= services.settings.max_queue_length:
            raise QueueFullError(f"the queue holds {depth} requests, the limit of this server; retry later")
    record = services.store.requests.create(request, now, completion=invalid_input)
    services.metrics.submitted.labels(mode).inc()
    if invalid_input is None:
        if services.worker is not None:
            services.worker.wake()
    else:
        services.request_finished(record.id)
    return record
