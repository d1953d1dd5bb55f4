"""The images as the README's "Containers" section runs them: ``serve --model demo`` in the engine image
answering the unmodified ``fal_client`` through the published port, and the API-only image without torch."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ..conformance.conftest import fal_client_env, run_python
from ..support.radosgw import free_ports
from .conftest import container_state, removed_afterwards, unique_name, wait_for_http
from .images import REPO, BuiltImages, ImageBuild, podman, podman_environment

pytestmark = pytest.mark.containers

READY_SECONDS = 300  # measured ~20 s on 2 cores; generous for a loaded CI machine


def test_the_api_only_image_has_the_api_without_torch(images: BuiltImages) -> None:
    probe = (
        "import importlib.util, json;"
        "print(json.dumps({m: importlib.util.find_spec(m) is not None"
        " for m in ('torch', 'diffusers', 'transformers', 'layerdiffuse_server', 'psycopg', 'boto3', 'uvicorn')}))"
    )
    found = json.loads(
        podman("run", "--rm", "--network", "none", "--entrypoint", "python", images.api, "-c", probe).stdout
    )
    assert found == {
        "torch": False, "diffusers": False, "transformers": False,
        "layerdiffuse_server": True, "psycopg": True, "boto3": True, "uvicorn": True,
    }  # fmt: skip
    # The command line loads without torch: `api --help` imports the CLI and the role's options.
    started = podman("run", "--rm", "--network", "none", images.api, "api", "--help", check=False)
    assert started.returncode == 0 and "api" in started.stdout, started.stderr
    size = int(podman("image", "inspect", "--format", "{{.Size}}", images.api).stdout)
    print(f"the API-only image: {size / 1e6:.0f} MB")


def test_serve_demo_in_a_container_answers_the_official_client(
    images: BuiltImages, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    http_port, tls_port = free_ports(2)
    volume = unique_name("layerdiffuse-data")
    request.addfinalizer(lambda: podman("volume", "rm", "--force", volume, check=False))  # after the container
    with removed_afterwards(unique_name("layerdiffuse-serve")) as name:
        # The README's command: a named volume for /data, written by the image's uid 10001.
        podman(
            "run", "--detach", "--name", name, "--volume", f"{volume}:/data",
            "--publish", f"127.0.0.1:{http_port}:8080", "--publish", f"127.0.0.1:{tls_port}:8443",
            "--env", f"LAYERDIFFUSE_PUBLIC_URL=http://127.0.0.1:{http_port}",
            images.engine, "serve", "--model", "demo",
        )  # fmt: skip

        def running() -> None:
            assert (state := container_state(name)) == "running", f"the container is {state}"

        wait_for_http(f"http://127.0.0.1:{http_port}/readyz", READY_SECONDS, alive=running)
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        key = podman("exec", name, "layerdiffuse", "keys", "create", "--name", "client").stdout.strip().splitlines()[-1]
        podman("cp", f"{name}:/data/tls/ca.pem", str(tmp_path / "ca.pem"))

        env = fal_client_env(tmp_path / "ca.pem", tls_port, key)
        outcome = run_python("subscribe", {"input": {"prompt": "a red circle", "seed": 5}}, env)
        assert outcome["ok"], outcome
        output = outcome["output"]
        assert output["seed"] == 5 and output["image"]["content_type"] == "image/png"
        png = httpx.get(output["image"]["url"])
        assert png.status_code == 200 and len(png.content) == output["image"]["file_size"]
        image = Image.open(io.BytesIO(png.content))
        assert image.mode == "RGBA" and image.size == (output["image"]["width"], output["image"]["height"])
        alpha = np.asarray(image)[..., 3]
        assert (alpha < 16).mean() > 0.05 and (alpha > 240).mean() > 0.01, "not a sprite on a transparent background"

        # The image's HEALTHCHECK asks the role's /healthz.
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        # SIGTERM drains and exits 0 well within the stop timeout the README gives (30 s).
        podman("stop", "--time", "30", name, timeout=60)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"


def test_a_code_change_rebuilds_only_the_layers_from_the_code_on(
    images: BuiltImages, image_build: ImageBuild, tmp_path: Path
) -> None:
    """The Containerfile's layer order: torch and the dependencies stay cached when only the code changed."""
    context = tmp_path / "checkout"
    shutil.copytree(REPO / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "deploy" / "container", context / "deploy" / "container")
    for name in ("Containerfile", ".containerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    with (context / "src" / "layerdiffuse_server" / "__init__.py").open("a") as source:
        source.write("\n# a code change\n")
    image = "localhost/layerdiffuse:code-change"
    command = image_build.product_build_command("engine", image, images.python_base, context)
    try:
        done = subprocess.run(command, env=podman_environment(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        podman("rmi", "--force", image, check=False)
    steps = _steps(done.stdout)
    first_uncached = next(index for index, (_, cached) in enumerate(steps) if not cached)
    assert steps[first_uncached][0].startswith("COPY src"), steps
    assert any("torch==" in step and cached for step, cached in steps[:first_uncached]), steps


def _steps(output: str) -> list[tuple[str, bool]]:
    """Each ``STEP n/m: INSTRUCTION`` of a ``podman build`` log but the stages' FROM, and whether it was cached."""
    lines = output.splitlines()
    steps = []
    for index, line in enumerate(lines):
        found = re.match(r"\[\d+/\d+\] STEP \d+/\d+: (.*)", line)
        if found and not found.group(1).startswith("FROM "):  # a stage's start, never itself cached
            following = next((later for later in lines[index + 1 :] if later.strip()), "")
            steps.append((found.group(1), following.startswith("--> Using cache")))
    return steps
