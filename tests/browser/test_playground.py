"""The playground in a real browser: key, generate with live progress, backgrounds, matte, download,
copy as code, errors, and the gallery across a reload and a server restart."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from ..server_process import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

# Every text the status line showed, so fast transitions (queue → steps → done) can be asserted.
RECORD_STATUS = """
window.__statusHistory = [];
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  new MutationObserver(() => window.__statusHistory.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
});
"""


def enter_key(page: Page, key: str) -> None:
    expect(page.get_by_role("heading", name="API key")).to_be_visible()
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_role("button", name="Use this key").click()


def fill_small_request(page: Page, prompt: str, *, steps: int = 6, size: int = 128, seed: int | None = 7) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    if not page.locator("#advanced").evaluate("details => details.open"):
        page.locator("#advanced > summary").click()
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("Width", exact=True).fill(str(size))
    page.get_by_label("Height", exact=True).fill(str(size))
    if seed is not None:
        page.get_by_label("Seed", exact=False).fill(str(seed))


def pixel(page: Page, selector: str) -> list[int]:
    return page.evaluate(
        """(selector) => {
            const canvas = document.querySelector(selector);
            const context = canvas.getContext("2d");
            return [...context.getImageData(canvas.width / 2, canvas.height / 2, 1, 1).data];
        }""",
        selector,
    )


def test_generate_shows_progress_then_a_transparent_image_to_inspect_and_download(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    page.add_init_script(RECORD_STATUS)
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    expect(page.locator("#key-panel")).to_be_hidden()
    expect(page.get_by_text("Nothing yet")).to_be_visible()

    fill_small_request(page, "a red apple on a table")
    # bounds and samplers come from the server's OpenAPI schema
    expect(page.locator("#scheduler option")).to_have_count(6)
    expect(page.get_by_label("Sampler")).to_have_value("dpmpp_2m_karras")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 7.", timeout=120_000)

    history: list[str] = page.evaluate("window.__statusHistory")
    assert any(text.startswith("In queue") or text == "Running…" for text in history), history
    assert any(text.startswith("Denoising step") for text in history), history
    logs = page.locator("#logs li")
    assert "Denoising step 6/6" in logs.all_text_contents()
    assert any("Uploaded" in line for line in logs.all_text_contents())

    image = page.locator("#result-image")
    expect(image).to_be_visible()
    assert page.evaluate("document.getElementById('result-image').naturalWidth") == 128
    expect(page.locator("#result-caption")).to_contain_text("128×128 · seed 7")

    stage = page.locator("#stage")
    expect(stage).to_have_class("stage bg-checker")
    page.get_by_label("White").check()
    expect(stage).to_have_css("background-color", "rgb(255, 255, 255)")
    page.get_by_label("Black").check()
    expect(stage).to_have_css("background-color", "rgb(0, 0, 0)")
    page.get_by_label("Background colour").fill("#ff8800")
    expect(page.get_by_label("Colour", exact=True)).to_be_checked()
    expect(stage).to_have_css("background-color", "rgb(255, 136, 0)")

    page.get_by_role("checkbox", name="Alpha matte").check()
    expect(page.locator("#matte")).to_be_visible()
    expect(image).to_be_hidden()
    red, green, blue, alpha = pixel(page, "#matte")
    assert red == green == blue and alpha == 255
    page.get_by_role("checkbox", name="Alpha matte").uncheck()
    expect(image).to_be_visible()

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download PNG").click()
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.suffix == ".png"
    with Image.open(saved) as png:
        assert png.mode == "RGBA" and png.size == (128, 128)
        assert red == int(np.asarray(png)[64, 64, 3])  # the matte shows this pixel's alpha
    served = httpx.get(page.evaluate("document.getElementById('result-image').src"))
    assert served.content == saved.read_bytes()

    page.locator("#code > summary").click()
    code = page.locator("#code-text")
    expect(code).to_contain_text('fal_client.subscribe(\n    "fal-ai/layer-diffusion"')
    expect(code).to_contain_text('"prompt": "a red apple on a table"')
    expect(code).to_contain_text('"seed": 7')
    expect(code).to_contain_text(f"FAL_QUEUE_RUN_HOST=127.0.0.1:{playground_server.tls_port}/queue")
    page.get_by_role("tab", name="Python").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="JavaScript")).to_have_attribute("aria-selected", "true")
    expect(code).to_contain_text(f'proxyUrl: {{ url: "{playground_server.http_url}/api/fal/proxy"')
    page.keyboard.press("ArrowRight")
    expect(code).to_contain_text(f"curl -X POST {playground_server.http_url}/run/fal-ai/layer-diffusion")
    assert playground_key not in code.text_content()  # snippets read the key from the environment
    assert "scheduler" not in code.text_content() and "guidance_scale" not in code.text_content()  # defaults

    expect(page.locator("#gallery li")).to_have_count(1)


def test_a_refused_key_is_explained_and_not_kept(page: Page, playground_server: ServerProcess) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, "not-a-key:wrong")
    expect(page.get_by_role("alert")).to_contain_text("refused this API key (401)")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.get_by_label("Key", exact=True)).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("localStorage.getItem('layerdiffuse.apiKey')") is None


def test_invalid_input_and_cancel_are_reported(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "too many steps", steps=500)
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    expect(error).to_contain_text("Invalid input:")
    expect(error).to_contain_text("num_inference_steps")
    expect(page.get_by_label("Steps", exact=True)).to_have_attribute("aria-invalid", "true")

    # Full size on a CPU takes a minute: long enough to cancel between two denoising steps.
    fill_small_request(page, "a slow one", steps=20, size=1024, seed=None)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Denoising step", timeout=120_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("Cancelled.", timeout=60_000)
    expect(error).to_be_hidden()
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()


def test_gallery_survives_a_reload_and_a_server_restart(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "a blue teapot", seed=11)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 11.", timeout=120_000)

    page.reload()
    expect(page.locator("#key-panel")).to_be_hidden()  # the key was kept in this browser
    teapot = page.get_by_role("button", name="a blue teapot: show image")
    expect(teapot).to_be_visible()

    playground_server.stop()
    playground_server.start()
    page.reload()
    expect(teapot).to_be_visible()
    teapot.click()
    expect(page.locator("#result-image")).to_be_visible()
    expect(page.locator("#result-caption")).to_contain_text("seed 11")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a blue teapot")
    items: list[dict[str, Any]] = httpx.get(
        f"{playground_server.http_url}/api/requests", headers={"Authorization": f"Key {playground_key}"}
    ).json()["requests"]
    assert items[0]["input"]["prompt"] == "a blue teapot"
    png = httpx.get(items[0]["output"]["image"]["url"]).content
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGBA"


def test_the_page_runs_under_a_policy_that_blocks_injected_script(
    browser: object, playground_server: ServerProcess
) -> None:
    """Its own context (the ``page`` fixture fails on any policy violation; this one makes one)."""
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        violations: list[str] = []
        page.on("console", lambda message: violations.append(message.text))
        response = page.goto(playground_server.http_url + "/")
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not [text for text in violations if "Content Security Policy" in text]  # the page itself complies
        injected = page.evaluate(
            """() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';
                       document.head.appendChild(s); return window.injected ?? null; }"""
        )
        assert injected is None
        page.wait_for_timeout(200)
        assert any("Content Security Policy" in text for text in violations)
    finally:
        context.close()
