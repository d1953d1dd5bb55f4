"""What operators see: probes, Prometheus metrics, worker heartbeats, ``layerdiffuse status`` and JSON logs."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from layerdiffuse_server.api import Services
from layerdiffuse_server.observability import configure_logging, request_id_context
from layerdiffuse_server.observability.status import collect_status
from layerdiffuse_server.settings import Settings

from .api_support import APP, SMALL, server_settings, wait_completed


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_requests_by_outcome_and_time_each_stage(client: TestClient, services: Services) -> None:
    before = scrape(client)
    assert client.post(f"/run{APP}", json=SMALL).status_code == 200
    queued = [client.post(f"/queue{APP}", json=SMALL | {"seed": seed}).json()["request_id"] for seed in (1, 2)]
    for request_id in queued:
        wait_completed(client, request_id)
    invalid = client.post(f"/queue{APP}", json={"num_inference_steps": 0}).json()["request_id"]
    wait_completed(client, invalid)
    assert client.post(f"/run{APP}", json={"guidance_scale": 99}).status_code == 422  # refused before the queue
    after = scrape(client)

    assert delta(before, after, "layerdiffuse_requests_submitted_total", mode="sync") == 1
    assert delta(before, after, "layerdiffuse_requests_submitted_total", mode="queue") == 3
    assert delta(before, after, "layerdiffuse_requests_completed_total", outcome="success", status_code="200") == 3
    assert (
        delta(before, after, "layerdiffuse_requests_completed_total", outcome="validation_error", status_code="422")
        == 1
    )
    for histogram in ("queue_wait", "inference", "denoise", "decode"):
        assert delta(before, after, f"layerdiffuse_{histogram}_seconds_count") == 3, histogram
        assert delta(before, after, f"layerdiffuse_{histogram}_seconds_sum") >= 0
    assert after[("layerdiffuse_inference_seconds_sum", ())] >= after[("layerdiffuse_decode_seconds_sum", ())] > 0
    assert after[("layerdiffuse_queue_depth", (("priority", "normal"),))] == 0
    assert after[("layerdiffuse_requests_running", ())] == 0
    assert after[("layerdiffuse_workers", (("state", "ready"),))] == 1
    assert after[("layerdiffuse_model_load_seconds", ())] >= 0
    assert not any(name.startswith("layerdiffuse_gpu_") for name, _ in after)  # CPU only: no GPU series


def test_queue_depth_and_cancellations_are_counted(idle_client: TestClient) -> None:
    before = scrape(idle_client)
    ids = [idle_client.post(f"/queue{APP}", json=SMALL).json()["request_id"] for _ in range(3)]
    idle_client.post(f"/queue{APP}", json=SMALL, headers={"X-Fal-Queue-Priority": "low"})
    middle = scrape(idle_client)
    assert middle[("layerdiffuse_queue_depth", (("priority", "normal"),))] == 3
    assert middle[("layerdiffuse_queue_depth", (("priority", "low"),))] == 1
    assert idle_client.put(f"/queue{APP}/requests/{ids[0]}/cancel").status_code == 202
    after = scrape(idle_client)
    assert after[("layerdiffuse_queue_depth", (("priority", "normal"),))] == 2
    assert delta(before, after, "layerdiffuse_requests_completed_total", outcome="cancelled", status_code="499") == 1
    assert after[("layerdiffuse_workers", (("state", "ready"),))] == 0  # this API runs no worker


def test_readyz_checks_the_model_the_database_and_the_files(client: TestClient, idle_client: TestClient) -> None:
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {"model": True, "database": True, "files": True}
    assert ready["worker"]["state"] == "ready"
    api_node = idle_client.get("/readyz")  # no worker here: requests wait in the queue for workers elsewhere
    assert api_node.status_code == 200 and api_node.json()["checks"] == {"database": True, "files": True}
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_fails_while_another_writer_holds_the_database(
    settings: Settings, tmp_path: Path, client: TestClient, services: Services
) -> None:
    database = services.settings.data_dir / "layerdiffuse.db"
    blocker = sqlite3.connect(database, timeout=10)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        response = client.get("/readyz")
        assert response.status_code == 503 and "database" in response.json()["problems"]
        assert time.monotonic() - started < 30
    finally:
        blocker.rollback()
        blocker.close()
    assert client.get("/readyz").status_code == 200


def test_status_reports_queue_workers_and_recent_outcomes(client: TestClient, services: Services) -> None:
    wait_completed(client, client.post(f"/queue{APP}", json=SMALL).json()["request_id"])
    report = collect_status(services.store)
    assert report.queued == {"normal": 0, "low": 0}
    assert report.running == []
    assert report.completed_last_hour == {"success": 1}
    [worker] = report.workers
    assert worker.state == "ready" and worker.model == "tiny" and worker.requests_done == 1
    assert worker.device == "cpu"
    assert collect_status(services.store, now=time.time() + 3600).workers[0].state == "silent"


def test_status_command_reads_the_store_of_a_data_directory(client: TestClient, services: Services) -> None:
    wait_completed(client, client.post(f"/queue{APP}", json=SMALL).json()["request_id"])
    data_dir = str(services.settings.data_dir)
    command = [sys.executable, "-m", "layerdiffuse_server", "status", "--data-dir", data_dir]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Queue: 0 waiting (0 normal, 0 low), 0 running" in shown
    assert "Workers" in shown and "ready" in shown and "tiny" in shown
    assert "Completed in the last hour: 1 success" in shown
    as_json = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    assert as_json["workers"][0]["requests_done"] == 1 and as_json["queued"] == {"normal": 0, "low": 0}


def test_stopped_worker_reports_stopped(settings: Settings, tmp_path: Path, tiny_pipeline: object) -> None:
    from layerdiffuse_server.api import create_app
    from layerdiffuse_server.server.bootstrap import build_services

    stopped = build_services(server_settings(settings, tmp_path), lambda: tiny_pipeline, model_name="tiny")
    with TestClient(create_app(stopped)):
        pass
    assert [worker.state.value for worker in stopped.store.workers.all()] == ["stopped"]


def test_worker_and_access_log_lines_name_their_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        request_id = client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
        wait_completed(client, request_id)
    worker_lines = [r for r in caplog.records if r.name.endswith("generation_worker") and r.request_id == request_id]
    assert any(r.getMessage().startswith("Request started") for r in worker_lines)
    assert any(r.getMessage() == "Request completed." for r in worker_lines)
    assert not any("Denoising step" in r.getMessage() for r in worker_lines)  # steps are DEBUG
    access = [r for r in caplog.records if r.name == "layerdiffuse.access" and r.request_id == request_id]
    assert any(r.getMessage().startswith(f"POST /queue{APP} 200") for r in access)


def test_json_logs_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    try:
        logger = logging.getLogger("layerdiffuse_server.worker")
        with request_id_context("3f1c"):
            logger.info("Request started")
        logging.getLogger("layerdiffuse.access").info("GET /x 200", extra={"request_id": "abcd"})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers.clear()
    assert lines[0]["message"] == "Request started" and lines[0]["request_id"] == "3f1c"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "layerdiffuse_server.worker" and "time" in lines[0]
    assert lines[1]["request_id"] == "abcd"
