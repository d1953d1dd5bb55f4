"""Webhook signatures, target checks and the retrying deliverer (with a mock HTTP transport)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.signing import SigningKey, verify_signature
from layerdiffuse_server.store import NewRequest, open_store
from layerdiffuse_server.store.contracts import Completion
from layerdiffuse_server.webhooks.delivery import WebhookDeliverer
from layerdiffuse_server.webhooks.targets import check_webhook_url, parse_networks


def test_signatures_verify_against_the_published_jwks(tmp_path: Path) -> None:
    key = SigningKey.load_or_create(tmp_path / "key.pem")
    assert SigningKey.load_or_create(tmp_path / "key.pem").jwks() == key.jwks()  # stable across restarts
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    body = b'{"status":"OK"}'
    headers = key.webhook_headers("req-1", "user-1", 1_700_000_000, body)
    assert len(bytes.fromhex(headers["X-Fal-Webhook-Signature"])) == 64
    assert verify_signature(key.jwks(), headers, body)
    assert not verify_signature(key.jwks(), headers, body + b" ")
    assert not verify_signature(SigningKey.load_or_create(tmp_path / "other.pem").jwks(), headers, body)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/x", "http://localhost:8080/x", "http://10.0.0.8/x", "http://[::1]/x", "ftp://a.b/x", "/x"]
)
def test_private_and_malformed_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError, match="webhook URL refused"):
        check_webhook_url(url, [])


def test_an_allowed_network_opens_it() -> None:
    assert check_webhook_url("http://127.0.0.1:9/x", parse_networks(["127.0.0.1/32"]))
    with pytest.raises(InvalidInputError):
        check_webhook_url("http://127.0.0.2:9/x", parse_networks(["127.0.0.1/32"]))


def test_delivery_is_retried_with_backoff_then_recorded(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    request_id = str(uuid.uuid4())
    store.requests.create(
        NewRequest(id=request_id, app_id="a/b", key_id="key-1", input={}, webhook_url="http://127.0.0.1:9/hook"),
        time.time(),
    )
    store.requests.claim_next("w", time.time())
    store.requests.complete(request_id, Completion(422, {"detail": [{"loc": ["body"]}]}, error="bad"), time.time())
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503 if len(calls) == 1 else 204)

    signing_key = SigningKey.load_or_create(tmp_path / "key.pem")
    attempts: list[str] = []
    deliverer = WebhookDeliverer(
        store,
        signing_key,
        allowed_networks=parse_networks(["127.0.0.1/32"]),
        max_attempts=3,
        retry_seconds=0.05,
        timeout_seconds=1,
        transport=httpx.MockTransport(answer),
        on_attempt=attempts.append,
    )

    async def scenario() -> None:
        task = asyncio.create_task(deliverer.run())
        for _ in range(200):
            if store.webhooks.get_for_request(request_id).state == "delivered":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(scenario())
    delivery = store.webhooks.get_for_request(request_id)
    assert delivery is not None and delivery.state == "delivered" and delivery.attempts == 2
    assert attempts == ["retrying", "delivered"]
    payload = json.loads(calls[-1].content)
    assert payload == {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "ERROR",
        "payload": {"detail": [{"loc": ["body"]}]},
        "error": "Invalid status code: 422",
    }
    assert calls[-1].headers["x-fal-webhook-user-id"] == "key-1"
    assert verify_signature(signing_key.jwks(), dict(calls[-1].headers), calls[-1].content)
    assert deliverer.retry_delay(1) == 0.05 and deliverer.retry_delay(3) == 0.2
