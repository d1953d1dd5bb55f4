"""The unmodified ``openai`` npm package against a real server (tiny model), by ``baseURL`` and key."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ..support.images import png_bytes
from .conftest import JS_DIR, ServerProcess

pytestmark = pytest.mark.conformance

SMALL = {"prompt": "a paper lantern", "size": "64x64", "seed": 9, "num_inference_steps": 3}


def run_openai_js(node: str, server: ServerProcess, key: str, scenario: str, args: dict[str, Any]) -> dict:
    if not (JS_DIR / "node_modules" / "openai").is_dir():
        pytest.fail("tests/conformance/js/node_modules/openai is needed: run npm ci there")
    done = subprocess.run(
        [node, str(JS_DIR / "openai_scenario.mjs"), scenario, f"{server.http_url}/v1", key, json.dumps(args)],
        capture_output=True, text=True, timeout=300, cwd=JS_DIR,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def image_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_two_transparent_pngs_and_a_webp(node: str, server: ServerProcess, api_key: str) -> None:
    outcome = run_openai_js(
        node, server, api_key, "generate", {"params": SMALL | {"n": 2, "background": "transparent"}}
    )
    assert outcome["ok"], outcome
    images = [image_of(item["b64_json"]) for item in outcome["result"]["data"]]
    assert len(images) == 2 and all(image.mode == "RGBA" for image in images)
    alpha = np.asarray(images[0])[..., 3]
    assert alpha.min() < alpha.max()
    webp = run_openai_js(node, server, api_key, "generate", {"params": SMALL | {"output_format": "webp"}})
    assert webp["ok"], webp
    image = image_of(webp["result"]["data"][0]["b64_json"])
    assert image.format == "WEBP" and image.mode == "RGBA"


def test_edit_with_a_file(node: str, server: ServerProcess, api_key: str) -> None:
    source = base64.b64encode(png_bytes((64, 64))).decode()
    params = {"prompt": "a lantern", "num_inference_steps": 3}
    outcome = run_openai_js(node, server, api_key, "edit", {"base64": source, "params": params})
    assert outcome["ok"], outcome
    assert outcome["result"]["size"] == "64x64" and image_of(outcome["result"]["data"][0]["b64_json"]).mode == "RGBA"


def test_the_sdk_error_classes(node: str, server: ServerProcess, api_key: str) -> None:
    jpeg = {"params": {"prompt": "x", "background": "transparent", "output_format": "jpeg"}}
    refused = run_openai_js(node, server, api_key, "generate", jpeg)
    assert refused["error"]["name"] == "BadRequestError" and refused["error"]["param"] == "background", refused
    unknown = run_openai_js(node, server, "0123456789ab:wrong", "generate", {"params": {"prompt": "x"}})
    assert unknown["error"]["name"] == "AuthenticationError", unknown


def test_streaming(node: str, server: ServerProcess, api_key: str) -> None:
    outcome = run_openai_js(node, server, api_key, "stream", {"params": SMALL})
    assert outcome["ok"], outcome
    assert [event["type"] for event in outcome["events"]] == ["image_generation.completed"]
    assert image_of(outcome["events"][0]["b64_json"]).mode == "RGBA"
