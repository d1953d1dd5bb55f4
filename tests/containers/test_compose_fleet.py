"""``deploy/compose/compose.yaml`` as the README runs it (``podman-compose --profile cpu up -d``): PostgreSQL,
the S3 store, two API nodes and two CPU workers on the demo model. A burst of requests through both API
nodes, one worker container killed while it generates; every request still completes, once, with a
transparent PNG and one stored file, and the killed worker comes back by its restart policy.

The compose file's public images cannot be pulled here, so the variables it offers for a site's own registry
point at stand-ins built from Debian's packages: PostgreSQL for ``postgres``, Ceph's S3 gateway for MinIO.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ..server_process import cli
from ..support.radosgw import free_ports
from .conftest import container_log, container_state, unique_name, wait_for_http
from .images import BuiltImages, podman, podman_environment

pytestmark = pytest.mark.containers

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "compose.yaml"
APP = "fal-ai/layer-diffusion"
REQUESTS = 8
LEASE_SECONDS = 10
UP_SECONDS = 600  # stand-ins and four roles from cold on 2 cores; measured ~90 s
#: Long enough that both workers are still generating when one is killed, short enough for a CPU.
BODY = {"prompt": "a green square", "num_inference_steps": 30}


@dataclass
class ComposeFleet:
    project: str
    folder: Path
    env: dict[str, str]
    http_ports: tuple[int, int]

    def compose(self, *arguments: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = run_compose(self, *arguments, timeout=timeout)
        assert done.returncode == 0, (
            f"podman-compose {' '.join(arguments)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        return done

    def container(self, service: str) -> str:
        names = podman(
            "ps", "--all", "--format", "{{.Names}}",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        assert len(names) == 1, f"{service}: {names}"
        return names[0]

    def url(self, node: int) -> str:
        return f"http://127.0.0.1:{self.http_ports[node]}"

    def status_report(self) -> dict:
        """``layerdiffuse status --json`` inside API node 1: the store as every role sees it."""
        done = podman("exec", self.container("api-1"), "layerdiffuse", "status", "--json")
        return json.loads(done.stdout)

    def stored_objects(self) -> list[str]:
        """Every object in the fleet's bucket, listed from inside the compose network (the S3 store
        publishes no port)."""
        listing = (
            "import boto3, json, os;"
            "pages = boto3.client('s3').get_paginator('list_objects_v2').paginate(Bucket=os.environ['S3_BUCKET']);"
            "print(json.dumps([item['Key'] for page in pages for item in page.get('Contents', [])]))"
        )
        return json.loads(podman("exec", self.container("bucket"), "python", "-c", listing).stdout)

    def logs(self) -> str:
        names = podman(
            "ps", "--all", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={self.project}"
        ).stdout.split()
        return "\n".join(container_log(name, 40) for name in names)


def run_compose(fleet: ComposeFleet, *arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``podman-compose --profile cpu …`` on the fleet's copy of the compose file, as the README runs it."""
    command = [sys.executable, "-m", "podman_compose", "--project-name", fleet.project, "--profile", "cpu"]
    return subprocess.run(
        [*command, *arguments], env=fleet.env, capture_output=True, text=True, timeout=timeout, cwd=fleet.folder
    )


@pytest.fixture
def fleet(images: BuiltImages, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ComposeFleet]:
    folder = tmp_path / "compose"
    folder.mkdir()
    shutil.copy(COMPOSE_FILE, folder / "compose.yaml")
    made = cli("signing-key", str(folder / "signing-key.pem"), env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    (folder / "signing-key.pem").chmod(0o644)  # the README's step: readable by the containers' uid
    api_1_http, api_1_https, api_2_http, api_2_https = free_ports(4)
    env = podman_environment() | {
        "LAYERDIFFUSE_IMAGE": images.engine,
        "LAYERDIFFUSE_API_IMAGE": images.api,
        "POSTGRES_IMAGE": images.postgres,
        "S3_IMAGE": images.s3,
        "API_HTTP_PORT": str(api_1_http),
        "API_HTTPS_PORT": str(api_1_https),
        "API_2_HTTP_PORT": str(api_2_http),
        "API_2_HTTPS_PORT": str(api_2_https),
        "LAYERDIFFUSE_PUBLIC_URL": f"http://127.0.0.1:{api_1_http}",
        "LAYERDIFFUSE_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    fleet = ComposeFleet(unique_name("layerdiffuse-fleet"), folder, env, (api_1_http, api_2_http))
    failed_before = request.session.testsfailed
    try:
        fleet.compose("up", "--detach")
        yield fleet
        if request.session.testsfailed > failed_before:  # the test failed: what every container said
            print(fleet.logs())
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        run_compose(fleet, "down", "--volumes", "--timeout", "5", timeout=300)


def test_the_fleet_loses_nothing_when_a_worker_container_is_killed(fleet: ComposeFleet) -> None:
    # podman before 4.6 starts services without waiting for their dependencies' health: an API node that
    # found no database yet exits and comes back by its restart policy.
    began = time.monotonic()
    for node in (0, 1):
        wait_for_http(f"{fleet.url(node)}/readyz", UP_SECONDS)
    key = podman("exec", fleet.container("api-1"), "layerdiffuse", "keys", "create", "--name", "client")
    headers = {"Authorization": f"Key {key.stdout.strip().splitlines()[-1]}"}

    deadline = time.monotonic() + UP_SECONDS
    while sum(worker["state"] in ("ready", "busy") for worker in fleet.status_report()["workers"]) < 2:
        assert time.monotonic() < deadline, f"the workers did not report ready: {fleet.status_report()['workers']}"
        time.sleep(2)
    print(f"API nodes and workers ready {time.monotonic() - began:.0f} s after podman-compose up returned")

    submitted = []
    for index in range(REQUESTS):
        answer = httpx.post(
            f"{fleet.url(index % 2)}/queue/{APP}", json=BODY | {"seed": 100 + index}, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        submitted.append(answer.json()["request_id"])

    # Both workers busy: kill the container of the first one seen generating, mid-generation.
    deadline = time.monotonic() + 300
    while len(busy := [w for w in fleet.status_report()["workers"] if w["state"] == "busy"]) < 2:
        assert time.monotonic() < deadline, f"the workers did not both start: {fleet.status_report()}"
        time.sleep(0.5)
    victim = busy[0]
    containers = {podman("inspect", "--format", "{{.Config.Hostname}}", name).stdout.strip(): name
                  for name in (fleet.container("worker-cpu-1"), fleet.container("worker-cpu-2"))}  # fmt: skip
    killed = containers[victim["host"]]
    # SIGKILL from outside, as the kernel's OOM killer would: a crash, not a stop asked of podman (which
    # the restart policy rightly leaves stopped).
    os.kill(int(podman("inspect", "--format", "{{.State.Pid}}", killed).stdout), signal.SIGKILL)
    started = time.monotonic()

    results = {}
    deadline = time.monotonic() + 600
    for request_id in submitted:
        while (status := httpx.get(f"{fleet.url(1)}/queue/{APP}/requests/{request_id}/status", headers=headers,
                                   timeout=30).json())["status"] != "COMPLETED":  # fmt: skip
            assert time.monotonic() < deadline, f"{request_id} did not complete: {status}"
            time.sleep(1)
        answer = httpx.get(f"{fleet.url(0)}/queue/{APP}/requests/{request_id}", headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        results[request_id] = answer.json()

    assert sorted(output["seed"] for output in results.values()) == [100 + index for index in range(REQUESTS)]
    for output in results.values():
        png = httpx.get(output["image"]["url"], timeout=30)  # served by API node 1 from the S3 store
        assert png.status_code == 200 and len(png.content) == output["image"]["file_size"]
        alpha = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGBA"))[..., 3]
        assert (alpha < 16).any() and (alpha > 240).any(), "not a transparent image"

    print(f"all {REQUESTS} completed {time.monotonic() - started:.0f} s after the kill")
    report = fleet.status_report()
    assert sum(report["completed_last_hour"].values()) == REQUESTS, report["completed_last_hour"]
    assert victim["current_request"] in submitted  # the killed worker's request was among those that completed
    # Nothing ran twice to completion, nothing was stored twice: one completion each, one object each.
    for request_id in submitted:
        status = httpx.get(
            f"{fleet.url(0)}/queue/{APP}/requests/{request_id}/status", params={"logs": "1"}, headers=headers
        ).json()
        assert [log["message"] for log in status["logs"]].count("Request completed.") == 1, status["logs"]
    assert len(fleet.stored_objects()) == REQUESTS, fleet.stored_objects()
    # restart: unless-stopped brings the killed container back.
    deadline = time.monotonic() + 120
    while container_state(killed) != "running":
        assert time.monotonic() < deadline, (
            "the killed worker was not restarted: "
            + podman(
                "inspect", "--format", "{{json .State}} {{json .HostConfig.RestartPolicy}} {{.RestartCount}}", killed
            ).stdout
        )
        time.sleep(1)
