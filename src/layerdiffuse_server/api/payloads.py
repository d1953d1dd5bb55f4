"""Reading request bodies and writing fal's queue documents (submit, status, log entries)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from ..errors import InvalidInputError
from ..store.contracts import LogEntry, RequestRecord, RequestState
from .services import APP_ID

MAX_BODY_BYTES = 1 * 2**20


async def read_json_object(request: Request) -> dict[str, Any]:
    """The JSON object in the body; an empty body is ``{}`` (the JS client sends none without input)."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInputError(f"request body larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("the body must be a JSON object with the endpoint's input fields")
    return value


def request_urls(fal_base: str, request_id: str) -> dict[str, str]:
    root = f"{fal_base}/{APP_ID}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def utc_stamp(timestamp: float, timespec: str = "milliseconds") -> str:
    """ISO 8601 in UTC with a ``Z``, as fal writes its timestamps."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def log_json(entry: LogEntry) -> dict[str, str]:
    return {"message": entry.message, "level": entry.level, "source": "USER", "timestamp": utc_stamp(entry.timestamp)}


def status_document(
    record: RequestRecord, fal_base: str, *, queue_position: int | None, logs: list[LogEntry] | None
) -> dict[str, Any]:
    """A status in the only shape both clients parse: three states, ``logs`` always present."""
    document: dict[str, Any] = {
        "status": record.state.value,
        "request_id": record.id,
        **request_urls(fal_base, record.id),
        "logs": [log_json(entry) for entry in logs] if logs is not None else None,
    }
    if record.state is RequestState.QUEUED:
        document["queue_position"] = queue_position or 0
    if record.state is RequestState.COMPLETED:
        document["metrics"] = record.metrics or {}
        if record.error is not None:
            document["error"] = record.error
            document["error_type"] = record.error_type
    return document


def wants_logs(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")
