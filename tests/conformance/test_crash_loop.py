"""Crash loop: rounds of submit (with webhooks) → ``kill -9`` at a random moment → restart. Nothing
accepted is lost or done twice: every request completes exactly once with a readable file, every
webhook arrives, the database passes its integrity check, and a request fails only as the retry
policy says (lost while running alone ``max_attempts`` times)."""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store import open_store

from .conftest import ServerProcess, WebhookSink, server_env

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

APP = "fal-ai/layer-diffusion"
ROUNDS = int(os.environ.get("LAYERDIFFUSE_CRASH_ROUNDS", "5"))
MAX_ATTEMPTS = 2


def interrupted(database: Path) -> list[tuple[str, int]]:
    """(request id, batch size) of what was running when the process died, read from its database."""
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT id, batch_size FROM requests WHERE state = 'IN_PROGRESS'").fetchall()


def test_kill_loop_loses_nothing(
    settings: Settings, tiny_folder: Path, tmp_path: Path, webhook_sink: WebhookSink
) -> None:
    webhook_sink.fail_first = 0
    server = ServerProcess(tmp_path / "data", server_env(settings))
    key = server.create_key("crash-loop")
    headers = {"Authorization": f"Key {key}"}
    database = server.data_dir / "layerdiffuse.db"
    chance = random.Random(20261125)
    accepted: list[str] = []
    lost_alone: Counter[str] = Counter()
    kills_that_hit_work = 0
    for _ in range(ROUNDS):
        server.start()
        for _ in range(4):
            size = chance.choice([64, 128])
            body = {"prompt": "a kite", "width": size, "height": size, "num_inference_steps": chance.randint(5, 40)}
            answer = httpx.post(
                f"{server.http_url}/queue/{APP}", json=body, headers=headers, params={"fal_webhook": webhook_sink.url}
            )
            assert answer.status_code == 200, answer.text
            accepted.append(answer.json()["request_id"])
        time.sleep(chance.uniform(0, 3))
        server.kill()
        running = interrupted(database)
        kills_that_hit_work += bool(running)
        lost_alone.update(request_id for request_id, batch_size in running if (batch_size or 1) == 1)
    assert kills_that_hit_work, "no kill landed while a request ran: the loop tested nothing"

    server.start()
    try:
        deadline = time.monotonic() + 300
        for request_id in accepted:
            url = f"{server.http_url}/queue/{APP}/requests/{request_id}/status"
            while httpx.get(url, headers=headers).json()["status"] != "COMPLETED":
                assert time.monotonic() < deadline, f"{request_id} never completed"
                time.sleep(0.2)
        webhook_sink.wait_for(len(accepted), timeout=120)
        delivered = {json.loads(body)["request_id"] for _, body in webhook_sink.received}
        assert delivered == set(accepted)
        store = open_store(f"sqlite:///{database}")
        try:
            for request_id in accepted:
                record = store.requests.get(request_id)
                assert record is not None
                if record.status_code != 200:
                    assert record.error_type == "runner_disconnected", record
                    assert lost_alone[request_id] >= MAX_ATTEMPTS, (request_id, lost_alone[request_id])
                    continue
                published = [file for file in store.files.for_requests([request_id]) if file.ready]
                assert len(published) == 1, published
                png = httpx.get(record.response["image"]["url"])
                assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).mode == "RGBA"
                logs = [entry.message for entry in store.requests.logs(request_id)]
                assert logs.count("Request completed.") == 1
        finally:
            store.close()
    finally:
        server.stop()
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
