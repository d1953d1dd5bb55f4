"""The playground's "Copy as code" in the OpenAI SDKs' forms: the Python form, run as copied,
generates the images the form describes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect

from ..server_process import ServerProcess
from .test_playground import enter_key, fill_small_request


def test_the_openai_forms_of_a_generation(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "a lantern", steps=2, size=64, seed=20)
    page.locator("#code > summary").click()
    code = page.locator("#code-text")
    page.get_by_role("tab", name="openai js").click()
    expect(code).to_contain_text(f'new OpenAI({{ baseURL: "{playground_server.http_url}/v1" }})')
    expect(code).to_contain_text('"size": "64x64"')
    page.get_by_role("tab", name="openai py").click()
    expect(code).to_contain_text("client.images.generate(")
    expect(code).to_contain_text('size="64x64"')
    copied = code.text_content() or ""
    assert '"seed": 20' in copied and playground_key not in copied
    env = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": playground_key}
    done = subprocess.run(
        [sys.executable, "-c", copied], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "image-0.png") as image:
        assert image.mode == "RGBA" and image.size == (64, 64)


def test_an_endpoint_without_an_openai_form_says_so(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    page.get_by_label("Endpoint").select_option(label="Foreground to blended image")
    page.locator("#code > summary").click()
    page.get_by_role("tab", name="openai py").click()
    expect(page.locator("#code-text")).to_contain_text("has no OpenAI Images form")
