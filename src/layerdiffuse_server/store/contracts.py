"""What the API and the worker need from durable storage, independent of the database behind it.

A request moves IN_QUEUE → IN_PROGRESS → COMPLETED, exactly the three states fal's clients know;
a failed or cancelled request is COMPLETED with an error, stored as data (status code + body), so
its result can be served again after a restart exactly as it was the first time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol


class RequestState(StrEnum):
    QUEUED = "IN_QUEUE"
    RUNNING = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(IntEnum):
    """Lower runs first; the names are fal's ``X-Fal-Queue-Priority`` values."""

    normal = 0
    low = 1


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # was queued: completed now, will never run
    REQUESTED = "requested"  # is running: the worker stops at the next denoising step
    ALREADY_COMPLETED = "already_completed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class NewRequest:
    id: str
    app_id: str
    key_id: str
    input: dict[str, Any]
    priority: Priority = Priority.normal
    webhook_url: str | None = None
    start_deadline: float | None = None  # unix time; after it a still-queued request times out


@dataclass(frozen=True)
class RequestRecord:
    id: str
    seq: int
    app_id: str
    key_id: str
    state: RequestState
    priority: Priority
    input: dict[str, Any]
    created_at: float
    started_at: float | None
    completed_at: float | None
    start_deadline: float | None
    attempts: int
    cancel_requested: bool
    webhook_url: str | None
    status_code: int | None
    response: Any
    error: str | None
    error_type: str | None
    metrics: dict[str, Any] | None
    worker_id: str | None = None


@dataclass(frozen=True)
class Completion:
    """How a request ended: the HTTP status and body its result returns, forever."""

    status_code: int
    response: Any
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] | None = None
    file_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status_code == 200


@dataclass(frozen=True)
class LogEntry:
    seq: int
    message: str
    level: str
    timestamp: float


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created_at: float
    revoked_at: float | None
    secret_hash: str


@dataclass(frozen=True)
class FileRecord:
    id: str
    file_name: str
    content_type: str
    size: int | None
    key_id: str | None
    request_id: str | None
    created_at: float
    expires_at: float | None
    ready: bool


class WorkerState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    FAILED = "failed"  # the model did not load; the error says why
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerStatus:
    """A worker as it last reported itself; ``heartbeat_at`` tells whether it is still alive."""

    id: str
    host: str
    pid: int
    model: str
    device: str
    state: WorkerState
    current_request: str | None
    requests_done: int
    error: str | None
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class WebhookDelivery:
    id: int
    request_id: str
    url: str
    attempts: int
    state: str


class RequestQueue(Protocol):
    """The queue. Every state change is one atomic statement, so two workers never run one request."""

    def create(self, request: NewRequest, now: float, *, completion: Completion | None = None) -> RequestRecord: ...
    def get(self, request_id: str) -> RequestRecord | None: ...
    def queue_position(self, record: RequestRecord) -> int: ...
    def queue_depth(self) -> dict[Priority, int]: ...
    def running(self) -> list[RequestRecord]: ...
    def completed_since(self, since: float) -> dict[tuple[int, str | None], int]: ...
    def claim_next(self, worker_id: str, now: float) -> RequestRecord | None: ...
    def queued(self, now: float, limit: int) -> list[RequestRecord]: ...
    def claim(self, request_ids: list[str], worker_id: str, now: float) -> list[RequestRecord]: ...
    def complete(self, request_id: str, completion: Completion, now: float) -> bool: ...
    def request_cancel(self, request_id: str, now: float) -> CancelOutcome: ...
    def is_cancel_requested(self, request_id: str) -> bool: ...
    def requeue_interrupted(self, max_attempts: int, now: float) -> tuple[list[str], list[str]]: ...
    def expire_start_deadlines(self, now: float) -> list[str]: ...
    def append_log(self, request_id: str, message: str, level: str, now: float) -> None: ...
    def logs(self, request_id: str, after_seq: int = 0) -> list[LogEntry]: ...
    def recent_for_key(self, key_id: str, limit: int) -> list[RequestRecord]: ...
    def delete_completed_before(self, cutoff: float) -> list[str]: ...


class KeyRing(Protocol):
    def add(self, key: ApiKey) -> None: ...
    def get(self, key_id: str) -> ApiKey | None: ...
    def all(self) -> list[ApiKey]: ...
    def revoke(self, key_id: str, now: float) -> bool: ...
    def count_active(self) -> int: ...


class FileCatalog(Protocol):
    def add(self, record: FileRecord) -> None: ...
    def get(self, file_id: str) -> FileRecord | None: ...
    def mark_ready(self, file_id: str, size: int) -> bool: ...
    def for_requests(self, request_ids: list[str]) -> list[FileRecord]: ...
    def delete(self, file_ids: list[str]) -> None: ...
    def expired(self, now: float) -> list[FileRecord]: ...


class WebhookOutbox(Protocol):
    def claim_due(self, now: float, lease_seconds: float, limit: int) -> list[WebhookDelivery]: ...
    def mark_delivered(self, delivery_id: int, now: float) -> None: ...
    def mark_failed_attempt(self, delivery_id: int, error: str, retry_at: float | None) -> None: ...
    def get_for_request(self, request_id: str) -> WebhookDelivery | None: ...


class WorkerRegistry(Protocol):
    def report(self, status: WorkerStatus) -> None: ...
    def all(self) -> list[WorkerStatus]: ...
    def forget_silent_since(self, cutoff: float) -> int: ...


@dataclass(frozen=True)
class Store:
    """Everything durable, bundled so it is passed around as one thing."""

    requests: RequestQueue
    keys: KeyRing
    files: FileCatalog
    webhooks: WebhookOutbox
    workers: WorkerRegistry
    url: str
    check_writable: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        closer = getattr(self.requests, "close", None)
        if closer is not None:
            closer()
