"""Durable state of the service: the request queue, API keys, stored files, webhook deliveries and
worker heartbeats.

The API layer and the worker speak only to the contracts in :mod:`.contracts`; :func:`open_store`
builds the SQL implementation (SQLite embedded, any SQLAlchemy URL later) behind them.
"""

from .contracts import (
    ApiKey,
    CancelOutcome,
    FileRecord,
    LogEntry,
    NewRequest,
    RequestRecord,
    RequestState,
    Store,
    WebhookDelivery,
    WorkerState,
    WorkerStatus,
)
from .database import open_store

__all__ = [
    "ApiKey",
    "CancelOutcome",
    "FileRecord",
    "LogEntry",
    "NewRequest",
    "RequestRecord",
    "RequestState",
    "Store",
    "WebhookDelivery",
    "WorkerState",
    "WorkerStatus",
    "open_store",
]
