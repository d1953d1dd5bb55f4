"""fal's queue documents (submit, status, log entries, cancel) and error bodies, as pydantic models
that the OpenAPI document publishes, plus the functions that write them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..endpoints import APP_ID
from ..store.contracts import LogEntry, RequestRecord, RequestState

QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class ErrorBody(BaseModel):
    """Every error but input validation: fal's request-error shape."""

    detail: str
    error_type: str | None = None


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class ValidationErrorBody(BaseModel):
    """422: what is wrong with which field (``loc`` starts at ``body``, ``query`` or ``header``)."""

    detail: list[ValidationProblem]


class LogLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    level: str
    source: Literal["USER"] = "USER"
    timestamp: str = Field(description="ISO 8601, UTC")


class RequestUrls(BaseModel):
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str


class Submitted(RequestUrls):
    status: QueueState
    queue_position: int
    gateway_request_id: str


class QueueStatus(RequestUrls):
    """202 while queued or running, 200 once completed (then ``error`` tells a failure). The same
    document is each event of the status stream."""

    model_config = ConfigDict(extra="forbid")  # what is sent is exactly what is documented

    status: QueueState
    logs: list[LogLine] | None = Field(description="Present (null without ?logs=1): fal_client needs the key")
    queue_position: int | None = Field(default=None, description="Requests ahead of this one (IN_QUEUE only)")
    metrics: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None


class CancelAnswer(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for fal-format errors with these status codes."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model = ValidationErrorBody if code == 422 else ErrorBody
        documented[code] = {"model": model, "description": _ERROR_DESCRIPTIONS.get(code, "Error")}
    return documented


_ERROR_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid API key",
    403: "Forbidden",
    404: "Not found (or another key's)",
    413: "Body too large",
    415: "Content type not accepted",
    422: "Invalid input",
    429: "Queue full (see Retry-After)",
    499: "Cancelled",
    500: "Failed while running",
    503: "Unavailable (model not loaded, store unreachable, shutting down)",
    504: "Timed out before it started",
}


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
