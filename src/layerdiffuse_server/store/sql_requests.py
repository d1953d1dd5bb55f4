"""The request queue on SQL (SQLite and PostgreSQL): claims lock with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (SQLite serialises writers with ``BEGIN IMMEDIATE``), leases fence every worker write."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    String,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from ..errors import QueueFullError
from ..schemas import MODEL_MARKER, image_count
from .contracts import (
    CancelOutcome,
    Completion,
    LogEntry,
    NewRequest,
    Notice,
    NoticeKind,
    Priority,
    Reclaimed,
    ReleaseOutcome,
    RequestRecord,
    RequestState,
)
from .rows import from_row
from .sql_webhooks import enqueue_delivery
from .tables import files, request_logs, requests, webhook_deliveries
from .transactions import Transactions

QUEUED, RUNNING, COMPLETED = RequestState.QUEUED.value, RequestState.RUNNING.value, RequestState.COMPLETED.value

#: Serialises admissions on PostgreSQL, so the queue limit is counted and kept atomically.
ADMISSION_LOCK = 0x6C647175  # "ldqu"


def _record(row: Any) -> RequestRecord:
    return replace(
        from_row(RequestRecord, row),
        state=RequestState(row.state),
        priority=Priority(row.priority),
        cancel_requested=bool(row.cancel_requested),
        solo=bool(row.solo),
    )


def _completion_values(completion: Completion, now: float) -> dict[str, Any]:
    return {
        "state": COMPLETED,
        "completed_at": now,
        "status_code": completion.status_code,
        "response": completion.response,
        "error": completion.error,
        "error_type": completion.error_type,
        "metrics": completion.metrics,
        "worker_id": None,
        "lease_token": None,
        "lease_expires_at": None,
    }


_REQUEUED_VALUES: dict[str, Any] = {
    "state": QUEUED,
    "worker_id": None,
    "started_at": None,
    "lease_token": None,
    "lease_expires_at": None,
}


def _for_models(names: Sequence[str | None]) -> ColumnElement[bool]:
    """Requests for one of these models (a checkpoint's name, None: the model's own), by their batch key."""
    key = requests.c.batch_key
    conditions: list[ColumnElement[bool]] = []
    for name in names:
        if name is None:
            conditions.append(or_(key.is_(None), ~key.contains(MODEL_MARKER, autoescape=True)))
        else:
            marker = f"{MODEL_MARKER}{name}"
            conditions.append(or_(key.endswith(marker, autoescape=True), key.contains(f"{marker}:", autoescape=True)))
    return or_(*conditions)


class SqlRequestQueue:
    def __init__(self, engine: Engine, transactions: Transactions) -> None:
        self._engine = engine
        self._transaction = transactions
        self._postgres = engine.dialect.name == "postgresql"

    # -- completing, inside a transaction ------------------------------------------------------

    def _complete_in(
        self,
        connection: Connection,
        notices: list[Notice],
        request_id: str,
        completion: Completion,
        now: float,
        condition: Any = None,
    ) -> bool:
        """Complete one request (if ``condition`` holds), publish its files, queue its webhook."""
        where = [requests.c.id == request_id, requests.c.state != COMPLETED]
        if condition is not None:
            where.append(condition)
        row = connection.execute(
            update(requests)
            .where(*where)
            .values(**_completion_values(completion, now))
            .returning(requests.c.webhook_url)
        ).first()
        if row is None:
            return False
        if completion.file_ids:
            connection.execute(
                update(files).where(files.c.id.in_(completion.file_ids)).values(ready=True, expires_at=None)
            )
        if row.webhook_url:
            enqueue_delivery(connection, request_id, row.webhook_url, now)
        notices.append(Notice(NoticeKind.COMPLETED, request_id))
        return True

    # -- admission and reading -----------------------------------------------------------------

    def create(
        self,
        request: NewRequest,
        now: float,
        *,
        completion: Completion | None = None,
        max_queued: int | None = None,
    ) -> RequestRecord:
        values: dict[str, Any] = {
            "id": request.id,
            "app_id": request.app_id,
            "key_id": request.key_id,
            "state": QUEUED,
            "priority": int(request.priority),
            "input": request.input,
            "created_at": now,
            "start_deadline": request.start_deadline,
            "attempts": 0,
            "cancel_requested": False,
            "webhook_url": request.webhook_url,
            "batch_key": request.batch_key,
            "lost_runs": 0,
            "solo": False,
        }
        if completion is not None:
            values.update(_completion_values(completion, now))
        with self._transaction() as (connection, notices):
            if completion is None and max_queued is not None:
                if self._postgres:
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})
                depth = connection.execute(select(func.count()).where(requests.c.state == QUEUED)).scalar_one()
                if depth >= max_queued:
                    raise QueueFullError(f"the queue holds {depth} requests, the limit of this server; retry later")
            row = connection.execute(insert(requests).values(**values).returning(*requests.c)).one()
            if completion is not None:
                if request.webhook_url:
                    enqueue_delivery(connection, request.id, request.webhook_url, now)
                notices.append(Notice(NoticeKind.COMPLETED, request.id))
            else:
                notices.append(Notice(NoticeKind.QUEUED, request.id))
        return _record(row)

    def get(self, request_id: str) -> RequestRecord | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(requests).where(requests.c.id == request_id)).first()
        return _record(row) if row else None

    def queue_position(self, record: RequestRecord) -> int:
        """How many queued requests run before this one (0 = next)."""
        ahead = and_(
            requests.c.state == QUEUED,
            or_(
                requests.c.priority < int(record.priority),
                and_(requests.c.priority == int(record.priority), requests.c.seq < record.seq),
            ),
        )
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).where(ahead)).scalar_one())

    def queue_depth(self) -> dict[Priority, int]:
        query = (
            select(requests.c.priority, func.count()).where(requests.c.state == QUEUED).group_by(requests.c.priority)
        )
        with self._engine.connect() as connection:
            counts = {Priority(priority): int(count) for priority, count in connection.execute(query)}
        return {priority: counts.get(priority, 0) for priority in Priority}

    def running(self) -> list[RequestRecord]:
        query = select(requests).where(requests.c.state == RUNNING).order_by(requests.c.started_at)
        with self._engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def completed_since(self, since: float) -> dict[tuple[int, str | None], int]:
        query = (
            select(requests.c.status_code, requests.c.error_type, func.count())
            .where(requests.c.state == COMPLETED, requests.c.completed_at >= since)
            .group_by(requests.c.status_code, requests.c.error_type)
        )
        with self._engine.connect() as connection:
            return {(int(code), error_type): int(count) for code, error_type, count in connection.execute(query)}

    # -- leases --------------------------------------------------------------------------------

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
        claimable = and_(
            requests.c.state == QUEUED,
            or_(requests.c.start_deadline.is_(None), requests.c.start_deadline > now),
        )
        order = (requests.c.priority, requests.c.seq)
        head_columns = (
            requests.c.id,
            requests.c.seq,
            requests.c.priority,
            requests.c.batch_key,
            requests.c.solo,
            requests.c.input,
        )
        with self._transaction() as (connection, notices):
            head = None
            if prefer:
                oldest = connection.execute(
                    select(requests.c.priority, requests.c.created_at).where(claimable).order_by(*order).limit(1)
                ).first()
                if oldest is not None and now - oldest.created_at < prefer_seconds:
                    head = connection.execute(
                        select(*head_columns)
                        .where(claimable, requests.c.priority == oldest.priority, _for_models(prefer))
                        .order_by(*order)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    ).first()
            if head is None:
                head = connection.execute(
                    select(*head_columns).where(claimable).order_by(*order).limit(1).with_for_update(skip_locked=True)
                ).first()
            if head is None:
                return []
            chosen = [head.id]
            room = max_batch - image_count(head.input)
            if room > 0 and head.batch_key is not None and not head.solo:
                # Each request takes at least one image of the batch, so ``room`` rows are the most
                # that can join; they join in queue order while their images fit.
                partners = (
                    select(requests.c.id, requests.c.input)
                    .where(
                        claimable,
                        requests.c.priority == head.priority,
                        requests.c.batch_key == head.batch_key,
                        requests.c.solo.is_(False),
                        requests.c.seq > head.seq,
                    )
                    .order_by(*order)
                    .limit(room)
                    .with_for_update(skip_locked=True)
                )
                for partner in connection.execute(partners):
                    room -= image_count(partner.input)
                    if room < 0:
                        break
                    chosen.append(partner.id)
            claimed = connection.execute(
                update(requests)
                .where(requests.c.id.in_(chosen), requests.c.state == QUEUED)
                .values(
                    state=RUNNING,
                    started_at=now,
                    start_deadline=None,
                    worker_id=worker_id,
                    lease_token=secrets.token_hex(16),
                    lease_expires_at=now + lease_seconds,
                    attempts=requests.c.attempts + 1,
                    batch_size=len(chosen),
                )
                .returning(*requests.c)
            ).all()
            notices.extend(Notice(NoticeKind.STARTED, row.id) for row in claimed)
        position = {request_id: index for index, request_id in enumerate(chosen)}
        return sorted((_record(row) for row in claimed), key=lambda record: position[record.id])

    def renew(self, lease_tokens: list[str], now: float, lease_seconds: float) -> set[str]:
        if not lease_tokens:
            return set()
        statement = (
            update(requests)
            .where(requests.c.lease_token.in_(lease_tokens), requests.c.state == RUNNING)
            .values(lease_expires_at=now + lease_seconds)
            .returning(requests.c.id)
        )
        with self._engine.begin() as connection:
            return set(connection.execute(statement).scalars())

    def complete(self, request_id: str, completion: Completion, now: float, *, lease_token: str | None = None) -> bool:
        condition = None
        if lease_token is not None:
            condition = and_(requests.c.state == RUNNING, requests.c.lease_token == lease_token)
        with self._transaction() as (connection, notices):
            return self._complete_in(connection, notices, request_id, completion, now, condition)

    def release(self, request_id: str, lease_token: str, now: float, cancelled: Completion) -> ReleaseOutcome:
        held = and_(requests.c.id == request_id, requests.c.state == RUNNING, requests.c.lease_token == lease_token)
        with self._transaction() as (connection, notices):
            row = connection.execute(select(requests.c.cancel_requested).where(held).with_for_update()).first()
            if row is None:
                return ReleaseOutcome.LOST
            if row.cancel_requested:
                self._complete_in(connection, notices, request_id, cancelled, now)
                return ReleaseOutcome.CANCELLED
            connection.execute(update(requests).where(held).values(**_REQUEUED_VALUES))
            notices.append(Notice(NoticeKind.QUEUED, request_id))
        return ReleaseOutcome.REQUEUED

    def request_cancel(self, request_id: str, now: float, cancelled: Completion) -> CancelOutcome:
        with self._transaction() as (connection, notices):
            row = connection.execute(
                select(requests.c.state, requests.c.lease_expires_at)
                .where(requests.c.id == request_id)
                .with_for_update()
            ).first()
            if row is None:
                return CancelOutcome.NOT_FOUND
            if row.state == COMPLETED:
                return CancelOutcome.ALREADY_COMPLETED
            connection.execute(update(requests).where(requests.c.id == request_id).values(cancel_requested=True))
            worker_gone = row.state == RUNNING and (row.lease_expires_at is None or row.lease_expires_at < now)
            if row.state == QUEUED or worker_gone:
                self._complete_in(connection, notices, request_id, cancelled, now)
                return CancelOutcome.CANCELLED
            notices.append(Notice(NoticeKind.CANCEL, request_id))
            return CancelOutcome.REQUESTED

    def cancel_requested(self, request_ids: list[str]) -> set[str]:
        if not request_ids:
            return set()
        query = select(requests.c.id).where(requests.c.id.in_(request_ids), requests.c.cancel_requested.is_(True))
        with self._engine.connect() as connection:
            return set(connection.execute(query).scalars())

    def expire_leases(self, worker_ids: list[str], now: float) -> list[str]:
        if not worker_ids:
            return []
        statement = (
            update(requests)
            .where(requests.c.worker_id.in_(worker_ids), requests.c.state == RUNNING)
            .values(lease_expires_at=now - 1)
            .returning(requests.c.id)
        )
        with self._engine.begin() as connection:
            return list(connection.execute(statement).scalars())

    def reclaim_expired(self, now: float, *, max_lost_runs: int, lost: Completion, cancelled: Completion) -> Reclaimed:
        expired = (
            select(requests.c.id, requests.c.batch_size, requests.c.lost_runs, requests.c.cancel_requested)
            .where(requests.c.state == RUNNING, requests.c.lease_expires_at < now)
            .order_by(requests.c.seq)
            .with_for_update(skip_locked=True)
        )
        result = Reclaimed()
        with self._transaction() as (connection, notices):
            for row in connection.execute(expired).all():
                if row.cancel_requested:
                    self._complete_in(connection, notices, row.id, cancelled, now)
                    result.cancelled.append(row.id)
                    continue
                alone = (row.batch_size or 1) <= 1
                lost_runs = row.lost_runs + 1 if alone else row.lost_runs
                if lost_runs >= max_lost_runs:
                    connection.execute(update(requests).where(requests.c.id == row.id).values(lost_runs=lost_runs))
                    self._complete_in(connection, notices, row.id, lost, now)
                    result.failed.append(row.id)
                    continue
                # A batch's crash is not laid on each of its requests: they run alone next time, so
                # only a request that takes its worker down on its own uses up its runs.
                connection.execute(
                    update(requests)
                    .where(requests.c.id == row.id)
                    .values(**_REQUEUED_VALUES, lost_runs=lost_runs, solo=True)
                )
                notices.append(Notice(NoticeKind.QUEUED, row.id))
                result.requeued.append(row.id)
        return result

    def expire_start_deadlines(self, now: float, timed_out: Completion) -> list[str]:
        due = (
            select(requests.c.id)
            .where(requests.c.state == QUEUED, requests.c.start_deadline.is_not(None), requests.c.start_deadline <= now)
            .with_for_update(skip_locked=True)
        )
        expired = []
        with self._transaction() as (connection, notices):
            for request_id in connection.execute(due).scalars().all():
                if self._complete_in(connection, notices, request_id, timed_out, now):
                    expired.append(request_id)
        return expired

    # -- logs and history ----------------------------------------------------------------------

    def append_log(
        self, request_id: str, message: str, level: str, now: float, *, lease_token: str | None = None
    ) -> bool:
        with self._transaction() as (connection, notices):
            if lease_token is None:
                connection.execute(
                    insert(request_logs).values(request_id=request_id, message=message, level=level, timestamp=now)
                )
            else:
                holder = select(
                    requests.c.id, literal(message, String), literal(level, String), literal(now, Float)
                ).where(requests.c.id == request_id, requests.c.state == RUNNING, requests.c.lease_token == lease_token)
                inserted = connection.execute(
                    insert(request_logs)
                    .from_select(["request_id", "message", "level", "timestamp"], holder)
                    .returning(request_logs.c.seq)
                ).first()
                if inserted is None:
                    return False
            notices.append(Notice(NoticeKind.LOG, request_id))
        return True

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

    def delete_completed_before(self, cutoff: float, now: float) -> list[str]:
        condition = and_(requests.c.state == COMPLETED, requests.c.completed_at < cutoff)
        with self._engine.begin() as connection:
            ids = list(connection.execute(select(requests.c.id).where(condition)).scalars())
            if ids:
                connection.execute(update(files).where(files.c.request_id.in_(ids)).values(expires_at=now))
                connection.execute(delete(request_logs).where(request_logs.c.request_id.in_(ids)))
                connection.execute(delete(webhook_deliveries).where(webhook_deliveries.c.request_id.in_(ids)))
                connection.execute(delete(requests).where(requests.c.id.in_(ids)))
        return ids
