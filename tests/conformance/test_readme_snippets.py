"""The README's client snippets, run as written against the server (only the address differs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from .conftest import JS_DIR, ServerProcess, python_client_env

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

README = Path(__file__).parents[2] / "README.md"


def snippet(language: str) -> str:
    match = re.search(rf"<!-- snippet: {language} -->\n```\w+\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"README has no {language} snippet"
    return match.group(1)


def assert_transparent_png(path: Path) -> None:
    image = Image.open(path)
    assert image.mode == "RGBA" and image.size == (1024, 1024)


def test_python_snippet(server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", snippet("python")],
        env=python_client_env(server, api_key), cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Completed" in done.stdout and done.stdout.strip().splitlines()[-1].startswith("42 http://")
    assert_transparent_png(tmp_path / "teapot.png")


def test_javascript_snippet(node: str, server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    code = snippet("javascript").replace("http://127.0.0.1:8080", server.http_url)
    script = JS_DIR / f"readme-snippet-{tmp_path.name}.mjs"  # inside the package, so the import resolves
    script.write_text(code)
    try:
        done = subprocess.run(
            [node, str(script)], env={"PATH": os.environ["PATH"], "FAL_KEY": api_key}, cwd=tmp_path,
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr
    assert "COMPLETED" in done.stdout
    assert_transparent_png(tmp_path / "teapot.png")
