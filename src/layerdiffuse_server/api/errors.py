"""Every error leaves the API in fal's format, translated here and nowhere else.

- validation: 422 ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``;
- everything else: ``{"detail": "...", "error_type": "..."}`` plus an ``X-Fal-Error-Type`` header.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import InvalidInputError, LayerDiffuseError, validation_details
from ..lifecycle.outcomes import error_body
from ..store.contracts import Completion

logger = logging.getLogger(__name__)

ERROR_TYPES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    409: "bad_request",
    413: "bad_request",
    415: "bad_request",
    429: "rate_limited",
}


def fal_error(status_code: int, detail: Any, error_type: str | None = None, **headers: str) -> JSONResponse:
    if error_type:
        headers = {"X-Fal-Error-Type": error_type, **headers}
    return JSONResponse(error_body(detail, error_type), status_code=status_code, headers=headers)


def error_response(error: LayerDiffuseError) -> JSONResponse:
    """An error of the tree as a route answers it without raising it (a 404 of the queue or of a
    file, say): what the handler answers for every error but :class:`InvalidInputError`, whose
    422 lists the fields."""
    return fal_error(error.status_code, error.public_message, error.error_type, **error.headers)


def ending_response(completion: Completion) -> JSONResponse:
    """A request's failed ending (see :mod:`..lifecycle.outcomes`) answered by the route that waited
    for it, with the status and body its stored result has."""
    headers = {"X-Fal-Error-Type": completion.error_type} if completion.error_type else {}
    return JSONResponse(completion.response, status_code=completion.status_code, headers=headers)


#: The methods a 405's ``Allow`` may name.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` of a 405: each method some route takes at this path. (Starlette names the
    methods of the first route whose path matches, though another route may take the same path.)"""
    routes = request.app.router.routes
    allowed = [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidInputError)
    async def _invalid_input(_request: Request, error: InvalidInputError) -> JSONResponse:
        loc = [error.location, error.field] if error.field else [error.location]
        return fal_error(422, [{"loc": loc, "msg": error.message, "type": "value_error"}])

    @app.exception_handler(LayerDiffuseError)
    async def _ours(_request: Request, error: LayerDiffuseError) -> JSONResponse:
        if error.public_message != error.message:
            logger.warning("%s: %s", type(error).__name__, error.message)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        return fal_error(422, validation_details(list(error.errors())))

    @app.exception_handler(ValidationError)
    async def _body_model(_request: Request, error: ValidationError) -> JSONResponse:
        return fal_error(422, validation_details(error.errors(include_url=False), location="body"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = ERROR_TYPES_BY_STATUS.get(error.status_code)
        headers = dict(error.headers or {})
        if error.status_code == 405 and (allowed := allowed_methods(request)):
            # The app's routes by the whole path; a mounted app (static files) set its own already.
            headers["Allow"] = allowed
        return fal_error(error.status_code, error.detail, error_type, **headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=error)
        return fal_error(500, "Internal server error", "internal_error")
