"""The one owner of a request's life: admission, claims under a lease, logs, completion, cancel,
start timeouts, and taking work back from workers that were lost.

Routes and workers call only this; it speaks to the store contract and nothing else, so the API
(no torch) and the GPU workers (no SQL) share one set of rules wherever they run. Its methods block
(they are database calls): the API calls them off the event loop.

The retry policy, in one place: a request whose worker stops renewing its lease (a crash, a kill,
a lost host) is taken back after ``lease_seconds`` and runs again. If it ran in a batch, the loss
is not counted against it — it runs alone next time, so a request that brings its worker down is
found out without costing its neighbours anything. A loss while it ran alone counts; after
``max_attempts`` such losses it ends with 500 ``runner_disconnected``. A graceful stop hands work
back without counting anything.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from ..clock import SYSTEM_CLOCK, Clock
from ..endpoints import endpoint_of, stored_input
from ..errors import ServiceUnavailableError
from ..schemas import LayerDiffusionInput, batch_key
from ..store.contracts import (
    ApiKey,
    CancelOutcome,
    Completion,
    LogEntry,
    NewRequest,
    Notice,
    Priority,
    Reclaimed,
    ReleaseOutcome,
    RequestRecord,
    Store,
    WorkerState,
)
from . import outcomes
from .local_processes import is_running, process_scope

logger = logging.getLogger(__name__)

#: How long the queue's head may wait while workers take requests for the models they hold first.
HELD_MODEL_PREFERENCE_SECONDS = 30.0


@dataclass(frozen=True)
class Submission:
    """A request as the API received it: who asked, what for, and fal's platform headers."""

    key_id: str
    app_id: str
    input: dict[str, Any]
    priority: Priority = Priority.normal
    webhook_url: str | None = None
    start_deadline: float | None = None
    rejection: Completion | None = None  # the input was refused by the API already (an unreadable image)
    #: The parameters the API admitted ``input`` as (``input`` is their stored form); absent, ``input``
    #: is validated here (callers that hold only a stored form, tests).
    params: LayerDiffusionInput | None = None


class RequestManager:
    def __init__(
        self,
        store: Store,
        *,
        max_queue_length: int,
        max_attempts: int,
        lease_seconds: float,
        clock: Clock = SYSTEM_CLOCK,
        on_completed: Callable[[Completion], None] | None = None,
    ) -> None:
        self.store = store
        self.max_queue_length = max_queue_length
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._on_completed = on_completed or (lambda completion: None)

    def subscribe(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        return self.store.notices.subscribe(listener)

    # -- admission -----------------------------------------------------------------------------

    def submit(self, submission: Submission) -> RequestRecord:
        """Store a new request: queued, or completed at once with a 422 when its input is invalid
        (the queue reports input errors as the request's result, as fal's does)."""
        now = self.clock.time()
        request = NewRequest(
            id=str(uuid.uuid4()),
            app_id=submission.app_id,
            key_id=submission.key_id,
            input=submission.input,
            priority=submission.priority,
            webhook_url=submission.webhook_url,
            start_deadline=submission.start_deadline,
        )
        if submission.rejection is not None:
            return self._reject(request, now, submission.rejection)
        params = submission.params
        if params is None:
            try:
                params = endpoint_of(submission.app_id).admitted_params(submission.input, from_api=False)
            except ValidationError as error:
                return self._reject(request, now, outcomes.invalid_input(error))
            request = replace(request, input=stored_input(params))
        self._refuse_when_no_worker_can_run(now)
        request = replace(request, batch_key=batch_key(params))
        return self.store.requests.create(request, now, max_queued=self.max_queue_length)

    def _reject(self, request: NewRequest, now: float, completion: Completion) -> RequestRecord:
        record = self.store.requests.create(request, now, completion=completion)
        self._on_completed(completion)
        return record

    def _refuse_when_no_worker_can_run(self, now: float) -> None:
        """503 when every live worker failed to load its model; with no live worker at all the request
        waits in the queue for one to start (workers may be scaled to zero)."""
        live = [
            worker for worker in self.store.workers.all() if worker.observed_state(now) not in ("silent", "stopped")
        ]
        if live and all(worker.state is WorkerState.FAILED for worker in live):
            raise ServiceUnavailableError(f"the model failed to load, so nothing can run: {live[0].error}")

    # -- reading -------------------------------------------------------------------------------

    def get(self, request_id: str) -> RequestRecord | None:
        return self.store.requests.get(request_id)

    def visible_to(self, key: ApiKey, request_id: str) -> RequestRecord | None:
        """The request if ``key`` may see it; another key's request is reported as not found."""
        record = self.store.requests.get(request_id)
        if record is None or (record.key_id != key.id and not key.admin):
            return None
        return record

    def queue_position(self, record: RequestRecord) -> int:
        return self.store.requests.queue_position(record)

    def logs(self, request_id: str, after_seq: int = 0) -> list[LogEntry]:
        return self.store.requests.logs(request_id, after_seq)

    def recent(self, key_id: str, limit: int) -> list[RequestRecord]:
        return self.store.requests.recent_for_key(key_id, limit)

    # -- cancel --------------------------------------------------------------------------------

    def cancel(self, request_id: str, completion: Completion | None = None) -> CancelOutcome:
        """A queued request (or one whose worker is gone) ends now; a running one stops at its
        worker's next denoising step."""
        completion = completion or outcomes.cancelled()
        outcome = self.store.requests.request_cancel(request_id, self.clock.time(), completion)
        if outcome is CancelOutcome.CANCELLED:
            self._on_completed(completion)
        return outcome

    # -- workers -------------------------------------------------------------------------------

    def claim(self, worker_id: str, max_batch: int, *, prefer: Sequence[str | None] = ()) -> list[RequestRecord]:
        """The next request and compatible ones behind it, leased to ``worker_id``; with ``prefer``
        (the models it holds), a request for one of them first while the queue's head has waited
        less than :data:`HELD_MODEL_PREFERENCE_SECONDS` (a model switch costs seconds to minutes)."""
        return self.store.requests.claim(
            worker_id,
            self.clock.time(),
            lease_seconds=self.lease_seconds,
            max_batch=max_batch,
            prefer=prefer,
            prefer_seconds=HELD_MODEL_PREFERENCE_SECONDS,
        )

    def renew(self, leases: list[RequestRecord]) -> set[str]:
        """Extend the leases a worker still works on; the ids it still holds."""
        tokens = [lease.lease_token for lease in leases if lease.lease_token is not None]
        return self.store.requests.renew(tokens, self.clock.time(), self.lease_seconds)

    def log(self, lease: RequestRecord, message: str, level: str = "INFO") -> bool:
        """A line of the request's own log, from the holder of its lease (False once it lost it)."""
        return self.store.requests.append_log(
            lease.id, message, level, self.clock.time(), lease_token=lease.lease_token
        )

    def cancel_requested(self, leases: list[RequestRecord]) -> set[str]:
        return self.store.requests.cancel_requested([lease.id for lease in leases])

    def complete(self, lease: RequestRecord, completion: Completion) -> bool:
        """Record the outcome the lease holder produced; False when it is no longer the holder."""
        done = self.store.requests.complete(lease.id, completion, self.clock.time(), lease_token=lease.lease_token)
        if done:
            self._on_completed(completion)
        return done

    def release(self, lease: RequestRecord) -> ReleaseOutcome:
        """Hand a request back to the queue without counting a lost run (the worker is stopping, or
        could not finish it); a cancel that was waiting ends it instead."""
        assert lease.lease_token is not None
        completion = outcomes.cancelled()
        outcome = self.store.requests.release(lease.id, lease.lease_token, self.clock.time(), completion)
        if outcome is ReleaseOutcome.CANCELLED:
            self._on_completed(completion)
        return outcome

    # -- housekeeping --------------------------------------------------------------------------

    def expire_dead_neighbours(self) -> list[str]:
        """End at once the leases of workers of this machine whose process is gone (a crash and a
        restart of the embedded server), so :meth:`reclaim_expired` need not wait for them."""
        scope = process_scope()
        if scope is None:
            return []
        dead = [
            worker.id
            for worker in self.store.workers.all()
            if worker.scope == scope and worker.state is not WorkerState.STOPPED and not is_running(worker.pid)
        ]
        return self.store.requests.expire_leases(dead, self.clock.time()) if dead else []

    def reclaim_expired(self) -> Reclaimed:
        """Take back what lost workers held; any process may run this, concurrently with others."""
        now = self.clock.time()
        reclaimed = self.store.requests.reclaim_expired(
            now,
            max_lost_runs=self.max_attempts,
            lost=outcomes.runner_lost(self.max_attempts),
            cancelled=outcomes.cancelled(),
        )
        for request_id in reclaimed.requeued:
            self.store.requests.append_log(
                request_id,
                "The worker running this request stopped responding; it runs again (alone).",
                "WARN",
                now,
            )
        for _ in reclaimed.failed:
            self._on_completed(outcomes.runner_lost(self.max_attempts))
        for _ in reclaimed.cancelled:
            self._on_completed(outcomes.cancelled())
        if reclaimed.requeued or reclaimed.failed or reclaimed.cancelled:
            logger.warning(
                "took back requests of lost workers: %d requeued, %d failed, %d cancelled",
                len(reclaimed.requeued),
                len(reclaimed.failed),
                len(reclaimed.cancelled),
            )
        return reclaimed

    def expire_deadlines(self) -> list[str]:
        """Requests still queued past their ``X-Fal-Request-Timeout`` end with 504."""
        expired = self.store.requests.expire_start_deadlines(self.clock.time(), outcomes.timed_out())
        for _ in expired:
            self._on_completed(outcomes.timed_out())
        return expired
