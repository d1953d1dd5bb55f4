"""Errors of the OpenAI Images routes in OpenAI's shape: ``{"error": {message, type, param, code}}``.

The ``openai`` SDKs raise their exception class by the status alone (400 ``BadRequestError``, 401
``AuthenticationError``, 404, 429 ``RateLimitError``, 5xx ``InternalServerError``), so input errors
are 400 here where fal's routes answer 422. ``x-should-retry: false`` keeps the SDKs from retrying
what cannot succeed; a 429 keeps the queue's ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ...errors import InvalidInputError, LayerDiffuseError

#: OpenAI's error ``type`` by status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(Exception):
    """An answer of the OpenAI routes that is not an image: its status, message and the parameter it names."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def error_response(error: OpenAIError, request_id: str | None = None) -> JSONResponse:
    """The JSON answer of an error, with the headers the SDKs read."""
    body = {
        "error": {
            "message": error.message,
            "type": ERROR_TYPES.get(
                error.status_code, "server_error" if error.status_code >= 500 else "invalid_request_error"
            ),
            "param": error.param,
            "code": error.code,
        }
    }
    headers = dict(error.headers)
    if request_id:
        headers["x-request-id"] = request_id
    if error.status_code < 500 and error.status_code not in (408, 409, 429):
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=error.status_code, headers=headers)


def _param_of(location: tuple[Any, ...] | list[Any]) -> str | None:
    names = [str(part) for part in location if part not in ("body", "query")]
    return ".".join(names) if names else None


def from_validation(error: ValidationError, *, params: dict[str, str] | None = None) -> OpenAIError:
    """The first problem of a validation error as a 400; ``params`` renames our fields back to the
    OpenAI parameter they came from (``num_images`` → ``n``)."""
    first = error.errors(include_url=False)[0]
    param = _param_of(first["loc"])
    if first["type"] == "extra_forbidden":
        return bad_request(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    if params and param in params:
        param = params[param]
    return bad_request(f"Invalid '{param}': {first['msg']}." if param else f"{first['msg']}.", param=param)


def from_ours(error: LayerDiffuseError, *, params: dict[str, str] | None = None) -> OpenAIError:
    """One of our errors (the queue is full, a file store away, an unreadable image…) in OpenAI's terms."""
    if isinstance(error, InvalidInputError):
        param = error.field
        if params and param in params:
            param = params[param]
        return bad_request(error.message, param=param)
    status = 400 if error.status_code in (413, 415, 422) else error.status_code
    translated = OpenAIError(status, error.public_message, code=error.error_type or None)
    translated.headers = dict(error.headers)
    return translated


def from_failed_result(status_code: int, response: Any) -> OpenAIError:
    """A request that ended without images (its fal result: ``{"detail": …}``) in OpenAI's terms."""
    detail = response.get("detail") if isinstance(response, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        location = first.get("loc") or []
        return bad_request(str(first.get("msg", "invalid input")), param=_param_of(location))
    message = detail if isinstance(detail, str) else "The image could not be generated."
    code = response.get("error_type") if isinstance(response, dict) else None
    return OpenAIError(400 if status_code == 422 else status_code, message, code=code)
