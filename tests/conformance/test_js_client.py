"""The unmodified ``@fal-ai/client`` 1.10.1 against a real server, through its ``proxyUrl`` setting."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from ..support.images import png_bytes
from .conftest import ServerProcess, run_js

pytestmark = pytest.mark.conformance

SMALL = {"prompt": "a paper lantern", "width": 64, "height": 64, "num_inference_steps": 3}
PNG_BYTES = png_bytes()


def test_run_returns_data_and_request_id(node: str, server: ServerProcess, api_key: str) -> None:
    outcome = run_js(node, server, api_key, "run", {"input": SMALL | {"seed": 9}})
    assert outcome["ok"], outcome
    assert outcome["requestId"] and outcome["data"]["seed"] == 9
    assert httpx.get(outcome["data"]["image"]["url"]).headers["content-type"] == "image/png"


def test_num_images_returns_every_image(node: str, server: ServerProcess, api_key: str) -> None:
    outcome = run_js(node, server, api_key, "run", {"input": SMALL | {"seed": 30, "num_images": 3}})
    assert outcome["ok"], outcome
    data = outcome["data"]
    assert data["seed"] == 30 and data["image"] == data["images"][0] and len(data["images"]) == 3
    assert len({image["url"] for image in data["images"]}) == 3
    assert all(httpx.get(image["url"]).headers["content-type"] == "image/png" for image in data["images"])


def test_streaming_subscribe_gets_each_log_line_once(node: str, server: ServerProcess, api_key: str) -> None:
    outcome = run_js(node, server, api_key, "streaming", {"input": SMALL})
    assert outcome["ok"], outcome
    updates = outcome["updates"]
    assert updates[-1]["status"] == "COMPLETED"
    final_logs = updates[-1]["logs"]  # the client accumulates: duplicates would show here
    assert len(final_logs) == len(set(final_logs))
    assert "Denoising step 3/3" in final_logs and "Request completed." in final_logs
    assert outcome["data"]["image"]["width"] == 64


def test_polling_subscribe(node: str, server: ServerProcess, api_key: str) -> None:
    outcome = run_js(node, server, api_key, "polling", {"input": SMALL})
    assert outcome["ok"], outcome
    assert outcome["statuses"][-1] == "COMPLETED" and outcome["requestId"]


def test_submit_status_result_and_cancel(node: str, server: ServerProcess, api_key: str) -> None:
    submitted = run_js(node, server, api_key, "submit", {"input": SMALL})["submitted"]
    assert submitted["status"] == "IN_QUEUE" and submitted["request_id"]
    request_id = submitted["request_id"]
    deadline = time.monotonic() + 120
    while (status := run_js(node, server, api_key, "status", {"requestId": request_id})["status"])[
        "status"
    ] != "COMPLETED":
        assert time.monotonic() < deadline
    assert any(log["message"] == "Request completed." for log in status["logs"])
    result = run_js(node, server, api_key, "result", {"requestId": request_id})
    assert result["ok"] and result["requestId"] == request_id and "image" in result["data"]
    late = run_js(node, server, api_key, "cancel", {"requestId": request_id})
    assert late["error"] == {"kind": "ApiError", "status": 400, "body": {"status": "ALREADY_COMPLETED"}}


def test_cancel_of_a_queued_request(node: str, server: ServerProcess, api_key: str) -> None:
    busy = run_js(node, server, api_key, "submit", {"input": SMALL | {"num_inference_steps": 150, "width": 128}})
    queued = run_js(node, server, api_key, "submit", {"input": SMALL, "priority": "low"})["submitted"]
    assert run_js(node, server, api_key, "cancel", {"requestId": queued["request_id"]})["ok"]
    cancelled = run_js(node, server, api_key, "result", {"requestId": queued["request_id"]})
    assert cancelled["error"]["status"] == 499
    run_js(node, server, api_key, "cancel", {"requestId": busy["submitted"]["request_id"]})


def test_validation_errors_immediate_and_deferred(node: str, server: ServerProcess, api_key: str) -> None:
    immediate = run_js(node, server, api_key, "run", {"input": {"seed": "abc"}})
    assert immediate["error"]["kind"] == "ValidationError" and immediate["error"]["status"] == 422
    assert immediate["error"]["fieldErrors"][0]["loc"] == ["body", "seed"]
    deferred = run_js(node, server, api_key, "polling", {"input": {"guidance_scale": -1}})
    assert deferred["error"]["kind"] == "ValidationError"
    assert deferred["error"]["fieldErrors"][0]["loc"] == ["body", "guidance_scale"]
    unknown = run_js(node, server, api_key, "run", {"input": {"model_name": "no-such-model"}})
    assert unknown["error"]["kind"] == "ValidationError" and unknown["error"]["status"] == 422
    assert unknown["error"]["fieldErrors"][0]["loc"] == ["body", "model_name"]


def test_storage_upload_and_blob_auto_upload(node: str, server: ServerProcess, api_key: str) -> None:
    encoded = base64.b64encode(PNG_BYTES).decode()
    uploaded = run_js(node, server, api_key, "upload", {"base64": encoded, "contentType": "image/png"})
    assert uploaded["ok"], uploaded
    assert uploaded["status"] == 200 and uploaded["contentType"] == "image/png" and uploaded["size"] == len(PNG_BYTES)
    transformed = run_js(node, server, api_key, "autoUpload", {"base64": encoded})["transformed"]
    assert transformed["prompt"] == "x" and httpx.get(transformed["image"]).content == PNG_BYTES


def test_storage_upload_of_a_text_file(node: str, server: ServerProcess, api_key: str) -> None:
    uploaded = run_js(node, server, api_key, "uploadTextFile", {})
    assert uploaded["ok"], uploaded
    assert uploaded["status"] == 200 and uploaded["text"] == "Hello, World!"
    assert uploaded["url"].endswith("/hello.txt")
    headers = uploaded["headers"]
    assert headers["content-type"].split(";")[0] == "text/plain"
    assert headers["content-disposition"] == 'attachment; filename="hello.txt"'
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"


def test_unauthenticated_calls_get_401(node: str, server: ServerProcess) -> None:
    outcome = run_js(node, server, "nobody:secret", "run", {"input": SMALL})
    assert outcome["error"]["kind"] == "ApiError" and outcome["error"]["status"] == 401
