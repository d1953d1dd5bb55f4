"""Property tests of input handling: any JSON value in any field, and bodies that are barely JSON,
are answered 200 or 4xx, never 5xx, and whatever was stored reads back (status, result, gallery)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerdiffuse_server.schemas import LayerDiffusionInput

from .api_support import APP

FIELDS = [*LayerDiffusionInput.model_fields, "size", ""]
EXAMPLES = int(os.environ.get("LAYERDIFFUSE_PROPERTY_EXAMPLES", "120"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
    | st.sampled_from(["dpmpp_2m_karras", "euler", "", "\ud800", "x" * 5000])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
inputs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


def encode(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN, Infinity and lone surrogates included."""
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def check_stored(client: TestClient, request_id: str) -> None:
    status = client.get(f"/queue{APP}/requests/{request_id}/status", params={"logs": "1"})
    assert status.status_code in (200, 202), status.text
    result = client.get(f"/queue{APP}/requests/{request_id}")
    assert result.status_code < 500 or result.json().get("error_type"), result.text


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=inputs)
def test_any_field_value_is_answered_without_a_server_error(idle_client: TestClient, body: dict[str, Any]) -> None:
    response = idle_client.post(f"/queue{APP}", content=encode(body), headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        check_stored(idle_client, response.json()["request_id"])
    else:
        assert isinstance(response.json()["detail"], list)
    assert idle_client.get("/api/requests", params={"limit": 200}).status_code == 200


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_any_body_bytes_are_answered_without_a_server_error(idle_client: TestClient, raw: bytes) -> None:
    for path in (f"/queue{APP}", "/rest/storage/upload/initiate"):
        response = idle_client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code in (200, 415, 422), (path, response.text)


@settings(max_examples=EXAMPLES, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_validation_errors_never_echo_what_json_cannot_carry(value: float) -> None:
    from pydantic import ValidationError

    from layerdiffuse_server.errors import validation_details

    try:
        LayerDiffusionInput.model_validate({"guidance_scale": value})
    except ValidationError as error:
        for detail in validation_details(error.errors(include_url=False), location="body"):
            json.dumps(detail, allow_nan=False)
            assert "input" not in detail or math.isfinite(detail["input"])
