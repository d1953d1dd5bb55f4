"""What an outside test campaign broke, each as it was reported: hostile input answers a clear 4xx
in fal's format, nothing unreadable is ever stored, and served files cannot run script here."""

from __future__ import annotations

import base64
import re
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


def png_data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


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


def test_files_declared_as_images_must_decode(idle_client: TestClient) -> None:
    token = idle_client.post("/rest/storage/auth/token").json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    for content_type, body in (
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50),
        ("image/png", png_bomb(30000, 30000)),
        ("image/jpeg", png_bytes()),
        ("image/webp", b"Hello, World!"),
    ):
        answer = idle_client.post("/cdn/files/upload", content=body, headers=bearer | {"Content-Type": content_type})
        assert answer.status_code == 415, content_type
        assert answer.json()["error_type"] == "bad_request"
    assert idle_client.post(INITIATE, json={"content_type": "not a type"}).status_code == 415


SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
ANY_FILES = {
    "hello.txt": ("text/plain", b"Hello, World!"),
    "notes.txt": ("text/plain; charset=utf-8", "Grüße\n".encode()),
    "lora.safetensors": ("application/octet-stream", bytes(range(256)) * 4),
    "evil.svg": ("image/svg+xml", SVG),
    "evil.html": ("text/html", b"<script>alert(document.cookie)</script>"),
}


def _assert_served_as_attachment(client: TestClient, url: str, name: str, media_type: str, body: bytes) -> None:
    for method in ("GET", "HEAD"):
        served = client.request(method, url.removeprefix("http://testserver"))
        assert served.status_code == 200, (name, method)
        assert served.headers["content-disposition"] == f'attachment; filename="{name}"'
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["content-security-policy"] == "default-src 'none'; sandbox"
        assert served.headers["content-type"].split(";")[0] == media_type
        assert served.headers["content-length"] == str(len(body))
        if method == "GET":
            assert served.content == body


@pytest.mark.parametrize("name", list(ANY_FILES))
def test_any_file_is_uploaded_and_served_as_an_attachment(idle_client: TestClient, name: str) -> None:
    content_type, body = ANY_FILES[name]
    media_type = content_type.split(";")[0]
    token = idle_client.post("/rest/storage/auth/token").json()["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type, "X-Fal-File-Name": name}
    uploaded = idle_client.post("/cdn/files/upload", content=body, headers=headers)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["content_type"] == media_type and uploaded.json()["file_size"] == len(body)
    _assert_served_as_attachment(idle_client, uploaded.json()["access_url"], name, media_type, body)
    # The JS client's way: initiate, then PUT the bytes to the signed URL without credentials.
    started = idle_client.post(INITIATE, json={"file_name": name, "content_type": content_type})
    assert started.status_code == 200, started.text
    put = idle_client.put(
        started.json()["upload_url"].removeprefix("http://testserver"),
        content=body,
        headers={"Content-Type": content_type, "Authorization": ""},
    )
    assert put.status_code == 200, put.text
    _assert_served_as_attachment(idle_client, started.json()["file_url"], name, media_type, body)


def test_an_uploaded_text_file_is_not_an_image_input(idle_client: TestClient) -> None:
    token = idle_client.post("/rest/storage/auth/token").json()["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain", "X-Fal-File-Name": "hello.txt"}
    url = idle_client.post("/cdn/files/upload", content=b"Hello, World!", headers=headers).json()["access_url"]
    submitted = idle_client.post(f"/queue{APP}/image-to-image", json=SMALL | {"image_url": url}).json()
    response = idle_client.get(submitted["response_url"].removeprefix("http://testserver"))
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "image_url"] and "not a PNG, JPEG or WebP image" in problem["msg"]


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
        assert served.headers["content-disposition"] == 'inline; filename="a.png"'
    assert idle_client.head(path + "x").status_code == 404
    page = idle_client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert idle_client.get(f"/queue{APP}/requests/x/status").headers["x-content-type-options"] == "nosniff"


def test_posting_to_a_request_route_is_not_a_submission(idle_client: TestClient) -> None:
    request_id = idle_client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
    for endpoint in ("", "/image-to-image"):
        for suffix, allowed in (("/cancel", "PUT"), ("/status", "GET"), ("/status/stream", "GET"), ("", "GET")):
            response = idle_client.post(f"/queue{APP}{endpoint}/requests/{request_id}{suffix}", json={})
            assert response.status_code == 405, (endpoint, suffix)
            assert response.headers["allow"] == allowed, (endpoint, suffix)
    assert len(idle_client.get("/api/requests").json()["requests"]) == 1


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def test_a_405_names_exactly_the_methods_the_path_takes(idle_client: TestClient) -> None:
    paths = idle_client.get("/openapi.json").json()["paths"]
    under_endpoint = f"/queue{APP}/foreground-to-blended/requests/{{id}}"
    sub_paths = {f"{under_endpoint}{suffix}": {"get"} for suffix in ("", "/status", "/status/stream")}
    sub_paths[f"{under_endpoint}/cancel"] = {"put"}
    for path, operations in {**paths, **sub_paths}.items():
        url = re.sub(r"\{[^}]+\}", "no-such-id", path)
        documented = {method.upper() for method in operations}
        answers = {method: idle_client.request(method, url) for method in METHODS if method not in documented}
        refused = {method for method, answer in answers.items() if answer.status_code == 405}
        accepted = ", ".join(method for method in METHODS if method not in refused)
        for method in refused:
            assert answers[method].headers["allow"] == accepted, (method, path)
        assert refused, path


def test_a_405_from_a_mounted_folder_keeps_its_own_allow(idle_client: TestClient) -> None:
    refused = idle_client.post("/playground/playground.js")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


def test_request_routes_answer_under_an_endpoint_sub_path_too(idle_client: TestClient) -> None:
    submitted = idle_client.post(f"/queue{APP}/image-to-image", json=SMALL | {"image_url": png_data_uri()}).json()
    request_id = submitted["request_id"]
    for endpoint in ("", "/image-to-image", "/foreground-to-blended"):
        base = f"/queue{APP}{endpoint}/requests/{request_id}"
        status = idle_client.get(f"{base}/status")
        assert status.status_code == 202 and status.json()["request_id"] == request_id, endpoint
        assert idle_client.get(base).json()["detail"] == "Request is still in progress", endpoint
        assert idle_client.get(f"/queue{APP}{endpoint}/requests/no-such-id/status/stream").status_code == 404
    assert idle_client.put(f"/queue{APP}/image-to-image/requests/{request_id}/cancel").status_code == 202
    with idle_client.stream("GET", f"/queue{APP}/image-to-image/requests/{request_id}/status/stream") as stream:
        assert stream.status_code == 200 and "COMPLETED" in stream.read().decode()
    assert idle_client.get(f"/queue{APP}/image-to-image/requests/{request_id}").status_code == 499


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


def test_image_fields_document_what_they_accept_and_the_api_checks_just_that(idle_client: TestClient) -> None:
    schemas = idle_client.get("/openapi.json").json()["components"]["schemas"]
    documented = {
        (model, field): schema
        for model, body in schemas.items()
        for field, schema in body.get("properties", {}).items()
        if field.endswith("image_url")
    }
    assert len(documented) >= 7
    patterns = {schema["pattern"] for schema in documented.values()}
    assert {schema["format"] for schema in documented.values()} == {"uri"} and len(patterns) == 1
    pattern = re.compile(patterns.pop())
    image = png_data_uri()
    for value in (image, "DATA:" + image[5:], "Data:" + image[5:], "HTTPS://127.0.0.1/a.png", "ftp://x/a.png", "a.png"):
        submitted = idle_client.post(f"/queue{APP}/image-to-image", json=SMALL | {"image_url": value}).json()
        status = idle_client.get(f"/queue{APP}/requests/{submitted['request_id']}/status").json()
        result = idle_client.get(f"/queue{APP}/requests/{submitted['request_id']}")
        if pattern.match(value) and value.lower().startswith("data:"):
            assert status["status"] == "IN_QUEUE", value  # a decodable image: admitted
        else:
            assert result.status_code == 422, value
            problem = result.json()["detail"][0]
            assert problem["loc"] == ["body", "image_url"], value
            assert "webhook URL" not in problem["msg"], value
            if not pattern.match(value):
                assert problem["msg"].startswith("must be an http(s) URL"), (value, problem)


def test_file_urls_come_from_the_files_origin_when_one_is_set(
    settings: Settings, tmp_path: Path, tiny_pipeline: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERDIFFUSE_FILES_PUBLIC_URL", "https://files.example/")
    from_env = Settings().files_public_url
    assert from_env == "https://files.example/"
    configured = server_settings(settings, tmp_path, public_url="https://api.example", files_public_url=from_env)
    files = build_services(configured, lambda: tiny_pipeline, model_name="tiny")
    with TestClient(create_app(files)) as client:
        client.headers["Authorization"] = f"Key {issue_key(files.store.keys, 'tests').value}"
        token = client.post("/rest/storage/auth/token").json()
        assert token["base_url"] == "https://api.example/cdn"  # uploads go to the API
        headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png", "X-Fal-File-Name": "a.png"}
        uploaded = client.post("/cdn/files/upload", content=png_bytes(), headers=headers).json()["access_url"]
        assert uploaded.startswith("https://files.example/files/")
        assert client.get(uploaded.removeprefix("https://files.example")).content == png_bytes()
        started = client.post(INITIATE, json={"file_name": "b.txt", "content_type": "text/plain"}).json()
        assert started["upload_url"].startswith("https://api.example/files/upload/")
        assert started["file_url"].startswith("https://files.example/files/")
        output = client.post(f"/run{APP}/image-to-image", json=SMALL | {"image_url": uploaded}).json()
        assert output["image"]["url"].startswith("https://files.example/files/"), output
        assert "https://files.example" in client.get("/").headers["content-security-policy"]


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
