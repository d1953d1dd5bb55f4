"""The request queue on SQL: claims are single UPDATE … RETURNING statements (SKIP LOCKED on PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update

from .contracts import (
    CancelOutcome,
    Completion,
    LogEntry,
    NewRequest,
    Priority,
    RequestRecord,
    RequestState,
)
from .sql_webhooks import enqueue_delivery
from .tables import request_logs, requests, webhook_deliveries

CANCELLED_RESPONSE = {"detail": "Request was cancelled", "error_type": "client_cancelled"}


def cancelled_completion() -> Completion:
    return Completion(499, CANCELLED_RESPONSE, error="Request was cancelled", error_type="client_cancelled")


def _record(row: Any) -> RequestRecord:
    return RequestRecord(
        id=row.id,
        seq=row.seq,
        app_id=row.app_id,
        key_id=row.key_id,
        state=RequestState(row.state),
        priority=Priority(row.priority),
        input=row.input,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        start_deadline=row.start_deadline,
        attempts=row.attempts,
        cancel_requested=bool(row.cancel_requested),
        webhook_url=row.webhook_url,
        status_code=row.status_code,
        response=row.response,
        error=row.error,
        error_type=row.error_type,
        metrics=row.metrics,
        worker_id=row.worker_id,
    )


def _completion_values(completion: Completion, now: float) -> dict[str, Any]:
    return {
        "state": RequestState.COMPLETED.value,
        "completed_at": now,
        "status_code": completion.status_code,
        "response": completion.response,
        "error": completion.error,
        "error_type": completion.error_type,
        "metrics": completion.metrics,
        "worker_id": None,
    }


def _claimed_values(worker_id: str, now: float) -> dict[str, Any]:
    return {
        "state": RequestState.RUNNING.value,
        "started_at": now,
        "worker_id": worker_id,
        "attempts": requests.c.attempts + 1,
    }


class SqlRequestQueue:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def close(self) -> None:
        self._engine.dispose()

    def create(self, request: NewRequest, now: float, *, completion: Completion | None = None) -> RequestRecord:
        values: dict[str, Any] = {
            "id": request.id,
            "app_id": request.app_id,
            "key_id": request.key_id,
            "state": RequestState.QUEUED.value,
            "priority": int(request.priority),
            "input": request.input,
            "created_at": now,
            "start_deadline": request.start_deadline,
            "attempts": 0,
            "cancel_requested": False,
            "webhook_url": request.webhook_url,
        }
        if completion is not None:
            values.update(_completion_values(completion, now))
        with self._engine.begin() as connection:
            row = connection.execute(insert(requests).values(**values).returning(*requests.c)).one()
            if completion is not None and request.webhook_url:
                enqueue_delivery(connection, request.id, request.webhook_url, now)
        return _record(row)

    def get(self, request_id: str) -> RequestRecord | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(requests).where(requests.c.id == request_id)).first()
        return _record(row) if row else None

    def queue_position(self, record: RequestRecord) -> int:
        """How many queued requests run before this one (0 = next)."""
        ahead = and_(
            requests.c.state == RequestState.QUEUED.value,
            or_(
                requests.c.priority < int(record.priority),
                and_(requests.c.priority == int(record.priority), requests.c.seq < record.seq),
            ),
        )
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).where(ahead)).scalar_one())

    def queue_depth(self) -> dict[Priority, int]:
        query = (
            select(requests.c.priority, func.count())
            .where(requests.c.state == RequestState.QUEUED.value)
            .group_by(requests.c.priority)
        )
        with self._engine.connect() as connection:
            counts = {Priority(priority): int(count) for priority, count in connection.execute(query)}
        return {priority: counts.get(priority, 0) for priority in Priority}

    def running(self) -> list[RequestRecord]:
        query = select(requests).where(requests.c.state == RequestState.RUNNING.value).order_by(requests.c.started_at)
        with self._engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def completed_since(self, since: float) -> dict[tuple[int, str | None], int]:
        query = (
            select(requests.c.status_code, requests.c.error_type, func.count())
            .where(requests.c.state == RequestState.COMPLETED.value, requests.c.completed_at >= since)
            .group_by(requests.c.status_code, requests.c.error_type)
        )
        with self._engine.connect() as connection:
            return {(int(code), error_type): int(count) for code, error_type, count in connection.execute(query)}

    def claim_next(self, worker_id: str, now: float) -> RequestRecord | None:
        candidate = (
            select(requests.c.seq)
            .where(
                requests.c.state == RequestState.QUEUED.value,
                or_(requests.c.start_deadline.is_(None), requests.c.start_deadline > now),
            )
            .order_by(requests.c.priority, requests.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(requests)
            .where(requests.c.seq == candidate, requests.c.state == RequestState.QUEUED.value)
            .values(**_claimed_values(worker_id, now))
            .returning(*requests.c)
        )
        with self._engine.begin() as connection:
            row = connection.execute(statement).first()
        return _record(row) if row else None

    def queued(self, now: float, limit: int) -> list[RequestRecord]:
        """The next ``limit`` requests in claim order (priority, then arrival), without claiming them."""
        query = (
            select(requests)
            .where(
                requests.c.state == RequestState.QUEUED.value,
                or_(requests.c.start_deadline.is_(None), requests.c.start_deadline > now),
            )
            .order_by(requests.c.priority, requests.c.seq)
            .limit(limit)
        )
        with self._engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def claim(self, request_ids: list[str], worker_id: str, now: float) -> list[RequestRecord]:
        """Claim exactly these requests, those of them still queued (another worker may have won some)."""
        if not request_ids:
            return []
        statement = (
            update(requests)
            .where(requests.c.id.in_(request_ids), requests.c.state == RequestState.QUEUED.value)
            .values(**_claimed_values(worker_id, now))
            .returning(*requests.c)
        )
        with self._engine.begin() as connection:
            rows = connection.execute(statement).all()
        order = {request_id: index for index, request_id in enumerate(request_ids)}
        return sorted((_record(row) for row in rows), key=lambda record: order[record.id])

    def complete(self, request_id: str, completion: Completion, now: float) -> bool:
        """Record the outcome once; False when the request had already completed (e.g. cancelled)."""
        statement = (
            update(requests)
            .where(requests.c.id == request_id, requests.c.state != RequestState.COMPLETED.value)
            .values(**_completion_values(completion, now))
            .returning(requests.c.webhook_url)
        )
        with self._engine.begin() as connection:
            row = connection.execute(statement).first()
            if row is None:
                return False
            if row.webhook_url:
                enqueue_delivery(connection, request_id, row.webhook_url, now)
        return True

    def request_cancel(self, request_id: str, now: float) -> CancelOutcome:
        with self._engine.begin() as connection:
            row = connection.execute(
                select(requests.c.state, requests.c.webhook_url).where(requests.c.id == request_id)
            ).first()
            if row is None:
                return CancelOutcome.NOT_FOUND
            if row.state == RequestState.COMPLETED.value:
                return CancelOutcome.ALREADY_COMPLETED
            if row.state == RequestState.QUEUED.value:
                connection.execute(
                    update(requests)
                    .where(requests.c.id == request_id)
                    .values(cancel_requested=True, **_completion_values(cancelled_completion(), now))
                )
                if row.webhook_url:
                    enqueue_delivery(connection, request_id, row.webhook_url, now)
                return CancelOutcome.CANCELLED
            connection.execute(update(requests).where(requests.c.id == request_id).values(cancel_requested=True))
            return CancelOutcome.REQUESTED

    def is_cancel_requested(self, request_id: str) -> bool:
        with self._engine.connect() as connection:
            value = connection.execute(select(requests.c.cancel_requested).where(requests.c.id == request_id)).scalar()
        return bool(value)

    def requeue_interrupted(self, max_attempts: int, now: float) -> tuple[list[str], list[str]]:
        """Put requests whose worker died back in the queue; give up on those that already ran ``max_attempts`` times.

        Returns (requeued ids, failed ids). Only for a single-worker store: every IN_PROGRESS row is
        orphaned when the one worker (re)starts.
        """
        with self._engine.begin() as connection:
            rows = connection.execute(
                select(requests.c.id, requests.c.attempts, requests.c.webhook_url).where(
                    requests.c.state == RequestState.RUNNING.value
                )
            ).all()
            requeued, failed = [], []
            for row in rows:
                if row.attempts >= max_attempts:
                    completion = Completion(
                        500,
                        {
                            "detail": f"The server stopped while running this request {row.attempts} times; "
                            "it is not run again.",
                            "error_type": "runner_disconnected",
                        },
                        error="Runner disconnected",
                        error_type="runner_disconnected",
                    )
                    connection.execute(
                        update(requests).where(requests.c.id == row.id).values(**_completion_values(completion, now))
                    )
                    if row.webhook_url:
                        enqueue_delivery(connection, row.id, row.webhook_url, now)
                    failed.append(row.id)
                else:
                    connection.execute(
                        update(requests)
                        .where(requests.c.id == row.id)
                        .values(state=RequestState.QUEUED.value, worker_id=None, started_at=None)
                    )
                    requeued.append(row.id)
        return requeued, failed

    def expire_start_deadlines(self, now: float) -> list[str]:
        completion = Completion(
            504,
            {"detail": "Request timed out before it started", "error_type": "request_timeout"},
            error="Request timed out",
            error_type="request_timeout",
        )
        statement = (
            update(requests)
            .where(
                requests.c.state == RequestState.QUEUED.value,
                requests.c.start_deadline.is_not(None),
                requests.c.start_deadline <= now,
            )
            .values(**_completion_values(completion, now))
            .returning(requests.c.id, requests.c.webhook_url)
        )
        with self._engine.begin() as connection:
            rows = connection.execute(statement).all()
            for row in rows:
                if row.webhook_url:
                    enqueue_delivery(connection, row.id, row.webhook_url, now)
        return [row.id for row in rows]

    def append_log(self, request_id: str, message: str, level: str, now: float) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                insert(request_logs).values(request_id=request_id, message=message, level=level, timestamp=now)
            )

    def logs(self, request_id: str, after_seq: int = 0) -> list[LogEntry]:
        query = (
            select(request_logs)
            .where(request_logs.c.request_id == request_id, request_logs.c.seq > after_seq)
            .order_by(request_logs.c.seq)
        )
        with self._engine.connect() as connection:
            return [LogEntry(row.seq, row.message, row.level, row.timestamp) for row in connection.execute(query)]

    def recent_for_key(self, key_id: str, limit: int) -> list[RequestRecord]:
        query = select(requests).where(requests.c.key_id == key_id).order_by(requests.c.seq.desc()).limit(limit)
        with self._engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def delete_completed_before(self, cutoff: float) -> list[str]:
        condition = and_(requests.c.state == RequestState.COMPLETED.value, requests.c.completed_at < cutoff)
        with self._engine.begin() as connection:
            ids = list(connection.execute(select(requests.c.id).where(condition)).scalars())
            if ids:
                connection.execute(delete(request_logs).where(request_logs.c.request_id.in_(ids)))
                connection.execute(delete(webhook_deliveries).where(webhook_deliveries.c.request_id.in_(ids)))
                connection.execute(delete(requests).where(requests.c.id.in_(ids)))
        return ids
