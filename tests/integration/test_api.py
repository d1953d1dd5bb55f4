"""The API in-process (FastAPI's TestClient, real SQLite store, real tiny model): protocol details
that the official clients do not exercise one by one."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from layerdiffuse_server.api import Services, create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.lifecycle.retention import sweep
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.testing import FakeClock

from ..support.images import png_bytes
from .api_support import APP, SMALL, server_settings, wait_completed


def test_sync_run_returns_a_stored_transparent_png(client: TestClient) -> None:
    response = client.post(f"/run{APP}", json=SMALL)
    assert response.status_code == 200, response.text
    assert response.headers["x-fal-request-id"]
    output = response.json()
    assert output["seed"] == 5 and output["has_nsfw_concepts"] == [False]
    image = output["image"]
    assert (image["width"], image["height"], image["content_type"]) == (64, 64, "image/png")
    download = client.get(image["url"].removeprefix("http://testserver"))
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert len(download.content) == image["file_size"]
    assert Image.open(io.BytesIO(download.content)).mode == "RGBA"


def test_queue_lifecycle_status_codes_logs_and_urls(client: TestClient) -> None:
    submitted = client.post(f"/queue{APP}", json=SMALL).json()
    request_id = submitted["request_id"]
    assert submitted["status"] == "IN_QUEUE" and isinstance(submitted["queue_position"], int)
    assert submitted["status_url"] == f"http://testserver/queue{APP}/requests/{request_id}/status"
    assert submitted["response_url"] == f"http://testserver/queue{APP}/requests/{request_id}"
    assert submitted["cancel_url"] == f"http://testserver/queue{APP}/requests/{request_id}/cancel"
    done = wait_completed(client, request_id)
    assert done["status"] == "COMPLETED" and "error" not in done
    assert done["metrics"]["inference_time"] > 0
    messages = [entry["message"] for entry in done["logs"]]
    assert "Denoising step 2/2" in messages and any(m.startswith("Decoded") for m in messages)
    assert any(m.startswith("Model 'tiny'") for m in messages) and any(m.startswith("Uploaded") for m in messages)
    assert all(entry["source"] == "USER" and entry["timestamp"].endswith("Z") for entry in done["logs"])
    without_logs = client.get(f"/queue{APP}/requests/{request_id}/status").json()
    assert without_logs["logs"] is None  # the key is always there: fal_client needs it
    result = client.get(f"/queue{APP}/requests/{request_id}")
    assert result.status_code == 200 and result.json()["seed"] == 5
    assert result.headers["x-fal-request-id"] == request_id
    assert client.put(f"/queue{APP}/requests/{request_id}/cancel").json() == {"status": "ALREADY_COMPLETED"}


def test_status_stream_sends_only_new_logs_and_ends_with_completed(client: TestClient) -> None:
    request_id = client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
    events = []
    with client.stream("GET", f"/queue{APP}/requests/{request_id}/status/stream", params={"logs": "1"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events[-1]["status"] == "COMPLETED"
    messages = [entry["message"] for event in events for entry in (event["logs"] or [])]
    assert len(messages) == len(set(messages)), "a log line was sent twice"
    assert "Denoising step 1/2" in messages and "Request completed." in messages


def test_invalid_input_is_immediate_on_run_and_deferred_on_the_queue(client: TestClient) -> None:
    run = client.post(f"/run{APP}", json={"guidance_scale": 99, "num_inference_steps": 0})
    assert run.status_code == 422
    fields = {tuple(problem["loc"]) for problem in run.json()["detail"]}
    assert fields == {("body", "guidance_scale"), ("body", "num_inference_steps")}
    assert client.post(f"/run{APP}", json={"size": 3}).json()["detail"][0]["type"] == "extra_forbidden"
    assert client.post(f"/run{APP}", content=b"{not json").status_code == 422
    submitted = client.post(f"/queue{APP}", json={"seed": -1})
    assert submitted.status_code == 200
    request_id = submitted.json()["request_id"]
    status = client.get(f"/queue{APP}/requests/{request_id}/status")
    assert status.status_code == 200 and status.json()["error_type"] == "validation_error"
    result = client.get(f"/queue{APP}/requests/{request_id}")
    assert result.status_code == 422 and result.json()["detail"][0]["loc"] == ["body", "seed"]


def test_empty_body_means_all_defaults(idle_client: TestClient) -> None:
    submitted = idle_client.post(f"/queue{APP}", content=b"", headers={"Content-Type": "application/json"})
    assert submitted.status_code == 200 and submitted.json()["status"] == "IN_QUEUE"


def test_auth_is_required_and_requests_are_private_to_their_key(client: TestClient, services: Services) -> None:
    request_id = client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
    wait_completed(client, request_id)
    anonymous = client.get(f"/queue{APP}/requests/{request_id}", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.headers["x-fal-error-type"] == "unauthorized"
    assert isinstance(anonymous.json()["detail"], str)
    wrong = client.post(f"/run{APP}", json=SMALL, headers={"Authorization": "Key abc:def"})
    assert wrong.status_code == 401
    other = {"Authorization": f"Key {issue_key(services.store.keys, 'other').value}"}
    assert client.get(f"/queue{APP}/requests/{request_id}", headers=other).status_code == 404
    assert client.get(f"/queue{APP}/requests/{request_id}/status", headers=other).status_code == 404
    assert client.put(f"/queue{APP}/requests/{request_id}/cancel", headers=other).status_code == 404
    admin = {"Authorization": f"Key {issue_key(services.store.keys, 'admin', admin=True).value}"}
    assert client.get(f"/queue{APP}/requests/{request_id}", headers=admin).status_code == 200
    revoked = issue_key(services.store.keys, "revoked")
    services.store.keys.revoke(revoked.key.id, time.time())
    assert client.post(f"/queue{APP}", json=SMALL, headers={"Authorization": f"Key {revoked.value}"}).status_code == 401


def test_cancel_of_a_queued_request_and_priorities(idle_client: TestClient) -> None:
    first = idle_client.post(f"/queue{APP}", json=SMALL).json()
    low = idle_client.post(f"/queue{APP}", json=SMALL, headers={"X-Fal-Queue-Priority": "low"}).json()
    second = idle_client.post(f"/queue{APP}", json=SMALL).json()
    assert (first["queue_position"], low["queue_position"], second["queue_position"]) == (0, 1, 1)
    low_status = idle_client.get(f"/queue{APP}/requests/{low['request_id']}/status").json()
    assert low_status["queue_position"] == 2  # normal priority goes first
    assert idle_client.get(f"/queue{APP}/requests/{first['request_id']}").status_code == 400  # not done yet
    cancel = idle_client.put(f"/queue{APP}/requests/{first['request_id']}/cancel")
    assert cancel.status_code == 202 and cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    status = idle_client.get(f"/queue{APP}/requests/{first['request_id']}/status")
    assert status.status_code == 200 and status.json()["error_type"] == "client_cancelled"
    assert idle_client.get(f"/queue{APP}/requests/{first['request_id']}").status_code == 499
    after = idle_client.get(f"/queue{APP}/requests/{second['request_id']}/status").json()
    assert after["queue_position"] == 0
    bad = idle_client.post(f"/queue{APP}", json=SMALL, headers={"X-Fal-Queue-Priority": "urgent"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "x-fal-queue-priority"]
    assert idle_client.put(f"/queue{APP}/requests/nope/cancel").json() == {"status": "NOT_FOUND"}


def test_cancel_stops_a_running_request_between_steps(client: TestClient) -> None:
    request_id = client.post(f"/queue{APP}", json=SMALL | {"num_inference_steps": 150}).json()["request_id"]
    deadline = time.monotonic() + 60
    while client.get(f"/queue{APP}/requests/{request_id}/status").json()["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.put(f"/queue{APP}/requests/{request_id}/cancel").status_code == 202
    done = wait_completed(client, request_id)
    assert done["error_type"] == "client_cancelled"
    steps = [entry["message"] for entry in done["logs"] if entry["message"].startswith("Denoising step")]
    assert 0 < len(steps) < 150


def test_start_timeout_expires_a_request_that_waited_too_long(settings: Settings, tmp_path: Path) -> None:
    clock = FakeClock()
    idle = build_services(server_settings(settings, tmp_path), None, model_name="tiny", clock=clock)
    with TestClient(create_app(idle)) as client:
        client.headers["Authorization"] = f"Key {issue_key(idle.store.keys, 'tests').value}"
        submitted = client.post(f"/queue{APP}", json=SMALL, headers={"X-Fal-Request-Timeout": "1.5"}).json()
        status_url = f"/queue{APP}/requests/{submitted['request_id']}/status"
        clock.advance(1.4)
        idle.manager.expire_deadlines()  # what housekeeping does, now
        assert client.get(status_url).json()["status"] == "IN_QUEUE"  # still inside its timeout
        clock.advance(0.2)
        idle.manager.expire_deadlines()
        result = client.get(f"/queue{APP}/requests/{submitted['request_id']}")
        assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
        assert result.json()["error_type"] == "request_timeout"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/queue{APP}", {}),
        (APP, {"Host": "queue.fal.run"}),
        ("/api/fal/proxy", {"x-fal-target-url": f"https://queue.fal.run{APP}"}),
    ],
    ids=["path-prefix", "host-header", "proxy-header"],
)
def test_every_way_of_reaching_the_queue(idle_client: TestClient, path: str, headers: dict[str, str]) -> None:
    response = idle_client.post(path, json=SMALL, headers=headers)
    assert response.status_code == 200, response.text
    status_url = response.json()["status_url"]
    if "x-fal-target-url" in headers:  # the JS client rebuilds fal's URL and sends it through the proxy again
        assert status_url.startswith(f"https://queue.fal.run{APP}/requests/")
        status = idle_client.get("/api/fal/proxy", headers={"x-fal-target-url": status_url})
    else:  # fal_client follows the returned URL, which leads back the way it came
        expected = "http://queue.fal.run" if "Host" in headers else "http://testserver/queue"
        assert status_url.startswith(f"{expected}{APP}/requests/")
        status = idle_client.get(urlsplit(status_url).path, headers=headers)
    assert status.status_code == 202 and status.json()["status"] == "IN_QUEUE"


def test_proxy_refuses_foreign_targets(idle_client: TestClient) -> None:
    response = idle_client.post("/api/fal/proxy", json={}, headers={"x-fal-target-url": "https://example.com/x"})
    assert response.status_code == 400
    assert idle_client.post("/api/fal/proxy", json={}).status_code == 400


def test_webhook_targets_on_private_networks_are_refused(idle_client: TestClient) -> None:
    for target in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "ftp://example.com/x"):
        response = idle_client.post(f"/queue{APP}", json=SMALL, params={"fal_webhook": target})
        assert response.status_code == 422, target
        assert response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_storage_initiate_and_put_is_single_use_and_checked(idle_client: TestClient) -> None:
    data = png_bytes()
    initiate = idle_client.post(
        "/rest/storage/upload/initiate", json={"file_name": "../../a b.png", "content_type": "image/png"}
    )
    assert initiate.status_code == 200
    upload_url, file_url = initiate.json()["upload_url"], initiate.json()["file_url"]
    assert file_url.endswith("/a_b.png")
    local = upload_url.removeprefix("http://testserver")
    assert idle_client.put(local, content=b"GIF89a-not-a-png", headers={"Authorization": ""}).status_code == 415
    assert idle_client.put(local, content=data, headers={"Authorization": ""}).status_code == 200
    assert idle_client.put(local, content=data, headers={"Authorization": ""}).status_code == 403
    assert idle_client.get(file_url.removeprefix("http://testserver")).content == data
    forged = local.rsplit("signature=", 1)[0] + "signature=AAAA"
    assert idle_client.put(forged, content=data).status_code == 403
    malformed = idle_client.post("/rest/storage/upload/initiate", json={"file_name": 7})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["loc"] == ["body", "file_name"]
    assert idle_client.put(local.rsplit("signature=", 1)[0] + "signature=é").status_code == 403
    refused = idle_client.post("/rest/storage/upload/initiate", json={"content_type": "not/a type"})
    assert refused.status_code == 415 and refused.headers["x-fal-error-type"] == "bad_request"


def test_storage_token_upload_and_size_limit(settings: Settings, tmp_path: Path) -> None:
    limited = build_services(server_settings(settings, tmp_path, max_upload_bytes=100), None, model_name="tiny")
    with TestClient(create_app(limited)) as client:
        key = issue_key(limited.store.keys, "tests").value
        token = client.post("/rest/storage/auth/token", headers={"Authorization": f"Key {key}"}).json()
        assert token["token_type"] == "Bearer" and token["expires_at"].endswith("+00:00")
        bearer = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
        small = png_bytes((1, 1))
        assert len(small) <= 100
        uploaded = client.post("/cdn/files/upload", content=small, headers=bearer | {"X-Fal-File-Name": "a.png"})
        assert uploaded.status_code == 200 and uploaded.json()["access_url"].endswith("/a.png")
        assert client.post("/cdn/files/upload", content=b"x" * 101, headers=bearer).status_code == 413
        forged = {"Authorization": "Bearer " + token["token"][:-4] + "AAAA", "Content-Type": "image/png"}
        assert client.post("/cdn/files/upload", content=small, headers=forged).status_code == 401


def test_openapi_documents_the_endpoint_schema(idle_client: TestClient) -> None:
    document = idle_client.get("/openapi.json").json()
    schema = document["components"]["schemas"]["LayerDiffusionInput"]["properties"]
    assert schema["negative_prompt"]["default"] == "text, watermark"
    assert schema["guidance_scale"]["default"] == 8 and schema["guidance_scale"]["maximum"] == 30
    assert schema["num_inference_steps"]["default"] == 20 and schema["num_inference_steps"]["maximum"] == 150
    assert schema["prompt"]["maxLength"] == 4000 and schema["enable_safety_checker"]["default"] is True
    output = document["components"]["schemas"]["LayerDiffusionOutput"]
    assert {"image", "seed"} <= set(output["required"])
    assert f"/queue{APP}" in document["paths"] and f"/run{APP}" in document["paths"]


def test_retention_deletes_old_requests_with_their_files(client: TestClient, services: Services) -> None:
    output = client.post(f"/run{APP}", json=SMALL).json()
    file_path = output["image"]["url"].removeprefix("http://testserver")
    assert client.get(file_path).status_code == 200
    hours = services.settings.retention_hours
    assert sweep(services.store, services.files, hours, now=time.time() + 3600) == (0, 0)  # inside retention
    requests_deleted, files_deleted = sweep(services.store, services.files, hours, now=time.time() + 200 * 3600)
    assert requests_deleted >= 1 and files_deleted >= 1
    assert client.get(file_path).status_code == 404


def test_a_model_that_fails_to_load_is_reported_not_waited_for(settings: Settings, tmp_path: Path) -> None:
    def broken_loader() -> object:
        raise RuntimeError("weights are corrupt")

    broken = build_services(server_settings(settings, tmp_path), broken_loader, model_name="tiny")  # type: ignore[arg-type]
    with TestClient(create_app(broken)) as client:
        client.headers["Authorization"] = f"Key {issue_key(broken.store.keys, 'tests').value}"
        deadline = time.monotonic() + 10
        while broken.local_worker is not None and broken.local_worker.load_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "weights are corrupt" in ready.json()["problems"]["model"]
        assert ready.json()["checks"] == {"model": False, "database": True, "files": True}
        assert ready.json()["worker"]["state"] == "failed"
        assert client.get("/healthz").status_code == 200
        response = client.post(f"/run{APP}", json=SMALL)
        assert response.status_code == 503 and "weights are corrupt" in response.json()["detail"]


def test_an_image_input_can_come_inline_beyond_the_plain_json_limit(client: TestClient) -> None:
    """A data: URI of a real photo is larger than the 1 MiB text endpoints read; image endpoints take
    room for their images (and the stored copy is what the request then names)."""
    import base64

    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(data_uri) > 1.5 * 2**20
    body = {"image_url": data_uri, "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}
    answer = client.post(f"/run{APP}/image-to-image", json=body)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["image"]["width"], answer.json()["image"]["height"]) == (64, 64)
    assert client.post(f"/run{APP}", json={"prompt": "x" * (2 * 2**20)}).status_code == 413


def test_a_queued_request_with_an_unreadable_image_completes_with_a_422(client: TestClient) -> None:
    submitted = client.post(f"/queue{APP}/background-to-blended", json={"background_image_url": "ftp://x/y.png"})
    assert submitted.status_code == 200
    status = wait_completed(client, submitted.json()["request_id"])
    assert status["status"] == "COMPLETED"
    result = client.get(submitted.json()["response_url"].split("testserver")[-1])
    assert result.status_code == 422 and result.json()["detail"][0]["loc"] == ["body", "background_image_url"]


def test_a_refused_submission_keeps_no_copy_of_its_images(settings: Settings, tmp_path: Path) -> None:
    """Images are stored before the queue is asked; when it refuses (full: 429), the copies go again."""
    import base64

    idle = build_services(server_settings(settings, tmp_path, max_queue_length=1), None, model_name="tiny")
    image = "data:image/png;base64," + base64.b64encode(png_bytes((32, 32))).decode()
    files = tmp_path / "data" / "files"

    def stored() -> list[str]:
        return sorted(path.name for path in files.rglob("*") if path.is_file()) if files.exists() else []

    with TestClient(create_app(idle)) as client:
        client.headers["Authorization"] = f"Key {issue_key(idle.store.keys, 'tests').value}"
        assert client.post(f"/queue{APP}/image-to-image", json={"image_url": image}).status_code == 200
        kept = stored()
        assert len(kept) == 1  # the first request's copy
        assert client.post(f"/queue{APP}/image-to-image", json={"image_url": image}).status_code == 429
        assert stored() == kept


def test_a_refused_input_is_kept_without_its_inline_image(idle_client: TestClient) -> None:
    huge = "data:image/png;base64," + "A" * 10_000  # not a PNG: refused as the request's result
    submitted = idle_client.post(f"/queue{APP}/image-to-image", json={"image_url": huge})
    assert submitted.status_code == 200
    listed = idle_client.get("/api/requests").json()["requests"][0]
    assert listed["status_code"] == 422 and listed["input"]["image_url"] == "<10022 characters, not stored>"
    assert listed["endpoint_id"] == "fal-ai/layer-diffusion/image-to-image"
