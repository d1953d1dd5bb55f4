"""The unmodified ``fal_client`` 1.0.3 against a real server, configured by environment variables only."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from layerdiffuse_server.signing import verify_signature

from ..support.images import png_bytes
from .conftest import ServerProcess, WebhookSink, python_client_env, run_python

pytestmark = pytest.mark.conformance

SMALL = {"prompt": "a glass of water", "width": 64, "height": 64, "num_inference_steps": 3}


def test_run_returns_the_endpoint_output(server: ServerProcess, api_key: str) -> None:
    outcome = run_python("run", {"input": SMALL | {"seed": 11}}, python_client_env(server, api_key))
    assert outcome["ok"], outcome
    output = outcome["output"]
    assert output["seed"] == 11 and output["image"]["width"] == 64 and output["image"]["content_type"] == "image/png"
    png = httpx.get(output["image"]["url"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png.content) == output["image"]["file_size"]


def test_subscribe_with_num_images_returns_every_image(server: ServerProcess, api_key: str) -> None:
    env = python_client_env(server, api_key)
    outcome = run_python("subscribe", {"input": SMALL | {"seed": 40, "num_images": 3}}, env)
    assert outcome["ok"], outcome
    output = outcome["output"]
    assert output["seed"] == 40 and output["image"] == output["images"][0]
    assert [image["file_name"] for image in output["images"]] == [f"layer-diffusion-{40 + i}.png" for i in range(3)]
    assert all(httpx.get(image["url"]).content[:8] == b"\x89PNG\r\n\x1a\n" for image in output["images"])


def test_subscribe_with_logs_and_queue_updates(server: ServerProcess, api_key: str) -> None:
    outcome = run_python("subscribe", {"input": SMALL}, python_client_env(server, api_key))
    assert outcome["ok"], outcome
    updates = outcome["updates"]
    assert updates[-1]["type"] == "Completed" and updates[-1]["error"] is None
    assert updates[-1]["metrics"]["inference_time"] > 0
    assert {update["type"] for update in updates} <= {"Queued", "InProgress", "Completed"}
    messages = [log["message"] for log in updates[-1]["logs"]]
    assert "Denoising step 3/3" in messages and "Request completed." in messages
    assert outcome["request_ids"] and isinstance(outcome["output"]["seed"], int)


def test_submit_status_result_and_a_signed_webhook(
    server: ServerProcess, api_key: str, webhook_sink: WebhookSink
) -> None:
    outcome = run_python(
        "submit_and_get",
        {"input": SMALL | {"seed": 3}, "webhook_url": webhook_sink.url},
        python_client_env(server, api_key),
    )
    assert outcome["ok"], outcome
    assert outcome["events"][-1]["type"] == "Completed"
    assert outcome["output"] == outcome["again"] and outcome["output"]["seed"] == 3
    headers, body = webhook_sink.wait_for(1)[0]  # the first attempt got a 500: this is the retry
    payload = json.loads(body)
    assert payload["request_id"] == outcome["request_id"] == payload["gateway_request_id"]
    assert payload["status"] == "OK" and payload["payload"] == outcome["output"] and payload["error"] is None
    jwks = httpx.get(f"{server.http_url}/.well-known/jwks.json").json()
    assert verify_signature(jwks, headers, body)
    assert not verify_signature(jwks, headers, body.replace(b'"OK"', b'"ERROR"'))
    assert abs(int(headers["X-Fal-Webhook-Timestamp"]) - time.time()) < 300


def test_invalid_input_immediate_on_run_and_deferred_on_subscribe(server: ServerProcess, api_key: str) -> None:
    env = python_client_env(server, api_key)
    immediate = run_python("run", {"input": {"guidance_scale": 31}}, env)
    assert immediate["error"]["status"] == 422
    assert immediate["error"]["detail"][0]["loc"] == ["body", "guidance_scale"]
    deferred = run_python("subscribe", {"input": {"num_inference_steps": 0}}, env)
    assert deferred["error"]["status"] == 422
    assert deferred["error"]["detail"][0]["loc"] == ["body", "num_inference_steps"]


def test_an_unknown_model_name_is_a_422_naming_the_checkpoints(server: ServerProcess, api_key: str) -> None:
    env = python_client_env(server, api_key)
    for scenario in ("run", "subscribe"):
        refused = run_python(scenario, {"input": SMALL | {"model_name": "no-such-model"}}, env)["error"]
        assert refused["status"] == 422, refused
        assert refused["detail"][0]["loc"] == ["body", "model_name"]
        assert (
            "'no-such-model'" in refused["detail"][0]["msg"] and "lists no checkpoints" in refused["detail"][0]["msg"]
        )


def test_cancel_of_a_queued_and_of_a_completed_request(server: ServerProcess, api_key: str) -> None:
    env = python_client_env(server, api_key)
    busy = run_python("submit", {"input": SMALL | {"width": 128, "height": 128, "num_inference_steps": 150}}, env)
    queued = run_python("submit", {"input": SMALL, "priority": "low"}, env)
    assert queued["status"]["type"] == "Queued"
    assert run_python("cancel", {"request_id": queued["request_id"]}, env)["ok"]
    final = run_python("status", {"request_id": queued["request_id"]}, env)["status"]
    assert final["type"] == "Completed" and final["error_type"] == "client_cancelled"
    assert not any(log["message"].startswith("Denoising") for log in final["logs"])  # it never ran
    assert run_python("cancel", {"request_id": busy["request_id"]}, env)["ok"]  # running: stops between steps
    deadline = time.monotonic() + 120
    while (status := run_python("status", {"request_id": busy["request_id"]}, env)["status"])["type"] != "Completed":
        assert time.monotonic() < deadline
    assert status["error_type"] == "client_cancelled"
    again = run_python("cancel", {"request_id": busy["request_id"]}, env)
    assert again["error"]["status"] == 400 and "ALREADY_COMPLETED" in again["error"]["detail"]


def test_uploads_through_the_hard_coded_storage_hosts(
    server: ServerProcess, api_key: str, connect_proxy: str, tmp_path: Path
) -> None:
    image = tmp_path / "input.png"
    image.write_bytes(png_bytes((32, 32)))
    outcome = run_python("uploads", {"file": str(image)}, python_client_env(server, api_key, via_proxy=connect_proxy))
    assert outcome["ok"], outcome
    assert outcome["same_bytes"] == {"upload": True, "upload_file": True, "fallback": True}
    assert set(outcome["content_types"].values()) == {"image/png"}
    assert outcome["urls"]["upload_file"].endswith("/input.png")


def test_text_files_upload_and_come_back_as_attachments(
    server: ServerProcess, api_key: str, connect_proxy: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("Hello, World!")
    env = python_client_env(server, api_key, via_proxy=connect_proxy)
    outcome = run_python("text_uploads", {"file": str(notes)}, env)
    assert outcome["ok"], outcome
    assert outcome["urls"]["upload_file"].endswith("/notes.txt")
    for name, served in outcome["served"].items():
        assert served["status"] == 200 and served["text"] == "Hello, World!", name
        assert served["content-type"].split(";")[0] == "text/plain", name
        assert served["content-disposition"].startswith("attachment;"), name
        assert served["x-content-type-options"] == "nosniff", name
        assert served["content-security-policy"] == "default-src 'none'; sandbox", name


def test_the_queue_host_by_name_through_the_proxy(server: ServerProcess, api_key: str, connect_proxy: str) -> None:
    """fal's own host names (as if DNS pointed them at us) work for runs too, not only for storage."""
    outcome = run_python("run", {"input": SMALL}, python_client_env(server, api_key, via_proxy=connect_proxy))
    assert outcome["ok"], outcome


def test_missing_or_foreign_keys_are_refused(server: ServerProcess, api_key: str) -> None:
    wrong = run_python("run", {"input": SMALL}, python_client_env(server, "nobody:secret"))
    assert wrong["error"]["status"] == 401 and wrong["error"]["type"] == "unauthorized"
    mine = run_python("submit", {"input": SMALL}, python_client_env(server, api_key))
    other_key = server.create_key("someone else")
    theirs = run_python("result", {"request_id": mine["request_id"]}, python_client_env(server, other_key))
    assert theirs["error"]["status"] == 404
    admin = server.create_key("operator", admin=True)
    assert run_python("result", {"request_id": mine["request_id"]}, python_client_env(server, admin))["ok"]
