"""Turning an HTTP call into a request for the manager: fal's platform headers and the webhook target.

Input errors of a queued request are recorded as its outcome (status COMPLETED with a 422 result),
as fal's queue does; the sync run answers them at once.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.datastructures import Headers

from ..errors import InvalidInputError
from ..lifecycle import Submission
from ..store.contracts import Priority, RequestRecord
from ..webhooks.targets import check_webhook_url
from .services import APP_ID, Services


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
    if not 0 < seconds < 10**9:
        raise InvalidInputError(
            f"must be a positive number of seconds, got {value!r}", field="x-fal-request-timeout", location="header"
        )
    return now + seconds


def admit(
    services: Services,
    key_id: str,
    raw_input: dict[str, Any],
    headers: Headers,
    *,
    webhook_url: str | None = None,
    mode: str = "queue",
) -> RequestRecord:
    """Store a new request (queued, or already completed when its input is invalid). Blocking:
    the webhook target is resolved, and the store written."""
    submission = Submission(
        key_id=key_id,
        app_id=APP_ID,
        input=raw_input,
        priority=parse_priority(headers),
        webhook_url=check_webhook_url(webhook_url, services.webhook_networks) if webhook_url is not None else None,
        start_deadline=parse_start_deadline(headers, time.time()),
    )
    record = services.manager.submit(submission)
    services.metrics.submitted.labels(mode).inc()
    return record
