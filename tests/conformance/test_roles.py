"""The roles apart: an API node that runs where torch cannot even be imported, and a worker process
that serves it through the shared store (here one machine: SQLite and a local directory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from layerdiffuse_server.settings import Settings

from ..server_process import ENGINE_MODULES, ServerProcess, cli, server_env
from ..support.images import png_bytes

pytestmark = pytest.mark.conformance

APP = "fal-ai/layer-diffusion"


def test_importing_the_api_loads_no_engine() -> None:
    probe = (
        "import sys\n"
        "import layerdiffuse_server.api, layerdiffuse_server.cli, layerdiffuse_server.server.bootstrap\n"
        "import layerdiffuse_server.server.worker_node, layerdiffuse_server.worker\n"
        f"print(sorted(name for name in {ENGINE_MODULES!r} if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_an_api_node_without_torch_and_a_worker_process(settings: Settings, tiny_folder: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    key_file = tmp_path / "signing-key.pem"
    env = server_env(settings, LAYERDIFFUSE_SIGNING_KEY_FILE=str(key_file))
    refused = cli("api", "--data-dir", str(data_dir), env=server_env(settings))
    assert refused.returncode == 1 and "LAYERDIFFUSE_SIGNING_KEY_FILE" in refused.stderr
    assert cli("signing-key", str(key_file), env=env).returncode == 0
    api = ServerProcess(data_dir, env, role="api", without_engine=True)
    worker = ServerProcess(data_dir, env | {"LAYERDIFFUSE_PUBLIC_URL": api.http_url}, role="worker")
    key = api.create_key("roles")
    headers = {"Authorization": f"Key {key}"}
    api.start()
    try:
        ready = httpx.get(f"{api.http_url}/readyz").json()
        assert ready["checks"] == {"database": True, "files": True} and "worker" not in ready
        request_id = httpx.post(
            f"{api.http_url}/queue/{APP}", json={"width": 64, "height": 64, "num_inference_steps": 2}, headers=headers
        ).json()["request_id"]  # queued: no worker yet
        token = httpx.post(f"{api.http_url}/rest/storage/auth/token", headers=headers).json()["token"]
        upload = httpx.post(
            f"{api.http_url}/cdn/files/upload",
            content=png_bytes(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
        assert upload.status_code == 200 and httpx.get(upload.json()["access_url"]).content == png_bytes()

        worker.start()
        with httpx.stream(
            "GET", f"{api.http_url}/queue/{APP}/requests/{request_id}/status/stream", headers=headers, timeout=120
        ) as stream:
            assert any('"COMPLETED"' in line for line in stream.iter_lines())
        output = httpx.get(f"{api.http_url}/queue/{APP}/requests/{request_id}", headers=headers).json()
        assert httpx.get(output["image"]["url"]).headers["content-type"] == "image/png"
        health = httpx.get(f"{worker.http_url}/readyz").json()
        assert health["status"] == "ready" and health["worker"]["model"] == "tiny"
        assert "layerdiffuse_inference_seconds_count 1.0" in httpx.get(f"{worker.http_url}/metrics").text
        assert 'layerdiffuse_workers{state="ready"} 1.0' in httpx.get(f"{api.http_url}/metrics").text
    finally:
        worker.stop()
        api.stop()
    assert "Traceback" not in api.log(), api.log()
