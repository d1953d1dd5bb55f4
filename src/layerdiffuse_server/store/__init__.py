"""Durable state of the service: the request queue, API keys, stored files, webhook deliveries and
worker heartbeats.

Everything else speaks only to the contracts in :mod:`.contracts` (through the request manager for
requests); :func:`open_store` builds the SQL implementation (SQLite or PostgreSQL) behind them.
"""

from .contracts import (
    ApiKey,
    CancelOutcome,
    Completion,
    FileRecord,
    LogEntry,
    NewRequest,
    Notice,
    NoticeKind,
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
    "Completion",
    "FileRecord",
    "LogEntry",
    "NewRequest",
    "Notice",
    "NoticeKind",
    "RequestRecord",
    "RequestState",
    "Store",
    "WebhookDelivery",
    "WorkerState",
    "WorkerStatus",
    "open_store",
]
