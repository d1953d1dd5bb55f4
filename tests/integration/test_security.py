"""What an outside test campaign broke, each as it was reported: hostile input answers a clear 4xx
in fal's format, nothing unreadable is ever stored, and served files cannot run script here."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from layerdiffuse_server.api import create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings

from ..support.images import png_bytes
from ..unit.test_content import png_bomb
from .api_support import APP, SMALL, server_settings

INITIATE = "/rest/storage/upload/initiate"
HOSTILE_BODIES = {
    "overflowing number": b'{"guidance_scale": 1e309}',
    "NaN": b'{"guidance_scale": NaN}',
    "Infinity": b'{"guidance_scale": -Infinity}',
    "lone surrogate": b'{"prompt": "x\\ud800y"}',
    "surrogate in a key": b'{"\\udfff": 1}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "huge integer": b'{"seed": ' + b"9" * 5_000 + b"}",
    "invalid UTF-8": b'{"prompt": "\xff\xfe"}',
}


@pytest.mark.parametrize("path", [f"/run{APP}", f"/queue{APP}", INITIATE])
@pytest.mark.parametrize("body", list(HOSTILE_BODIES.values()), ids=list(HOSTILE_BODIES))
def test_hostile_json_is_a_422_everywhere_and_nothing_is_stored(
    idle_client: TestClient, path: str, body: bytes
) -> None:
    response = idle_client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body"] and problem["msg"].startswith("the body is not valid JSON")
    gallery = idle_client.get("/api/requests")
    assert gallery.status_code == 200 and gallery.json()["requests"] == []


def test_strict_types_as_fal_declares_them(idle_client: TestClient) -> None:
    for field, value in (("enable_safety_checker", 0), ("num_inference_steps", "20"), ("seed", 1.5)):
        response = idle_client.post(f"/run{APP}", json={field: value})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field], field


def test_webhook_urls_are_checked_by_the_parser_that_sends_them(idle_client: TestClient) -> None:
    for target in ("http://01.1.1.1/x", "http://user:pw@example.com/x", "http://[::1]:9/x", "http://a.b:70000/x"):
        response = idle_client.post(f"/queue{APP}", json=SMALL, params={"fal_webhook": target})
        assert response.status_code == 422, target
        assert response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_only_raster_images_that_decode_are_uploaded(idle_client: TestClient) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    token = idle_client.post("/rest/storage/auth/token").json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    for content_type, body in (
        ("image/svg+xml", svg),
        ("text/html", b"<script>alert(1)</script>"),
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50),
        ("image/png", png_bomb(30000, 30000)),
        ("image/jpeg", png_bytes()),
    ):
        answer = idle_client.post("/cdn/files/upload", content=body, headers=bearer | {"Content-Type": content_type})
        assert answer.status_code == 415, content_type
        assert answer.json()["error_type"] == "bad_request"
    assert idle_client.post(INITIATE, json={"content_type": "image/svg+xml"}).status_code == 415


def test_served_files_and_pages_carry_protective_headers(idle_client: TestClient) -> None:
    token = idle_client.post("/rest/storage/auth/token").json()["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png", "X-Fal-File-Name": "a.png"}
    url = idle_client.post("/cdn/files/upload", content=png_bytes(), headers=headers).json()["access_url"]
    path = url.removeprefix("http://testserver")
    for method in ("GET", "HEAD"):
        served = idle_client.request(method, path)
        assert served.status_code == 200, method
        assert served.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in served.headers["content-security-policy"]
        assert served.headers["content-type"] == "image/png"
        assert served.headers["content-length"] == str(len(png_bytes()))
    assert idle_client.head(path + "x").status_code == 404
    page = idle_client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert idle_client.get(f"/queue{APP}/requests/x/status").headers["x-content-type-options"] == "nosniff"


def test_posting_to_a_request_route_is_not_a_submission(idle_client: TestClient) -> None:
    request_id = idle_client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
    for suffix in ("/cancel", "/status", ""):
        response = idle_client.post(f"/queue{APP}/requests/{request_id}{suffix}", json={})
        assert response.status_code == 405 and response.headers["allow"] == "GET, PUT"
    assert len(idle_client.get("/api/requests").json()["requests"]) == 1


def test_a_full_queue_answers_429_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    limited = build_services(server_settings(settings, tmp_path, max_queue_length=2))
    with TestClient(create_app(limited)) as client:
        client.headers["Authorization"] = f"Key {issue_key(limited.store.keys, 'tests').value}"
        assert [client.post(f"/queue{APP}", json=SMALL).status_code for _ in range(2)] == [200, 200]
        full = client.post(f"/queue{APP}", json=SMALL)
        assert full.status_code == 429 and full.headers["retry-after"] == "10"
        assert full.json()["error_type"] == "rate_limited"


def test_openapi_documents_errors_and_the_event_stream(idle_client: TestClient) -> None:
    paths = idle_client.get("/openapi.json").json()["paths"]
    submit = paths[f"/queue{APP}"]["post"]["responses"]
    assert {"200", "401", "422", "429"} <= set(submit)
    stream = paths[f"/queue{APP}/requests/{{request_id}}/status/stream"]["get"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"]
    status = paths[f"/queue{APP}/requests/{{request_id}}/status"]["get"]["responses"]
    assert {"200", "202", "404"} <= set(status)


def wide_image_uri() -> str:
    """142 bytes of PNG that decode to a 65536×1 strip (it once took gigabytes and 98 s to fit)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes((65536, 1))).decode()


@pytest.mark.parametrize("width", [64, None])
def test_a_wide_strip_is_refused_at_admission_naming_its_field(idle_client: TestClient, width: int | None) -> None:
    body = {"prompt": "x", "image_url": wide_image_uri(), **({"width": width, "height": width} if width else {})}
    started = time.monotonic()
    queued = idle_client.post(f"/queue{APP}/image-to-image", json=body)
    assert queued.status_code == 200  # the queue reports it as the request's result, as fal does
    result = idle_client.get(f"/queue{APP}/requests/{queued.json()['request_id']}")
    assert result.status_code == 422 and result.json()["detail"][0]["loc"] == ["body", "image_url"]
    answer = idle_client.post(f"/run{APP}/image-to-image", json=body)
    assert answer.status_code == 422, answer.text
    (detail,) = answer.json()["detail"]
    assert detail["loc"] == ["body", "image_url"] and "sides of at most 16,384 pixels" in detail["msg"]
    assert time.monotonic() - started < 5
