"""Delivering webhooks from the outbox: signed POSTs, retried with exponential backoff.

The outbox row is written in the transaction that completes the request and is leased while a
delivery is in flight, so neither a crash nor a restart loses or duplicates a webhook beyond the
at-least-once that fal promises (receivers de-duplicate on ``request_id``). Whatever goes wrong
with one delivery is recorded as its failed attempt: no URL, answer or bug in one delivery can stop
the loop that serves every other key's webhooks: deliveries run side by side (up to
:data:`MAX_IN_FLIGHT`), each attempt has a deadline for the whole exchange (a receiver that answers
byte by byte is cut off) and the answer's body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import InvalidInputError
from ..outbound import IPNetwork, resolve_webhook_target
from ..signing import SigningKeys
from ..store.contracts import RequestRecord, Store, WebhookDelivery

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY = 3600.0
POLL_SECONDS = 1.0
MAX_IN_FLIGHT = 16


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
        clock: Clock = SYSTEM_CLOCK,
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
        # An attempt ends within the timeout, so a lease of twice that is never taken over mid-attempt.
        lease = self.timeout_seconds * 2 + 5
        in_flight: set[asyncio.Task[None]] = set()
        # No keep-alive: a connection is opened for one checked address and one TLS server name, and
        # must not be reused for another host name that resolves to the same address.
        async with httpx.AsyncClient(
            transport=self._transport,
            timeout=self.timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            try:
                while True:
                    room = MAX_IN_FLIGHT - len(in_flight)
                    if not room:
                        await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    self._wakeup.clear()
                    try:
                        due = await anyio.to_thread.run_sync(
                            self.store.webhooks.claim_due, self.clock.time(), lease, room
                        )
                    except Exception:  # the database is away: try again at the next poll
                        logger.warning("could not read the webhook outbox", exc_info=True)
                        due = []
                    for delivery in due:
                        task = asyncio.create_task(self.deliver(client, delivery))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    if len(due) == room:
                        continue  # more may be due
                    await self.clock.wait_async(self._wakeup, POLL_SECONDS)
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

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
        headers |= self.signer.webhook_headers(record.id, record.key_id, int(self.clock.time()), body)
        try:
            async with asyncio.timeout(self.timeout_seconds):  # the whole exchange, not each read
                error = await self._post(client, delivery.url, body, headers)
        except InvalidInputError as refused:
            await anyio.to_thread.run_sync(self.store.webhooks.mark_failed_attempt, delivery.id, str(refused), None)
            self.on_attempt("dropped")
            logger.warning("webhook for %s dropped: %s", record.id, refused)
            return
        except TimeoutError:
            error = f"no complete answer within {self.timeout_seconds:g} s"
        if error is None:
            await anyio.to_thread.run_sync(self.store.webhooks.mark_delivered, delivery.id, self.clock.time())
            self.on_attempt("delivered")
            logger.info("webhook for %s delivered (attempt %d)", record.id, delivery.attempts)
            return
        await self._record_failure(delivery, error)

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """POST to the address the URL resolves to now (checked); None on success, else what failed."""
        target = await anyio.to_thread.run_sync(resolve_webhook_target, url, self.allowed_networks)
        try:
            async with client.stream(
                "POST",
                target.connect_url,
                content=body,
                headers=headers | {"Host": target.host_header},
                extensions={"sni_hostname": target.server_name},
            ) as response:  # the status is the answer; the body is never read
                return None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as failure:
            return f"{type(failure).__name__}: {failure}"

    async def _record_failure(self, delivery: WebhookDelivery, error: str) -> None:
        retry_at = (
            self.clock.time() + self.retry_delay(delivery.attempts) if delivery.attempts < self.max_attempts else None
        )
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
