"""Delivering webhooks from the outbox: signed POSTs, retried with exponential backoff.

The outbox row is written in the transaction that completes the request and is leased while a
delivery is in flight, so neither a crash nor a restart loses or duplicates a webhook beyond the
at-least-once that fal promises (receivers de-duplicate on ``request_id``). Whatever goes wrong
with one delivery is recorded as its failed attempt: no URL, answer or bug in one delivery can stop
the loop that serves every other key's webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ..errors import InvalidInputError
from ..signing import SigningKeys
from ..store.contracts import RequestRecord, Store, WebhookDelivery
from .targets import IPNetwork, resolve_webhook_target

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY = 3600.0
POLL_SECONDS = 1.0


def webhook_payload(record: RequestRecord) -> dict[str, Any]:
    """fal's envelope: ``status`` OK with the output, or ERROR with the error body as payload."""
    ok = record.status_code == 200
    return {
        "request_id": record.id,
        "gateway_request_id": record.id,
        "status": "OK" if ok else "ERROR",
        "payload": record.response,
        "error": None if ok else f"Invalid status code: {record.status_code}",
    }


class WebhookDeliverer:
    def __init__(
        self,
        store: Store,
        signer: SigningKeys,
        *,
        allowed_networks: list[IPNetwork],
        max_attempts: int,
        retry_seconds: float,
        timeout_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.allowed_networks = allowed_networks
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.on_attempt = on_attempt or (lambda result: None)  # delivered, retrying or dropped
        self._transport = transport
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Deliver now rather than at the next poll; callable from any thread."""
        if self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def retry_delay(self, attempts: int) -> float:
        return min(self.retry_seconds * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        lease = self.timeout_seconds * 2 + 5
        async with httpx.AsyncClient(
            transport=self._transport, timeout=self.timeout_seconds, follow_redirects=False, trust_env=False
        ) as client:
            while True:
                try:
                    due = await anyio.to_thread.run_sync(self.store.webhooks.claim_due, self.clock(), lease, 16)
                except Exception:  # the database is away: try again at the next poll
                    logger.warning("could not read the webhook outbox", exc_info=True)
                    due = []
                if due:
                    await asyncio.gather(*(self.deliver(client, delivery) for delivery in due))
                    continue
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), POLL_SECONDS)

    async def deliver(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        """One attempt; never raises (a failure is recorded on the delivery, a store error leaves it leased)."""
        try:
            await self._attempt(client, delivery)
        except Exception as failure:
            logger.exception("webhook delivery %s failed unexpectedly", delivery.id)
            with contextlib.suppress(Exception):
                await self._record_failure(delivery, f"{type(failure).__name__}: {failure}")

    async def _attempt(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        record = await anyio.to_thread.run_sync(self.store.requests.get, delivery.request_id)
        if record is None:
            return
        body = json.dumps(webhook_payload(record), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "layerdiffuse-server webhooks"}
        headers |= self.signer.webhook_headers(record.id, record.key_id, int(self.clock()), body)
        try:
            target = await anyio.to_thread.run_sync(resolve_webhook_target, delivery.url, self.allowed_networks)
        except InvalidInputError as refused:
            await anyio.to_thread.run_sync(self.store.webhooks.mark_failed_attempt, delivery.id, str(refused), None)
            self.on_attempt("dropped")
            logger.warning("webhook for %s dropped: %s", record.id, refused)
            return
        headers["Host"] = target.host_header
        try:
            response = await client.post(
                target.connect_url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": target.server_name},
            )
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"
        if error is None:
            await anyio.to_thread.run_sync(self.store.webhooks.mark_delivered, delivery.id, self.clock())
            self.on_attempt("delivered")
            logger.info("webhook for %s delivered (attempt %d)", record.id, delivery.attempts)
            return
        await self._record_failure(delivery, error)

    async def _record_failure(self, delivery: WebhookDelivery, error: str) -> None:
        retry_at = self.clock() + self.retry_delay(delivery.attempts) if delivery.attempts < self.max_attempts else None
        await anyio.to_thread.run_sync(self.store.webhooks.mark_failed_attempt, delivery.id, error, retry_at)
        self.on_attempt("retrying" if retry_at else "dropped")
        logger.warning(
            "webhook for %s failed (attempt %d/%d): %s%s",
            delivery.request_id,
            delivery.attempts,
            self.max_attempts,
            error,
            "" if retry_at else "; giving up",
        )
