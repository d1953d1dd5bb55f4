"""What the service needs from durable storage, independent of the database behind it.

A request moves IN_QUEUE → IN_PROGRESS → COMPLETED, exactly the three states fal's clients know;
a failed or cancelled request is COMPLETED with an error, stored as data (status code + body), so
its result can be served again after a restart exactly as it was the first time.

A running request is held under a lease: a random token given at the claim and an expiry that the
worker's heartbeat pushes forward. Only the holder of the current token may log to the request,
complete it or hand it back, so a worker that was given up for dead cannot overwrite the outcome
of the worker that took its request over. The store builds no outcomes itself: the completions it
records for timeouts, cancels and lost workers are handed in by the request manager.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class ReleaseOutcome(StrEnum):
    REQUEUED = "requeued"  # back in the queue, its attempts untouched
    CANCELLED = "cancelled"  # a cancel was waiting: completed with it instead
    LOST = "lost"  # the lease was no longer the caller's: nothing changed


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
    batch_key: str | None = None  # requests with equal keys may share one denoising run; None: never


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
    lease_token: str | None = None
    lease_expires_at: float | None = None
    batch_key: str | None = None
    batch_size: int | None = None  # how many requests the current (or last) run claimed together
    lost_runs: int = 0  # runs alone that ended with their worker lost: what the attempt limit counts
    solo: bool = False  # its worker was lost while it ran in a batch: it runs alone next time


@dataclass(frozen=True)
class Reclaimed:
    """What :meth:`RequestQueue.reclaim_expired` did with requests whose worker stopped renewing its lease."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # lost while running alone too often
    cancelled: list[str] = field(default_factory=list)  # a cancel was waiting for the lost worker


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


#: A worker that has not reported for this long is counted as silent (died or hung).
WORKER_SILENCE_SECONDS = 60.0


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
    #: The process namespace it runs in (boot id and pid namespace): a process of the same scope can
    #: tell from the pid whether it still runs. None where that cannot be known.
    scope: str | None = None

    def observed_state(self, now: float) -> str:
        """Its own state, or ``silent`` when its heartbeat stopped without it saying it stopped."""
        if now - self.heartbeat_at > WORKER_SILENCE_SECONDS and self.state is not WorkerState.STOPPED:
            return "silent"
        return self.state.value


@dataclass(frozen=True)
class WebhookDelivery:
    id: int
    request_id: str
    url: str
    attempts: int
    state: str


class RequestQueue(Protocol):
    """The queue. Every state change is one atomic statement or transaction, so two workers never
    run one request and no change is half made."""

    def create(
        self,
        request: NewRequest,
        now: float,
        *,
        completion: Completion | None = None,
        max_queued: int | None = None,
    ) -> RequestRecord:
        """Store a new request (already completed when ``completion`` is given); with ``max_queued``,
        raise :class:`~layerdiffuse_server.errors.QueueFullError` instead when that many are queued,
        counted and inserted atomically."""
        ...

    def get(self, request_id: str) -> RequestRecord | None: ...
    def queue_position(self, record: RequestRecord) -> int: ...
    def queue_depth(self) -> dict[Priority, int]: ...
    def running(self) -> list[RequestRecord]: ...
    def completed_since(self, since: float) -> dict[tuple[int, str | None], int]: ...

    def claim(
        self,
        worker_id: str,
        now: float,
        *,
        lease_seconds: float,
        max_batch: int,
        prefer: Sequence[str | None] = (),
        prefer_seconds: float = 0.0,
    ) -> list[RequestRecord]:
        """Lease the head of the queue and the queued requests of the same priority and batch key behind
        it, in queue order while their images (``num_images`` each) fit ``max_batch`` images in all, in
        one transaction; [] when idle. A head with more images than ``max_batch`` runs alone. Only
        the rows taken are locked, so workers claiming at once take the next requests in order. A
        claimed request has started: its start deadline no longer applies.

        ``prefer``: the models the worker holds (checkpoint names, None: the model's own). The head is
        then the first request of the queue's head priority for one of them, unless the queue's head
        has waited ``prefer_seconds`` or more: a request for another model waits no longer than that
        for a worker that is busy with its own."""
        ...

    def renew(self, lease_tokens: list[str], now: float, lease_seconds: float) -> set[str]:
        """Extend these leases; the ids of the requests still held by them (a lost one was reclaimed).
        Only leases a worker still works on are renewed, so one it dropped runs out."""
        ...

    def complete(self, request_id: str, completion: Completion, now: float, *, lease_token: str | None = None) -> bool:
        """Record the outcome once and publish the files it names; False when it had completed already
        or, with ``lease_token``, when that lease is no longer the request's."""
        ...

    def release(self, request_id: str, lease_token: str, now: float, cancelled: Completion) -> ReleaseOutcome:
        """Hand a leased request back to the queue without counting a lost run (a graceful stop);
        completed with ``cancelled`` instead when a cancel is waiting."""
        ...

    def request_cancel(self, request_id: str, now: float, cancelled: Completion) -> CancelOutcome:
        """A queued request, or one whose lease expired, completes with ``cancelled`` now; a running
        one is flagged for its worker."""
        ...

    def cancel_requested(self, request_ids: list[str]) -> set[str]: ...

    def expire_leases(self, worker_ids: list[str], now: float) -> list[str]:
        """End the leases of workers known to be dead now, rather than when they run out."""
        ...

    def reclaim_expired(self, now: float, *, max_lost_runs: int, lost: Completion, cancelled: Completion) -> Reclaimed:
        """Take back requests whose lease expired (their worker is gone): requeue them, or complete
        them with ``lost`` after ``max_lost_runs`` runs alone were lost, or with ``cancelled`` when a
        cancel waited. Rows another process is reclaiming are skipped, not waited for."""
        ...

    def expire_start_deadlines(self, now: float, timed_out: Completion) -> list[str]: ...

    def append_log(
        self, request_id: str, message: str, level: str, now: float, *, lease_token: str | None = None
    ) -> bool:
        """Add a line to the request's log; with ``lease_token``, only while that lease holds."""
        ...

    def logs(self, request_id: str, after_seq: int = 0) -> list[LogEntry]: ...
    def recent_for_key(self, key_id: str, limit: int) -> list[RequestRecord]: ...
    def delete_completed_before(self, cutoff: float, now: float) -> list[str]:
        """Delete completed requests older than ``cutoff`` with their logs, and mark their files
        expired at ``now`` in the same transaction, so the file sweep deletes them (and retries)."""
        ...


class KeyRing(Protocol):
    def add(self, key: ApiKey) -> None: ...
    def add_first(self, key: ApiKey) -> bool:
        """Add ``key`` only if no active key exists, atomically (nodes starting together make one)."""
        ...

    def get(self, key_id: str) -> ApiKey | None: ...
    def all(self) -> list[ApiKey]: ...
    def revoke(self, key_id: str, now: float) -> bool: ...
    def count_active(self) -> int: ...


class FileCatalog(Protocol):
    """Which files exist. Every file is added unready, with an expiry, before its bytes are written
    (:class:`..files.stored_files.StoredFiles` owns that order), and published afterwards (an
    output by the completion of its request): if the writer dies in between, retention finds the
    expired row and deletes the orphaned bytes."""

    def add(self, record: FileRecord) -> None: ...
    def get(self, file_id: str) -> FileRecord | None: ...
    def claim_upload(self, file_id: str) -> bool:
        """Take an initiated upload for writing, once: False when it is taken or already written."""
        ...

    def unclaim_upload(self, file_id: str) -> None:
        """Give back an upload whose write failed, so the (still valid) URL can be used again."""
        ...

    def mark_ready(self, file_id: str, size: int, *, expires_at: float | None) -> bool:
        """Publish a pending file once, with the expiry it keeps; False if it is published or gone."""
        ...

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


class NoticeKind(StrEnum):
    """What changed about a request; listeners pick the kinds they wait for."""

    QUEUED = "queued"  # new work to claim (submitted, or handed back)
    STARTED = "started"
    COMPLETED = "completed"
    CANCEL = "cancel"  # a cancel was requested while a worker runs it
    LOG = "log"
    RESYNC = "resync"  # notices may have been missed (a reconnect): everyone re-reads


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    request_id: str = ""


class ChangeFeed(Protocol):
    """Notices of committed changes, to every process that shares the store (or only this one,
    where the database cannot tell others: then waiters fall back to polling)."""

    #: Whether notices reach other processes; if not, waiters poll the store more often.
    shared: bool

    def subscribe(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        """Call ``listener`` (on any thread) for each notice from now on; returns the unsubscribe."""
        ...


@dataclass(frozen=True)
class Store:
    """Everything durable, bundled so it is passed around as one thing."""

    requests: RequestQueue
    keys: KeyRing
    files: FileCatalog
    webhooks: WebhookOutbox
    workers: WorkerRegistry
    notices: ChangeFeed
    url: str  # shown to operators, without password
    check_writable: Callable[[], None] = field(default=lambda: None, repr=False)
    close: Callable[[], None] = field(default=lambda: None, repr=False)
