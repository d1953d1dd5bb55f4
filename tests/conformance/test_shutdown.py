"""A graceful stop (SIGTERM) of the embedded server: bounded in time with clients connected, and the
request it interrupts goes back to the queue without spending an attempt — however often it happens."""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store import open_store

from ..server_process import cli
from .conftest import ServerProcess, server_env

pytestmark = pytest.mark.conformance

APP = "fal-ai/layer-diffusion"
GRACE = 2.0
#: The documented bound: the grace, uvicorn's margin on top, and the process's own exit. Before
#: draining, an open status stream kept the server up until it was killed.
STOP_BOUND_SECONDS = GRACE + 5 + 15
LONG = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 150, "seed": 4}


def wait_until_running(server: ServerProcess, headers: dict[str, str], request_id: str) -> None:
    url = f"{server.http_url}/queue/{APP}/requests/{request_id}/status"
    with httpx.stream("GET", f"{url}/stream", params={"logs": "1"}, headers=headers, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and "Denoising step 2/" in line:
                return
    raise AssertionError("the request never started")


def follow_stream(server: ServerProcess, headers: dict[str, str], request_id: str, events: list[dict]) -> None:
    url = f"{server.http_url}/queue/{APP}/requests/{request_id}/status/stream"
    with httpx.stream("GET", url, params={"logs": "1"}, headers=headers, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))


def sync_run(server: ServerProcess, headers: dict[str, str], answers: list[httpx.Response]) -> None:
    """On the HTTPS listener, as fal_client would: the second listener drains like the first."""
    url = f"https://127.0.0.1:{server.tls_port}/run/{APP}"
    trust = ssl.create_default_context(cafile=str(server.ca_file))
    answers.append(httpx.post(url, json=LONG, headers=headers, timeout=120, verify=trust))


def test_stops_are_bounded_and_interrupted_work_keeps_its_attempts(
    settings: Settings, tiny_folder: Path, tmp_path: Path
) -> None:
    env = server_env(settings, LAYERDIFFUSE_SHUTDOWN_GRACE_SECONDS=str(GRACE))
    server = ServerProcess(tmp_path / "data", env)
    key = server.create_key("shutdown")
    headers = {"Authorization": f"Key {key}"}
    server.start()
    try:
        request_id = httpx.post(f"{server.http_url}/queue/{APP}", json=LONG, headers=headers).json()["request_id"]
        for _ in range(2):  # two stops during one request: neither may count against it
            wait_until_running(server, headers, request_id)
            events: list[dict] = []
            answers: list[httpx.Response] = []
            clients = [
                threading.Thread(target=follow_stream, args=(server, headers, request_id, events)),
                threading.Thread(target=sync_run, args=(server, headers, answers)),
            ]
            for client in clients:
                client.start()
            while not events:
                threading.Event().wait(0.05)
            seconds = server.stop(timeout=120)
            assert server.process is not None and server.process.returncode == 0, server.log()
            for client in clients:
                client.join(30)
            assert seconds < STOP_BOUND_SECONDS, f"the stop took {seconds:.1f} s:\n{server.log()}"
            assert not any(client.is_alive() for client in clients)
            assert events[-1]["status"] != "COMPLETED"  # the stream ended with the server, the request lives on
            assert answers[0].status_code == 503 and "shutting down" in answers[0].json()["detail"]
            server.start()

        done = httpx.get(f"{server.http_url}/queue/{APP}/requests/{request_id}/status", headers=headers)
        while done.json()["status"] != "COMPLETED":
            threading.Event().wait(0.5)
            done = httpx.get(f"{server.http_url}/queue/{APP}/requests/{request_id}/status", headers=headers)
        result = httpx.get(f"{server.http_url}/queue/{APP}/requests/{request_id}", headers=headers)
        assert result.status_code == 200 and result.json()["seed"] == LONG["seed"]
        store = open_store(f"sqlite:///{server.data_dir / 'layerdiffuse.db'}")
        record = store.requests.get(request_id)
        store.close()
        assert record is not None and record.lost_runs == 0 and record.attempts == 3
    finally:
        server.stop()


#: A process whose engine is :class:`FakeEngine` with steps of ``LAYERDIFFUSE_TEST_STEP_SECONDS``.
SLOW_ENGINE = (
    "import os\n"
    "from layerdiffuse_server.server import engine_loader\n"
    "from layerdiffuse_server.testing import FakeEngine\n"
    "seconds = float(os.environ['LAYERDIFFUSE_TEST_STEP_SECONDS'])\n"
    "engine_loader.load_engine = lambda settings: FakeEngine(step_seconds=seconds)\n"
    "from layerdiffuse_server.cli import main\n"
    "main()\n"
)
#: The README's bound on a stop: the grace, then 5 s.
SLOW_STEP_BOUND_SECONDS = 1.0 + 5


class SlowEngineProcess(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", SLOW_ENGINE, *super().command()[3:]]


def wait_for_status(url: str, headers: dict[str, str], status: str, process: Any, seconds: float = 120) -> None:
    """Poll until the request reports ``status``; a deadline that names the process's log instead of a hang."""
    deadline = time.monotonic() + seconds
    while httpx.get(url, headers=headers).json()["status"] != status:
        assert time.monotonic() < deadline, f"no {status} within {seconds} s:\n{process.log()}"
        time.sleep(0.1)


@pytest.mark.parametrize("role", ["serve", "worker"])
def test_a_stop_is_bounded_however_slow_a_step_is(
    role: str, settings: Settings, tiny_folder: Path, tmp_path: Path
) -> None:
    data_dir, key_file = tmp_path / "data", tmp_path / "signing-key.pem"
    env = server_env(settings, LAYERDIFFUSE_SHUTDOWN_GRACE_SECONDS="1", LAYERDIFFUSE_SIGNING_KEY_FILE=str(key_file))
    assert cli("signing-key", str(key_file), env=env).returncode == 0
    front = SlowEngineProcess(data_dir, env | {"LAYERDIFFUSE_TEST_STEP_SECONDS": "10"}, role=role)
    api = ServerProcess(data_dir, env, role="api") if role == "worker" else front
    headers = {"Authorization": f"Key {api.create_key('slow')}"}
    api.start()
    if role == "worker":
        front.env["LAYERDIFFUSE_PUBLIC_URL"] = api.http_url
        front.start()
    restarted = SlowEngineProcess(data_dir, front.env | {"LAYERDIFFUSE_TEST_STEP_SECONDS": "0"}, role=role)
    restarted.port, restarted.tls_port = front.port, front.tls_port
    try:
        body = {"width": 64, "height": 64, "num_inference_steps": 3, "seed": 5}
        request_id = httpx.post(f"{api.http_url}/queue/{APP}", json=body, headers=headers).json()["request_id"]
        status_url = f"{api.http_url}/queue/{APP}/requests/{request_id}/status"
        wait_for_status(status_url, headers, "IN_PROGRESS", front)
        threading.Event().wait(0.5)  # inside its first 10-second step

        seconds = front.stop(timeout=60)
        assert front.process is not None and front.process.returncode == 0, front.log()
        assert seconds < SLOW_STEP_BOUND_SECONDS, f"the stop took {seconds:.1f} s:\n{front.log()}"
        print(f"{role}: stopped {seconds:.1f} s after SIGTERM, inside a 10 s step")
        store = open_store(f"sqlite:///{data_dir / 'layerdiffuse.db'}")
        try:
            record = store.requests.get(request_id)
            assert record is not None and record.state.value == "IN_QUEUE" and record.lost_runs == 0, record
        finally:
            store.close()

        restarted.start()  # fast steps now: the request handed back completes
        wait_for_status(status_url, headers, "COMPLETED", restarted)
        result = httpx.get(f"{api.http_url}/queue/{APP}/requests/{request_id}", headers=headers)
        assert result.status_code == 200 and result.json()["seed"] == 5
    finally:
        for process in (front, restarted, api):
            process.stop()
