"""The README's client snippets, run as written against ``serve --model demo`` (only the address differs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.demo.quality import judge
from layerdiffuse_server.engine.presets import DEMO_SIZE

from .conftest import JS_DIR, ServerProcess, python_client_env

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

README = Path(__file__).parents[2] / "README.md"


def snippet(language: str) -> str:
    match = re.search(rf"<!-- snippet: {language} -->\n```\w+\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"README has no {language} snippet"
    return match.group(1)


def file_name_for_javascript() -> str:
    """The name the README tells users to save the JavaScript snippet as."""
    match = re.search(r"save this as `([\w.-]+)`", README.read_text())
    assert match, "README does not say what to save the JavaScript snippet as"
    return match.group(1)


def assert_the_red_star(path: Path) -> None:
    """The snippets ask the demo model for a red star with a soft glow: that is what must arrive."""
    image = Image.open(path)
    assert image.mode == "RGBA" and image.size == (DEMO_SIZE, DEMO_SIZE)
    verdict = judge(np.asarray(image))
    assert (verdict.shape, verdict.colour) == ("star", "red") and verdict.soft_edge_pixels >= 20, verdict


def test_python_snippet(demo_server: ServerProcess, demo_key: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", snippet("python")],
        env=python_client_env(demo_server, demo_key), cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "Denoising step 1/20" in lines and lines[-1].startswith("42 http://")
    assert lines[-2] == "Request completed.", "the last log lines, which come with the COMPLETED status"
    assert len(lines) == len(set(lines)), "a log line was printed twice"
    assert_the_red_star(tmp_path / "star.png")


def test_javascript_snippet(node: str, demo_server: ServerProcess, demo_key: str, tmp_path: Path) -> None:
    code = snippet("javascript").replace("http://127.0.0.1:8080", demo_server.http_url)
    folder = JS_DIR / f"readme-snippet-{tmp_path.name}"  # inside the package, so the import resolves
    folder.mkdir()
    script = folder / file_name_for_javascript()
    script.write_text(code)
    try:
        done = subprocess.run(
            [node, str(script)], env={"PATH": os.environ["PATH"], "FAL_KEY": demo_key}, cwd=tmp_path,
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        script.unlink()
        folder.rmdir()
    assert done.returncode == 0, done.stderr
    assert "Denoising step 1/20" in done.stdout
    assert_the_red_star(tmp_path / "star.png")


def test_curl_snippet(demo_server: ServerProcess, demo_key: str, tmp_path: Path) -> None:
    command = snippet("curl").replace("http://127.0.0.1:8080", demo_server.http_url)
    done = subprocess.run(
        ["bash", "-c", command], env={"PATH": os.environ["PATH"], "FAL_KEY": demo_key},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["seed"] == 42 and output["image"]["content_type"] == "image/png"


def test_python_image_to_image_snippet(demo_server: ServerProcess, demo_key: str, tmp_path: Path) -> None:
    import httpx

    star = httpx.post(
        f"{demo_server.http_url}/run/fal-ai/layer-diffusion",
        json={"prompt": "a red star with a soft glow", "seed": 42},
        headers={"Authorization": f"Key {demo_key}"},
        timeout=900,
    ).json()
    (tmp_path / "star.png").write_bytes(httpx.get(star["image"]["url"]).content)
    done = subprocess.run(
        [sys.executable, "-c", snippet("python-image-to-image")],
        env=python_client_env(demo_server, demo_key), cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_the_red_star(tmp_path / "star-again.png")


def test_python_openai_snippet(demo_server: ServerProcess, demo_key: str, tmp_path: Path) -> None:
    code = snippet("python-openai").replace("http://127.0.0.1:8080", demo_server.http_url)
    env = {"PATH": os.environ["PATH"], "FAL_KEY": demo_key}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{DEMO_SIZE}x{DEMO_SIZE} transparent 2"
    for index in (1, 2):
        assert_the_red_star(tmp_path / f"star-{index}.png")
