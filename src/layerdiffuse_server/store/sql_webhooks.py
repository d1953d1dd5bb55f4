"""Webhook deliveries on SQL: an outbox row is written in the same transaction that completes the request."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, insert, select, update

from .contracts import WebhookDelivery
from .tables import webhook_deliveries

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def enqueue_delivery(connection: Connection, request_id: str, url: str, now: float) -> None:
    connection.execute(
        insert(webhook_deliveries).values(
            request_id=request_id, url=url, state=PENDING, attempts=0, next_attempt_at=now
        )
    )


class SqlWebhookOutbox:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim_due(self, now: float, lease_seconds: float, limit: int) -> list[WebhookDelivery]:
        """Deliveries due now, leased: if this process dies mid-delivery they become due again."""
        due = (
            select(webhook_deliveries.c.id)
            .where(webhook_deliveries.c.state == PENDING, webhook_deliveries.c.next_attempt_at <= now)
            .order_by(webhook_deliveries.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self._engine.begin() as connection:
            ids = list(connection.execute(due).scalars())
            if not ids:
                return []
            rows = connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id.in_(ids))
                .values(next_attempt_at=now + lease_seconds, attempts=webhook_deliveries.c.attempts + 1)
                .returning(*webhook_deliveries.c)
            ).all()
        return [WebhookDelivery(row.id, row.request_id, row.url, row.attempts, row.state) for row in rows]

    def mark_delivered(self, delivery_id: int, now: float) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(state=DELIVERED, delivered_at=now, last_error=None)
            )

    def mark_failed_attempt(self, delivery_id: int, error: str, retry_at: float | None) -> None:
        """Record a failed attempt; ``retry_at`` None gives up for good."""
        values: dict[str, object] = {"last_error": error[:2000]}
        values |= {"state": FAILED} if retry_at is None else {"next_attempt_at": retry_at}
        with self._engine.begin() as connection:
            connection.execute(
                update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(**values)
            )

    def get_for_request(self, request_id: str) -> WebhookDelivery | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(webhook_deliveries).where(webhook_deliveries.c.request_id == request_id)
            ).first()
        return WebhookDelivery(row.id, row.request_id, row.url, row.attempts, row.state) if row else None
