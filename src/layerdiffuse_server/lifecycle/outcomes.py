"""How requests end, as fal reports it: every outcome's HTTP status and body is built here, once.

A request's result replays its outcome exactly (status code and body), and ``error`` /
``error_type`` are what the status document and webhooks report. The bodies are fal's:
``{"detail": [...]}`` for validation, ``{"detail": "...", "error_type": "..."}`` otherwise.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import InvalidInputError, LayerDiffuseError, validation_details
from ..store.contracts import Completion


def error_body(detail: Any, error_type: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": detail}
    if error_type:
        body["error_type"] = error_type
    return body


def _failure(status_code: int, detail: str, error_type: str, *, error: str | None = None) -> Completion:
    return Completion(status_code, error_body(detail, error_type), error=error or detail, error_type=error_type)


def cancelled() -> Completion:
    return _failure(499, "Request was cancelled", "client_cancelled")


def client_disconnected() -> Completion:
    return _failure(499, "The client disconnected; the request was cancelled", "client_disconnected")


def server_stopping() -> Completion:
    """How a sync run still waiting when the server stops is answered (its request is cancelled)."""
    return _failure(503, "The server is shutting down; the request was cancelled", "runner_disconnected")


def timed_out() -> Completion:
    return _failure(504, "Request timed out before it started", "request_timeout", error="Request timed out")


def runner_lost(max_attempts: int) -> Completion:
    return _failure(
        500,
        f"The worker running this request stopped responding {max_attempts} time(s) while it ran alone; "
        "it is not run again.",
        "runner_disconnected",
        error="Runner disconnected",
    )


def internal_error() -> Completion:
    return _failure(500, "Internal error while generating the image", "runner_server_error")


def invalid_input(error: ValidationError) -> Completion:
    """fal's 422 body: a list of ``{loc, msg, type}`` with ``loc`` starting at ``body``."""
    details = validation_details(error.errors(include_url=False), location="body")
    return Completion(422, {"detail": details}, error="Invalid input", error_type="validation_error")


def rejected_input(error: InvalidInputError) -> Completion:
    """An input refused after its schema passed (an image URL that cannot be read), in the same 422 form."""
    loc = [error.location, error.field] if error.field else [error.location]
    details = [{"loc": loc, "msg": error.message, "type": "value_error"}]
    return Completion(422, {"detail": details}, error="Invalid input", error_type="validation_error")


def failed(error: LayerDiffuseError) -> Completion:
    return _failure(error.status_code, error.public_message, error.error_type)


def succeeded(output: dict[str, Any], *, metrics: dict[str, Any], file_ids: list[str]) -> Completion:
    return Completion(200, output, metrics=metrics, file_ids=file_ids)
