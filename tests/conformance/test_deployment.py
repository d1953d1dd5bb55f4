"""The scale-out deployment for real: ``scripts/scale-out`` starts two API nodes and two workers over
a PostgreSQL server and Ceph's S3 gateway (both started by the test setup); then the official
clients, a burst of requests, a worker killed mid-generation, a worker joining and a worker stopped
gracefully — and nothing lost, nothing run twice."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import create_engine, text

from layerdiffuse_server.settings import Settings
from layerdiffuse_server.signing import verify_signature
from layerdiffuse_server.store import Store, open_store
from layerdiffuse_server.store.database import database_url

from ..conftest import s3_environment
from ..server_process import ServerProcess, cli, server_env
from ..support.images import png_bytes
from ..support.postgres import PostgresServer
from ..support.radosgw import RadosGateway
from .conftest import WebhookSink, python_client_env, run_js, run_python

pytestmark = [pytest.mark.conformance, pytest.mark.deployment]

APP = "fal-ai/layer-diffusion"
SCRIPT = Path(__file__).parents[2] / "scripts" / "scale-out"
LEASE_SECONDS = 3.0
SMALL = {"prompt": "a lantern", "width": 64, "height": 64, "num_inference_steps": 2}
LONG = {"prompt": "a long one", "width": 128, "height": 128, "num_inference_steps": 120}


def free_port_block(size: int) -> int:
    """The first of ``size`` consecutive free ports (the script numbers its processes from a base)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size >= 65535:
            continue
        try:
            sockets = []
            for port in range(base, base + size):
                candidate = socket.socket()
                sockets.append(candidate)
                candidate.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for candidate in sockets:
                candidate.close()


@dataclass
class Fleet:
    run: Path
    env: dict[str, str]
    database_url: str
    bucket: str
    prefix: str
    apis: list[ServerProcess]  # not started by us: their addresses, CA and data directories
    worker_pids: list[int]
    key: str
    s3: Any  # a boto3 client of the gateway

    def store(self) -> Store:
        return open_store(self.database_url)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.key}"}

    def objects(self) -> set[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
        return {item["Key"].removeprefix(self.prefix) for item in listing.get("Contents", [])}

    def status(self, request_id: str, api: int = 0) -> dict:
        url = f"{self.apis[api].http_url}/queue/{APP}/requests/{request_id}/status"
        return httpx.get(url, params={"logs": "1"}, headers=self.headers()).json()

    def submit(self, body: dict, api: int = 0, **params: str) -> str:
        answer = httpx.post(f"{self.apis[api].http_url}/queue/{APP}", json=body, headers=self.headers(), params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()["request_id"]

    def wait_completed(self, request_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while (status := self.status(request_id))["status"] != "COMPLETED":
            assert time.monotonic() < deadline, f"{request_id} did not complete: {status}"
            time.sleep(0.1)
        return status

    def wait_running(self, request_id: str, step: int = 3) -> str:
        """Until the request has done ``step`` denoising steps; the id of the worker running it."""
        deadline = time.monotonic() + 120
        while not any(f"Denoising step {step}/" in log["message"] for log in self.status(request_id)["logs"] or []):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        store = self.store()
        try:
            record = store.requests.get(request_id)
        finally:
            store.close()
        assert record is not None and record.worker_id is not None
        return record.worker_id

    def worker_pid(self, worker_id: str) -> int:
        store = self.store()
        try:
            return next(worker.pid for worker in store.workers.all() if worker.id == worker_id)
        finally:
            store.close()


@pytest.fixture(scope="module")
def fleet(
    settings: Settings,
    tiny_folder: Path,
    postgres_server: PostgresServer,
    rados_gateway: RadosGateway,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    bucket, prefix = f"fleet-{os.getpid()}-{time.monotonic_ns()}", "outputs/"
    aws = s3_environment(rados_gateway)
    s3 = boto3.client(
        "s3",
        endpoint_url=rados_gateway.endpoint_url,
        aws_access_key_id=rados_gateway.access_key,
        aws_secret_access_key=rados_gateway.secret_key,
        region_name=rados_gateway.region,
    )
    s3.create_bucket(Bucket=bucket)
    database = postgres_server.new_database()
    env = server_env(
        settings,
        **aws,
        LAYERDIFFUSE_DATABASE_URL=database,
        LAYERDIFFUSE_STORAGE_URL=f"s3://{bucket}/{prefix}",
        LAYERDIFFUSE_DEVICE="cpu",
        LAYERDIFFUSE_LEASE_SECONDS=str(LEASE_SECONDS),
        LAYERDIFFUSE_SHUTDOWN_GRACE_SECONDS="1",
        LAYERDIFFUSE_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.1/32"]',
        LAYERDIFFUSE_TLS_NAMES=json.dumps(["fal.run", "queue.fal.run", "rest.fal.ai", "v3.fal.media"]),
    )
    run = tmp_path_factory.mktemp("fleet")
    port, tls_port, worker_port = free_port_block(2), free_port_block(2), free_port_block(2)
    env["LAYERDIFFUSE_PUBLIC_URL"] = f"http://127.0.0.1:{port}"  # what a load balancer's address would be
    command = [
        str(SCRIPT), str(run), "--api", "2", "--workers", "2", "--model", "tiny",
        "--port", str(port), "--tls-port", str(tls_port), "--worker-port", str(worker_port),
    ]  # fmt: skip
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(f"== {log.name}\n{log.read_text()[-3000:]}" for log in sorted(run.glob("*.log")))
    assert started.returncode == 0, f"{started.stdout}{started.stderr}\n{logs}"
    rows = [line.split("\t") for line in (run / "fleet.tsv").read_text().splitlines()]
    apis = [
        ServerProcess(run / f"api-{index}", env, role="api", port=int(row_port), tls_port=tls_port + int(index))
        for role, index, _, row_port in rows
        if role == "api"
    ]
    worker_pids = [int(pid) for role, _, pid, _ in rows if role == "worker"]
    done = cli("keys", "create", "--name", "fleet-tests", env=env)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    fleet = Fleet(run, env, database, bucket, prefix, apis, worker_pids, key, s3)
    try:
        yield fleet
    finally:
        subprocess.run([str(SCRIPT), "--stop", str(run)], timeout=120, check=False)


def test_api_nodes_starting_together_made_one_admin_key(fleet: Fleet) -> None:
    store = fleet.store()
    try:
        admins = [key for key in store.keys.all() if key.admin]
    finally:
        store.close()
    assert len(admins) == 1
    printed = [api.data_dir.parent / f"api-{i}.log" for i, api in enumerate(fleet.apis)]
    assert sum("Admin API key" in log.read_text() for log in printed) == 1


def test_the_official_clients_against_the_fleet(node: str, fleet: Fleet, webhook_sink: WebhookSink) -> None:
    api = fleet.apis[0]
    env = python_client_env(api, fleet.key)
    outcome = run_python("subscribe", {"input": SMALL | {"seed": 5}}, env)
    assert outcome["ok"], outcome
    assert outcome["output"]["seed"] == 5 and httpx.get(outcome["output"]["image"]["url"]).status_code == 200
    outcome = run_python("submit_and_get", {"input": SMALL | {"seed": 6}, "webhook_url": webhook_sink.url}, env)
    assert outcome["ok"], outcome
    headers, body = webhook_sink.wait_for(1)[0]
    jwks = httpx.get(f"{fleet.apis[1].http_url}/.well-known/jwks.json").json()  # the other node's JWKS
    assert verify_signature(jwks, headers, body) and json.loads(body)["request_id"] == outcome["request_id"]
    assert run_python("run", {"input": SMALL | {"seed": 7}}, python_client_env(fleet.apis[1], fleet.key))["ok"]

    streamed = run_js(node, fleet.apis[1], fleet.key, "streaming", {"input": SMALL | {"seed": 8}})
    assert streamed["ok"], streamed
    assert streamed["updates"][-1]["status"] == "COMPLETED" and streamed["data"]["seed"] == 8
    uploaded = run_js(
        node,
        fleet.apis[1],
        fleet.key,
        "upload",
        {"base64": base64.b64encode(png_bytes()).decode(), "contentType": "image/png"},
    )
    assert uploaded["ok"] and uploaded["status"] == 200 and uploaded["size"] == len(png_bytes()), uploaded


def test_each_api_node_honours_what_the_other_issued(fleet: Fleet) -> None:
    first, second = (api.http_url for api in fleet.apis)
    token = httpx.post(f"{first}/rest/storage/auth/token", headers=fleet.headers()).json()["token"]
    uploaded = httpx.post(
        f"{second}/cdn/files/upload",
        content=png_bytes(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png", "X-Fal-File-Name": "shared.png"},
    )
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()["access_url"].split("/files/", 1)[1]
    for node in (first, second):
        assert httpx.get(f"{node}/files/{path}").content == png_bytes()
    initiated = httpx.post(
        f"{second}/rest/storage/upload/initiate", json={"content_type": "image/png"}, headers=fleet.headers()
    ).json()
    put_path = initiated["upload_url"].split("/files/", 1)[1]
    assert httpx.put(f"{first}/files/{put_path}", content=png_bytes()).status_code == 200
    assert httpx.get(f"{first}/.well-known/jwks.json").json() == httpx.get(f"{second}/.well-known/jwks.json").json()


def test_progress_made_by_a_worker_reaches_a_stream_on_any_node_as_it_happens(fleet: Fleet) -> None:
    request_id = fleet.submit(SMALL | {"num_inference_steps": 40, "width": 128, "height": 128})
    url = f"{fleet.apis[1].http_url}/queue/{APP}/requests/{request_id}/status/stream"
    step_events = 0
    with httpx.stream("GET", url, params={"logs": "1"}, headers=fleet.headers(), timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                step_events += any(log["message"].startswith("Denoising step") for log in event["logs"] or [])
    # Woken by PostgreSQL's notifications rather than a poll every few seconds, the stream sends
    # the steps as they come, not in a few bundles.
    assert step_events >= 10


def test_thirty_requests_complete_exactly_once_with_one_object_each(fleet: Fleet, webhook_sink: WebhookSink) -> None:
    webhook_sink.fail_first = 0
    ids = [fleet.submit(SMALL | {"seed": seed}, api=seed % 2, fal_webhook=webhook_sink.url) for seed in range(100, 130)]
    for request_id in ids:
        assert "error" not in fleet.wait_completed(request_id)
    webhook_sink.wait_for(30)
    assert {json.loads(body)["request_id"] for _, body in webhook_sink.received} == set(ids)
    store = fleet.store()
    try:
        for request_id in ids:
            assert [entry.message for entry in store.requests.logs(request_id)].count("Request completed.") == 1
            [output] = store.files.for_requests([request_id])
            assert output.ready and output.id in fleet.objects()
    finally:
        store.close()
    # No object without its catalogue entry: nothing was stored twice or left behind.
    engine = create_engine(database_url(fleet.database_url))
    with engine.connect() as connection:
        catalogued = set(connection.execute(text("SELECT id FROM files WHERE ready")).scalars())
    engine.dispose()
    assert fleet.objects() == catalogued


def test_a_new_worker_disturbs_no_running_request(fleet: Fleet) -> None:
    request_id = fleet.submit(LONG | {"seed": 1})
    fleet.wait_running(request_id)
    joining = ServerProcess(fleet.run / "worker-joining", fleet.env, role="worker")
    joining.start()
    try:
        status = fleet.wait_completed(request_id)
        messages = [log["message"] for log in status["logs"]]
        assert "error" not in status and not any("runs again" in message for message in messages)
        assert sum(message.startswith("Request started") for message in messages) == 1
    finally:
        joining.stop()


def test_a_graceful_worker_stop_hands_back_without_spending_an_attempt(fleet: Fleet) -> None:
    request_id = fleet.submit(LONG | {"seed": 2})
    worker_id = fleet.wait_running(request_id)
    os.kill(fleet.worker_pid(worker_id), signal.SIGTERM)
    status = fleet.wait_completed(request_id)
    assert "error" not in status
    store = fleet.store()
    try:
        record = store.requests.get(request_id)
    finally:
        store.close()
    assert record is not None and record.attempts == 2 and record.lost_runs == 0


def test_a_worker_killed_mid_generation_loses_nothing(fleet: Fleet) -> None:
    survivor = ServerProcess(fleet.run / "worker-survivor", fleet.env, role="worker")
    survivor.start()  # the graceful stop above left one of the first two; make sure two run
    try:
        request_id = fleet.submit(LONG | {"seed": 3})
        victim = fleet.wait_running(request_id)
        os.kill(fleet.worker_pid(victim), signal.SIGKILL)
        status = fleet.wait_completed(request_id, timeout=LEASE_SECONDS + 120)
        assert "error" not in status
        messages = [log["message"] for log in status["logs"]]
        assert any("runs again" in message for message in messages)
        store = fleet.store()
        try:
            [output] = [file for file in store.files.for_requests([request_id]) if file.ready]
            record = store.requests.get(request_id)
        finally:
            store.close()
        assert record is not None and record.lost_runs == 1
        assert output.id in fleet.objects()
    finally:
        survivor.stop()
