"""Webhook signatures (and key rotation), target rules, address pinning, and a deliverer that no
single delivery can stop."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.outbound import check_webhook_url, is_permitted, parse_networks
from layerdiffuse_server.signing import SigningKeys, generate_key_file, load_private_key, verify_signature
from layerdiffuse_server.store import NewRequest, Store
from layerdiffuse_server.store.contracts import Completion
from layerdiffuse_server.testing import FakeClock
from layerdiffuse_server.webhooks.delivery import WebhookDeliverer

LOOPBACK = parse_networks(["127.0.0.1/32"])


def test_signatures_verify_against_the_published_jwks(tmp_path: Path) -> None:
    key = SigningKeys.load_or_create(tmp_path / "key.pem")
    assert SigningKeys.load_or_create(tmp_path / "key.pem").jwks() == key.jwks()  # stable across restarts
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    body = b'{"status":"OK"}'
    headers = key.webhook_headers("req-1", "user-1", 1_700_000_000, body)
    assert len(bytes.fromhex(headers["X-Fal-Webhook-Signature"])) == 64
    assert verify_signature(key.jwks(), headers, body)
    assert not verify_signature(key.jwks(), headers, body + b" ")
    assert not verify_signature(SigningKeys.load_or_create(tmp_path / "other.pem").jwks(), headers, body)


def test_a_rotation_publishes_and_honours_the_previous_key(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.pem", tmp_path / "new.pem"
    generate_key_file(old_path)
    generate_key_file(new_path)
    old = SigningKeys.from_files(old_path)
    token = old.sign(b"claims")
    rotated = SigningKeys.from_files(new_path, [old_path])
    assert rotated.verify(b"claims", token) and not SigningKeys.from_files(new_path).verify(b"claims", token)
    assert [jwk["kid"] for jwk in rotated.jwks()["keys"]] == [rotated.key_id, old.key_id]
    headers = rotated.webhook_headers("r", "u", 1, b"{}")
    assert verify_signature(rotated.jwks(), headers, b"{}") and not verify_signature(old.jwks(), headers, b"{}")
    public_only = tmp_path / "old.pub.pem"
    from cryptography.hazmat.primitives import serialization

    public_only.write_bytes(
        load_private_key(old_path)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert SigningKeys.from_files(new_path, [public_only]).verify(b"claims", token)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/x",
        "http://10.0.0.8/x",
        "http://[::1]/x",
        "http://[64:ff9b::7f00:1]/x",  # NAT64 of 127.0.0.1
        "http://[::ffff:10.0.0.1]/x",  # IPv4-mapped
        "http://[2002:a00:1::]/x",  # 6to4 of 10.0.0.1
        "http://[::7f00:1]/x",  # IPv4-compatible form of 127.0.0.1
        "http://[fec0::1]/x",  # site-local
        "http://224.0.0.1/x",  # multicast
        "http://[ff02::1]/x",
        "http://0x7f.1/x",  # 127.0.0.1 as inet_aton reads it
        "http://01.1.1.1/x",  # not an address httpx will send to
        "http://user:secret@example.com/x",  # credentials would go out as Basic auth
        "http://example.com:99999/x",
        "ftp://a.b/x",
        "/x",
    ],
)
def test_private_malformed_and_credentialed_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError, match="webhook URL refused"):
        check_webhook_url(url, [])


def test_an_allowed_network_opens_it_and_names_resolve_to_the_allowed_address() -> None:
    assert check_webhook_url("http://127.0.0.1:9/x", LOOPBACK) == "http://127.0.0.1:9/x"
    assert check_webhook_url("http://localhost:9/x#frag", LOOPBACK) == "http://localhost:9/x"  # ::1 not needed
    with pytest.raises(InvalidInputError):
        check_webhook_url("http://127.0.0.2:9/x", LOOPBACK)
    assert is_permitted(ipaddress.ip_address("64:ff9b::101:101"), [])  # NAT64 of 1.1.1.1 is public
    assert not is_permitted(ipaddress.ip_address("64:ff9b::a00:1"), [])


def completed_with_webhook(store: Store, url: str, completion: Completion | None = None) -> str:
    request_id = str(uuid.uuid4())
    store.requests.create(
        NewRequest(id=request_id, app_id="a/b", key_id="key-1", input={}, webhook_url=url),
        time.time(),
        completion=completion or Completion(200, {"seed": 1}),
    )
    return request_id


def deliver_until(deliverer: WebhookDeliverer, done: object, seconds: float = 10) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(deliverer.run())
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:  # type: ignore[operator]
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(scenario())


def make_deliverer(store: Store, tmp_path: Path, transport: httpx.AsyncBaseTransport | None = None, **options: object):
    values = {"max_attempts": 3, "retry_seconds": 0.05, "timeout_seconds": 2} | options
    return WebhookDeliverer(
        store,
        SigningKeys.load_or_create(tmp_path / "key.pem"),
        allowed_networks=LOOPBACK,
        transport=transport,
        **values,  # type: ignore[arg-type]
    )


def test_delivery_is_retried_with_backoff_then_recorded(store: Store, tmp_path: Path) -> None:
    request_id = completed_with_webhook(
        store, "http://127.0.0.1:9/hook", Completion(422, {"detail": [{"loc": ["body"]}]}, error="bad")
    )
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503 if len(calls) == 1 else 204)

    attempts: list[str] = []
    clock = FakeClock()
    deliverer = make_deliverer(store, tmp_path, httpx.MockTransport(answer), on_attempt=attempts.append, clock=clock)
    deliver_until(deliverer, lambda: attempts == ["retrying"])
    clock.advance(0.04)  # not yet the retry delay (0.05 s of the clock)
    deliver_until(deliverer, lambda: len(calls) > 1, seconds=0.3)
    assert len(calls) == 1
    clock.advance(0.02)  # past it
    # on_attempt runs after the delivery is stored, so waiting for it covers both.
    deliver_until(deliverer, lambda: attempts == ["retrying", "delivered"])
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
    assert verify_signature(deliverer.signer.jwks(), dict(calls[-1].headers), calls[-1].content)
    assert deliverer.retry_delay(1) == 0.05 and deliverer.retry_delay(3) == 0.2


def test_one_broken_delivery_stops_no_other(store: Store, tmp_path: Path) -> None:
    poisoned = completed_with_webhook(store, "http://127.0.0.1:7/poison")
    healthy = completed_with_webhook(store, "http://127.0.0.1:8/fine")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/poison":
            raise RuntimeError("a bug, or an exception no one thought of")
        return httpx.Response(200)

    deliverer = make_deliverer(store, tmp_path, httpx.MockTransport(answer), max_attempts=1)
    deliver_until(
        deliverer,
        lambda: {store.webhooks.get_for_request(i).state for i in (poisoned, healthy)} == {"failed", "delivered"},  # type: ignore[union-attr]
    )
    assert store.webhooks.get_for_request(healthy).state == "delivered"  # type: ignore[union-attr]
    assert store.webhooks.get_for_request(poisoned).state == "failed"  # type: ignore[union-attr]


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A real HTTP server on 127.0.0.1 that records the headers of what it receives."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(dict(self.headers.items()))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


def test_delivery_connects_to_the_checked_address_however_dns_answers_next(
    store: Store, tmp_path: Path, receiver: tuple[int, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to an allowed address when checked and to another when the
    connection would resolve it again. The delivery goes to the checked address, with the name as Host."""
    port, received = receiver
    answers = iter(["127.0.0.1", "10.9.9.9", "10.9.9.9"])
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host: str, *args: object, **kwargs: object) -> list:
        if host == "hook.rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    request_id = completed_with_webhook(store, f"http://hook.rebind.test:{port}/hook")
    deliver_until(
        make_deliverer(store, tmp_path), lambda: store.webhooks.get_for_request(request_id).state != "pending"
    )  # type: ignore[union-attr]
    assert received and received[0]["Host"] == f"hook.rebind.test:{port}"
    assert store.webhooks.get_for_request(request_id).state == "delivered"  # type: ignore[union-attr]
    # The next resolution answers a private address: a later delivery to that name is refused, not sent there.
    other = completed_with_webhook(store, f"http://hook.rebind.test:{port}/again")
    deliver_until(make_deliverer(store, tmp_path), lambda: store.webhooks.get_for_request(other).state != "pending")  # type: ignore[union-attr]
    assert store.webhooks.get_for_request(other).state == "failed" and len(received) == 1  # type: ignore[union-attr]


def test_a_receiver_that_never_finishes_answering_holds_up_nothing(store: Store, tmp_path: Path) -> None:
    stalled = completed_with_webhook(store, "http://127.0.0.1:7/stall")
    healthy = completed_with_webhook(store, "http://127.0.0.1:8/fine")
    answered: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/stall":
            await asyncio.sleep(60)  # headers, then a byte now and then: never done
        answered.append(request.url.path)
        return httpx.Response(200)

    deliverer = make_deliverer(store, tmp_path, httpx.MockTransport(answer), timeout_seconds=0.5, max_attempts=1)
    started = time.monotonic()
    states = lambda: {store.webhooks.get_for_request(i).state for i in (stalled, healthy)}  # type: ignore[union-attr]  # noqa: E731
    deliver_until(deliverer, lambda: states() == {"failed", "delivered"})
    assert time.monotonic() - started < 5
    assert answered == ["/fine"] and store.webhooks.get_for_request(healthy).state == "delivered"  # type: ignore[union-attr]
