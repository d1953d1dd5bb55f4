"""Schemathesis against the served OpenAPI document, with a valid key: generated requests for every
documented operation, checked for server errors and for answers that match what is documented
(status codes, content types, bodies), and that routes needing a key refuse to work without one.

Schema-valid requests are not all expected to succeed: a webhook URL that is a valid string can
name a private network, an upload of any bytes is refused unless it decodes as an image, and the
queue takes invalid input with 200 to report it as the request's result, as fal's queue does.

The server is real (uvicorn on 127.0.0.1, the whole app, a worker) with the shipped fake engine,
so generation is instant whatever size the fuzzer asks for. Bounded for CI; more cases with
``LAYERDIFFUSE_SCHEMATHESIS_EXAMPLES``.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from layerdiffuse_server.api import create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.testing import FakeEngine

from ..server_process import free_port

EXAMPLES = int(os.environ.get("LAYERDIFFUSE_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


@pytest.fixture(scope="module")
def live_api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, API key) of a running server."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("campaign") / "data"
    values = {"data_dir": data_dir, "port": port, "public_url": f"http://127.0.0.1:{port}", "shutdown_grace_seconds": 1}
    services = build_services(settings.model_copy(update=values), FakeEngine, model_name="fake")
    key = issue_key(services.store.keys, "campaign").value
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and services.local_worker is not None and services.local_worker.ready):
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def served_schema(live_api: tuple[str, str]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_api[0]}/openapi.json")


def fuzz(operation: schemathesis.APIOperation, base_url: str, key: str) -> None:
    """Generated cases for one operation, each called and checked against the document."""

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base_url, headers={"Authorization": f"Key {key}"}, checks=CHECKS)

    try:
        conforms()
    except BaseException as failure:
        failure.add_note(f"operation: {operation.label}")
        raise


def test_every_operation_answers_as_documented(
    live_api: tuple[str, str], served_schema: schemathesis.BaseSchema
) -> None:
    operations = [result.ok() for result in served_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {
        "POST /run/fal-ai/layer-diffusion",
        "POST /queue/fal-ai/layer-diffusion",
        "POST /cdn/files/upload",
    } <= labels
    for operation in operations:
        fuzz(operation, *live_api)


def test_a_wide_strip_is_refused_by_the_real_server_in_bounded_time(live_api: tuple[str, str]) -> None:
    """The campaign's 142-byte 65536×1 PNG (it raised the server by 3 GB for 98 s): a 422 at once."""
    base_url, key = live_api
    buffer = io.BytesIO()
    Image.new("RGBA", (65536, 1)).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "x", "image_url": uri, "width": 64, "height": 64}
    started = time.monotonic()
    answer = httpx.post(
        f"{base_url}/run/fal-ai/layer-diffusion/image-to-image", json=body, headers={"Authorization": f"Key {key}"}
    )
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "image_url"]
    assert time.monotonic() - started < 5
