"""Every status document the API sends — polled, or streamed as server-sent events, with logs or
without — is exactly what the served OpenAPI document says a status is."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from .api_support import APP, SMALL


def status_validator(client: TestClient) -> Any:
    """A validator of the schema the stream documents for each event (OpenAPI 3.1: its ``schema``),
    which is also the polled status's."""
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    event = paths[f"/queue{APP}/requests/{{request_id}}/status/stream"]["get"]["responses"]["200"]["content"]
    polled = paths[f"/queue{APP}/requests/{{request_id}}/status"]["get"]["responses"]
    schema = event["text/event-stream"]["schema"]
    for code in ("200", "202"):
        assert polled[code]["content"]["application/json"]["schema"] == schema
    return jsonschema_rs.validator_for({**schema, "components": document["components"]})


def stream_events(client: TestClient, request_id: str, logs: bool) -> list[dict[str, Any]]:
    url = f"/queue{APP}/requests/{request_id}/status/stream"
    with client.stream("GET", url, params={"logs": "1"} if logs else {}) as stream:
        return [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("logs", [True, False])
def test_every_streamed_status_matches_the_documented_schema(client: TestClient, logs: bool) -> None:
    validator = status_validator(client)
    body = SMALL | {"num_inference_steps": 6}
    request_ids = [client.post(f"/queue{APP}", json=body).json()["request_id"] for _ in range(3)]
    # The last first: its stream starts while it waits behind the others.
    events = [event for request_id in reversed(request_ids) for event in stream_events(client, request_id, logs)]
    failed = client.post(f"/queue{APP}", json=SMALL | {"width": 63, "seed": -1}).json()["request_id"]
    events += stream_events(client, failed, logs)
    # A worker may claim them all as one batch before the first stream opens: IN_QUEUE is not promised here.
    assert {"IN_PROGRESS", "COMPLETED"} <= {event["status"] for event in events}
    problems = [f"{error.message} in {event}" for event in events for error in validator.iter_errors(event)]
    assert not problems, "\n".join(problems)
    for request_id in [*request_ids, failed]:
        answer = client.get(f"/queue{APP}/requests/{request_id}/status", params={"logs": "1"} if logs else {})
        assert validator.is_valid(answer.json()), list(validator.iter_errors(answer.json()))


@pytest.mark.parametrize("logs", [True, False])
def test_a_queued_status_matches_the_documented_schema(idle_client: TestClient, logs: bool) -> None:
    validator = status_validator(idle_client)
    request_id = idle_client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
    polled = idle_client.get(f"/queue{APP}/requests/{request_id}/status", params={"logs": "1"} if logs else {})
    assert polled.json()["status"] == "IN_QUEUE"
    assert validator.is_valid(polled.json()), list(validator.iter_errors(polled.json()))
    url = f"/queue{APP}/requests/{request_id}/status/stream"
    with idle_client.stream("GET", url, params={"logs": "1"} if logs else {}) as stream:
        for line in stream.iter_lines():  # no worker: the first event says IN_QUEUE, and the stream goes on
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                break
    assert event["status"] == "IN_QUEUE"
    assert validator.is_valid(event), list(validator.iter_errors(event))
