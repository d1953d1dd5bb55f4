"""Process logs: plain text for a terminal, or one JSON object per line for a log pipeline.

Every line carries the id of the request it is about (``request_id``), set by the worker while it
runs a request and by the access log for API calls, so one request's story can be pulled out of
the logs of a whole fleet.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


@contextlib.contextmanager
def request_id_context(request_id: str | None) -> Iterator[None]:
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (the one in context unless the call passed its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [{request_id}]" if request_id else line


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    return TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def configure_logging(log_format: LogFormat = "text", level: str = "info") -> dict[str, Any]:
    """Route our loggers and uvicorn's through one handler on stderr; returns uvicorn's ``log_config``.

    uvicorn's own access log is replaced by :class:`~layerdiffuse_server.api.access_log.AccessLog`,
    which knows the request id.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Libraries that narrate their routine at INFO: their warnings still come through. uvicorn's
    # startup and shutdown lines too (one per listener); the service says what it does itself.
    for noisy in ("httpx", "httpcore", "alembic", "botocore", "boto3", "urllib3", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return {"version": 1, "disable_existing_loggers": False}
