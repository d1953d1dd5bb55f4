"""Durability: a crash with work in the queue loses nothing, and results stay readable afterwards."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from layerdiffuse_server.settings import Settings

from .conftest import ServerProcess, python_client_env, run_python, server_env

pytestmark = pytest.mark.conformance

APP = "fal-ai/layer-diffusion"
WORK = {"prompt": "a red kite", "width": 128, "height": 128, "num_inference_steps": 20}


def test_queued_and_running_requests_survive_a_crash(settings: Settings, tiny_folder: Path, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", server_env(settings))
    key = server.create_key("restart")
    env = python_client_env(server, key)
    server.start()
    try:
        before = run_python("run", {"input": WORK | {"num_inference_steps": 2, "seed": 1}}, env)
        assert before["ok"], before
        headers = {"Authorization": f"Key {key}"}
        pending = [
            httpx.post(f"{server.http_url}/queue/{APP}", json=WORK | {"seed": seed}, headers=headers).json()[
                "request_id"
            ]
            for seed in (10, 11, 12)
        ]
        server.kill()

        server.start()
        for seed, request_id in zip((10, 11, 12), pending, strict=True):
            outcome = run_python("result", {"request_id": request_id}, env)
            assert outcome["ok"], outcome
            assert outcome["output"]["seed"] == seed
            assert httpx.get(outcome["output"]["image"]["url"]).status_code == 200
        for request_id in pending:
            messages = [
                log["message"] for log in run_python("status", {"request_id": request_id}, env)["status"]["logs"]
            ]
            starts = sum(message.startswith("Request started") for message in messages)
            assert starts >= 1 and messages.count("Request completed.") == 1
            if starts > 1:  # it was running when the process died: said so, and run again
                assert any("runs again" in message for message in messages)
        # what completed before the crash is still served, file included
        assert httpx.get(before["output"]["image"]["url"]).status_code == 200
    finally:
        server.stop()
