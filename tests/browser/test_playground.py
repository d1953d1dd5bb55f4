"""The playground in a real browser: key, generate with live progress, backgrounds, matte, download,
copy as code, errors caught before sending and reported after, switching between requests, the
gallery kept up to date, the form and the last result across a reload and a server restart, and the
layout at a desktop and a phone size."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from ..server_process import ServerProcess
from .conftest import ARTIFACTS

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


# Every set of gallery tiles (their accessible names), so a tile's short "queued"/"running" life is seen.
RECORD_GALLERY = """
window.__galleryHistory = [];
document.addEventListener("DOMContentLoaded", () => {
  const gallery = document.getElementById("gallery");
  new MutationObserver(() => window.__galleryHistory.push(
      [...gallery.querySelectorAll("button")].map((button) => button.getAttribute("aria-label"))))
    .observe(gallery, { childList: true, subtree: true, attributes: true });
});
"""

# What the layout looks like, measured: overflow, the sampler's room, label and field alignment.
MEASURE_LAYOUT = """() => {
  const root = document.documentElement;
  const select = document.getElementById("scheduler");
  const style = getComputedStyle(select);
  const context = document.createElement("canvas").getContext("2d");
  context.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
  const longest = Math.max(...[...select.options].map((option) => context.measureText(option.text).width));
  // Fields the server does not offer (the checkpoint chooser without checkpoints) are hidden: no layout to measure.
  const cells = [...document.querySelectorAll("#advanced .grid > div")].filter((cell) => !cell.hidden).map((cell) => ({
    top: Math.round(cell.getBoundingClientRect().top),
    field: Math.round(cell.querySelector("input, select").getBoundingClientRect().top),
    label: cell.querySelector("label").getBoundingClientRect().height,
  }));
  const misaligned = cells.filter(
    (cell) => cells.some((other) => other.top === cell.top && other.field !== cell.field));
  const code = document.getElementById("code-text");
  const panels = [...document.querySelectorAll(".layout > .panel")]
    .map((panel) => panel.getBoundingClientRect().bottom);
  const gallery = document.getElementById("gallery").closest(".panel").getBoundingClientRect().top;
  return {
    overflow: root.scrollWidth - root.clientWidth,
    samplerRoom: select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - longest,
    labelHeights: cells.map((cell) => cell.label),
    misaligned: misaligned.length,
    codeOverflow: code.scrollWidth - code.clientWidth,
    galleryGap: gallery - Math.max(...panels),
  };
}"""


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


def open_section(page: Page, selector: str) -> None:
    if not page.locator(selector).evaluate("details => details.open"):
        page.locator(f"{selector} > summary").click()


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
    page.add_init_script(RECORD_GALLERY)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=playground_server.http_url)
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

    # The gallery showed the request at once (queued or running), and its image once done: no Refresh.
    tiles: list[list[str]] = page.evaluate("window.__galleryHistory")
    early = {"a red apple on a table: queued", "a red apple on a table: running"}
    assert any(early & set(names) for names in tiles), tiles
    expect(page.get_by_role("button", name="a red apple on a table: show image")).to_be_visible()
    expect(page.get_by_role("button", name="a red apple on a table: show image")).to_have_attribute(
        "aria-current", "true"
    )

    image = page.locator("#result-image")
    expect(image).to_be_visible()
    assert page.evaluate("document.getElementById('result-image').naturalWidth") == 128
    expect(page.locator("#result-caption")).to_contain_text("128×128 · seed 7")
    # a small image is shown scaled up by a whole factor, its pixels crisp
    box = image.bounding_box()
    assert box is not None and box["width"] == box["height"] == 256, box
    expect(image).to_have_css("image-rendering", "pixelated")

    stage = page.locator("#stage")
    expect(stage).to_have_class("stage bg-checker")
    expect(stage).to_have_css("border-top-style", "solid")  # an edge on a white page and a white background
    expect(page.locator("#result-caption")).not_to_have_css("background-color", "rgba(0, 0, 0, 0)")  # a chip
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
    matte_box = page.locator("#matte").bounding_box()
    assert matte_box is not None and matte_box["width"] == 256, matte_box
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
    expect(code).to_contain_text(f"SSL_CERT_FILE={playground_server.data_dir / 'tls' / 'ca.pem'}")
    page.get_by_role("tab", name="Python").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="JavaScript")).to_have_attribute("aria-selected", "true")
    expect(code).to_contain_text(f'proxyUrl: {{ url: "{playground_server.http_url}/api/fal/proxy"')
    page.keyboard.press("ArrowRight")
    expect(code).to_contain_text(f"curl -X POST {playground_server.http_url}/run/fal-ai/layer-diffusion")
    assert playground_key not in code.text_content()  # snippets read the key from the environment
    assert "scheduler" not in code.text_content() and "guidance_scale" not in code.text_content()  # defaults

    # "Copied." is about the text it copied: it goes with another tab and with a changed input.
    copy_status = page.locator("#copy-status")
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(copy_status).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == code.text_content()  # the exact text, wrapped or not
    page.get_by_role("tab", name="Python").click()
    expect(copy_status).to_have_text("")
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(copy_status).to_have_text("Copied.")
    page.get_by_label("Prompt", exact=True).fill("a green apple on a table")
    expect(code).to_contain_text('"prompt": "a green apple on a table"')
    expect(copy_status).to_have_text("")

    expect(page.locator("#gallery li")).to_have_count(1)


def test_several_images_of_one_request_are_each_shown(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "three lanterns", steps=2, seed=20)
    page.get_by_label("Images", exact=True).fill("3")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: 3 images, seeds 20–22.", timeout=120_000)
    choices = page.get_by_role("group", name="Images of this request").get_by_role("button")
    expect(choices).to_have_count(3)
    expect(page.locator("#result-caption")).to_contain_text("image 1 of 3 · 128×128 · seed 20")
    first = page.evaluate("document.getElementById('result-image').src")
    choices.nth(1).click()
    expect(page.locator("#result-caption")).to_contain_text("image 2 of 3 · 128×128 · seed 21")
    expect(choices.nth(1)).to_have_attribute("aria-pressed", "true")
    second = page.evaluate("document.getElementById('result-image').src")
    assert second != first and second.endswith("layer-diffusion-21.png")
    # The endpoints with image inputs make one image per request: their schema says so.
    page.get_by_label("Endpoint").select_option(label="Transparent image to transparent image")
    expect(page.get_by_label("Images", exact=True)).to_have_attribute("max", "1")


def test_style_loras_are_sent_as_fal_names_them_and_a_refusal_is_shown(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "a lantern", steps=2, seed=20)
    page.get_by_label("Style LoRAs").fill("house-style:0.5\nhttps://example.com/a:b/ink.safetensors")
    code = page.locator("#code-text")
    expect(code).to_contain_text(
        '"loras": [{"path": "house-style", "scale": 0.5}, '
        '{"path": "https://example.com/a:b/ink.safetensors", "scale": 1}]'
    )
    page.get_by_label("Style LoRAs").fill("house-style:0.5")
    page.get_by_role("button", name="Generate").click()
    # This server has no LoRA folder: the worker says so, and the page shows it.
    expect(page.locator("#form-error")).to_contain_text("house-style", timeout=120_000)
    page.reload()
    expect(page.get_by_label("Style LoRAs")).to_have_value("house-style:0.5")


def test_a_refused_key_is_explained_and_not_kept(page: Page, playground_server: ServerProcess) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, "not-a-key:wrong")
    expect(page.get_by_role("alert")).to_contain_text("refused this API key (401)")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.get_by_label("Key", exact=True)).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("localStorage.getItem('layerdiffuse.apiKey')") is None


def test_numbers_out_of_the_schemas_bounds_are_caught_before_sending(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    submitted: list[str] = []
    page.on("request", lambda request: submitted.append(request.url) if request.method == "POST" else None)
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "a width beyond the schema's maximum")
    width = page.get_by_label("Width", exact=True)
    width.fill("3000")
    page.locator("#advanced > summary").click()  # folded away again: the error must still be found
    assert not page.locator("#advanced").evaluate("details => details.open")
    page.get_by_role("button", name="Generate").click()

    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Not sent.")
    expect(error).to_contain_text("Width must be at most 2048 (not 3000).")
    expect(width).to_have_attribute("aria-invalid", "true")
    expect(width).to_have_attribute("aria-describedby", "form-error")
    expect(width).to_be_focused()
    assert page.locator("#advanced").evaluate("details => details.open")

    # The other bounds of the schema: the seed's (inside its anyOf), a maximum, a minimum, whole numbers.
    seed = page.get_by_label("Seed", exact=True)
    steps = page.get_by_label("Steps", exact=True)
    seed.fill("9007199254740992")
    steps.fill("151")
    page.get_by_label("Height", exact=True).fill("0")
    page.get_by_label("Guidance scale", exact=True).fill("30.5")
    page.get_by_role("button", name="Generate").click()
    expect(error).to_contain_text("Seed must be at most 9007199254740991")
    expect(error).to_contain_text("Steps must be at most 150 (not 151).")
    expect(error).to_contain_text("Height must be at least 64 (not 0).")
    expect(error).to_contain_text("Guidance scale must be at most 30 (not 30.5).")
    for field in (seed, steps, width, page.get_by_label("Height", exact=True)):
        expect(field).to_have_attribute("aria-invalid", "true")
    steps.fill("2.5")
    page.get_by_role("button", name="Generate").click()
    expect(error).to_contain_text("Steps must be a whole number.")

    # A field edited into range loses its mark; the message goes with the last one.
    width.fill("512")
    expect(width).not_to_have_attribute("aria-invalid", "true")
    expect(error).to_be_visible()
    for label, value in (("Seed", ""), ("Steps", "6"), ("Height", "128"), ("Guidance scale", "8")):
        page.get_by_label(label, exact=True).fill(value)
    expect(error).to_be_hidden()
    assert not [url for url in submitted if "/queue/" in url], submitted  # nothing invalid was sent


def test_server_rejections_cancel_and_switching_between_requests(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    # A schema that allows more steps than the server does (an older page, say): the server's 422
    # is then reported, field marked, and the gallery tile says it failed.
    def relaxed_schema(route: Any) -> None:
        response = route.fetch()
        schema = response.json()
        schema["components"]["schemas"]["LayerDiffusionInput"]["properties"]["num_inference_steps"]["maximum"] = 1000
        route.fulfill(response=response, json=schema)

    page.route("**/openapi.json", relaxed_schema)
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "too many steps", steps=500)
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    expect(error).to_contain_text("Invalid input:")
    expect(error).to_contain_text("num_inference_steps")
    expect(page.get_by_label("Steps", exact=True)).to_have_attribute("aria-invalid", "true")
    failed = page.get_by_role("button", name="too many steps: failed")
    expect(failed).to_be_visible()
    expect(failed).to_contain_text("Invalid input (422)")

    fill_small_request(page, "a quick one", seed=5)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 5.", timeout=120_000)

    # Full size on a CPU takes a while: long enough to look at another request, and to cancel.
    fill_small_request(page, "a slow one", steps=60, size=1024, seed=None)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Denoising step", timeout=120_000)
    slow = page.get_by_role("button", name="a slow one: running")
    expect(slow).to_be_visible()
    open_section(page, "#logs-panel")
    logs = page.locator("#logs li")

    # Opening another request shows its own logs, not those of the one that runs.
    page.get_by_role("button", name="a quick one: show image").click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Request "))
    expect(page.locator("#progress")).to_be_hidden()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a quick one")
    expect(logs.filter(has_text=re.compile(r"^Denoising step 6/6$"))).to_have_count(1)
    expect(logs.filter(has_text="/60")).to_have_count(0)
    expect(page.locator("#result-caption")).to_contain_text("seed 5")

    # Back to the running one: its logs so far and its progress.
    slow.click()
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Denoising step")
    expect(logs.filter(has_text="/60")).not_to_have_count(0)
    expect(logs.filter(has_text=re.compile(r"/6$"))).to_have_count(0)
    expect(page.get_by_role("button", name="Generate")).to_be_disabled()

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("Cancelled.", timeout=60_000)
    expect(error).to_be_hidden()
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.get_by_role("button", name="a slow one: cancelled")).to_contain_text("Cancelled.")


def test_gallery_survives_a_reload_and_a_server_restart(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    fill_small_request(page, "a blue teapot", seed=11)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 11.", timeout=120_000)

    page.get_by_label("Negative prompt", exact=True).fill("blurry")  # typed after the last run: kept too

    page.reload()
    expect(page.locator("#key-panel")).to_be_hidden()  # the key was kept in this browser
    teapot = page.get_by_role("button", name="a blue teapot: show image")
    expect(teapot).to_be_visible()
    # The form as it was left, and the last result shown again.
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a blue teapot")
    expect(page.get_by_label("Negative prompt", exact=True)).to_have_value("blurry")
    for label, value in (("Steps", "6"), ("Width", "128"), ("Height", "128"), ("Seed", "11")):
        expect(page.get_by_label(label, exact=True)).to_have_value(value)
    expect(page.locator("#result-image")).to_be_visible()
    expect(page.locator("#result-caption")).to_contain_text("128×128 · seed 11")
    expect(page.locator("#status")).to_have_text(re.compile(r"^Request "))
    expect(teapot).to_have_attribute("aria-current", "true")
    stored: dict[str, str] = page.evaluate("({ ...localStorage })")
    assert {"layerdiffuse.apiKey", "layerdiffuse.form", "layerdiffuse.lastRequest"} <= stored.keys()
    secret = playground_key.split(":")[-1]
    assert [name for name, value in stored.items() if secret in value] == ["layerdiffuse.apiKey"]

    playground_server.stop()
    playground_server.start()
    page.reload()
    expect(teapot).to_be_visible()
    expect(page.locator("#result-caption")).to_contain_text("seed 11")
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


def test_the_page_loads_cleanly_and_lays_out_at_a_desktop_and_a_phone_size(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    """No console error, failed request or error answer while the page loads (its icon included), before
    and after a first result; then the layout measured, and kept as screenshots, at 1280×900 and 390×844."""
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on(
        "requestfailed",
        # A reload cancels what the previous page still had in flight (ERR_ABORTED): no error of the page.
        lambda request: (
            problems.append(f"{request.url}: {request.failure}") if request.failure != "net::ERR_ABORTED" else None
        ),
    )
    page.on(
        "response",
        lambda response: problems.append(f"{response.status}: {response.url}") if response.status >= 400 else None,
    )
    page.goto(playground_server.http_url)
    expect(page.get_by_role("heading", name="API key")).to_be_visible()
    page.wait_for_load_state("networkidle")
    icon = page.locator("link[rel=icon]")
    answer = httpx.get(playground_server.http_url + str(icon.get_attribute("href")))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/"), answer
    assert not problems, problems

    enter_key(page, playground_key)
    fill_small_request(page, "a small glass teapot, studio light", seed=3)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 3.", timeout=120_000)

    page.wait_for_load_state("networkidle")
    problems.clear()
    page.reload()  # with a key, a gallery and a last result to show again
    expect(page.locator("#result-image")).to_be_visible(timeout=30_000)
    page.wait_for_load_state("networkidle")
    assert not problems, problems

    for section in ("#advanced", "#code", "#logs-panel"):
        open_section(page, section)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        layout: dict[str, Any] = page.evaluate(MEASURE_LAYOUT)
        assert layout["overflow"] <= 0, layout  # nothing wider than the window
        assert layout["samplerRoom"] >= 16, layout  # the longest sampler name and the arrow fit
        assert max(layout["labelHeights"]) - min(layout["labelHeights"]) < 1, layout  # labels on one line
        assert layout["misaligned"] == 0, layout  # fields side by side start at one height
        assert layout["codeOverflow"] <= 0, layout  # long code lines wrap
        assert layout["galleryGap"] >= 8, layout  # the panels keep apart from the gallery
        box = page.locator("#result-image").bounding_box()
        assert box is not None and box["width"] == 256, box
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"playground-{width}x{height}.png"), full_page=True)


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


# -- the endpoints with image inputs -------------------------------------------------------------------


def write_png(path: Path, width: int, height: int, *, opaque: bool = False) -> Path:
    """A small test image: colour gradients and, unless opaque, a disc of full alpha on a transparent field."""
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[..., 0] = columns * 255 // max(width - 1, 1)
    pixels[..., 1] = 128
    pixels[..., 2] = rows * 255 // max(height - 1, 1)
    disc = (columns - width / 2) ** 2 + (rows - height / 2) ** 2 < (min(width, height) / 3) ** 2
    pixels[..., 3] = 255 if opaque else np.where(disc, 255, 0)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def drop_file(page: Page, selector: str, path: Path) -> None:
    """Drags a file from outside the browser onto an element, as a user does from a file manager."""
    transfer = page.evaluate_handle(
        """([bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
            return transfer;
        }""",
        [list(path.read_bytes()), path.name],
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def record_submissions(page: Page) -> list[tuple[str, Any]]:
    """(URL, JSON body) of every submission the page makes (the queue's POSTs)."""
    submitted: list[tuple[str, Any]] = []

    def on_request(request: Any) -> None:
        if request.method == "POST" and "/queue/" in request.url:
            submitted.append((request.url, request.post_data_json))

    page.on("request", on_request)
    return submitted


def natural_size(page: Page, element_id: str) -> tuple[int, int]:
    """The decoded size of an image, once the browser has loaded it: a status can say done before the PNG arrives."""
    page.wait_for_function(
        "(id) => { const img = document.getElementById(id); return img.complete && img.naturalWidth > 0; }",
        arg=element_id,
        timeout=30_000,
    )
    width, height = page.evaluate(
        "(id) => [document.getElementById(id).naturalWidth, document.getElementById(id).naturalHeight]", element_id
    )
    return width, height


def check_snippets_parse(page: Page, tmp_path: Path) -> None:
    """The Python snippet compiles; the JavaScript one passes ``node --check`` where Node.js is installed."""
    code = page.locator("#code-text")
    page.get_by_role("tab", name="Python").click()
    compile(code.text_content() or "", "snippet.py", "exec")
    page.get_by_role("tab", name="JavaScript").click()
    node = shutil.which("node")
    if node:
        script = tmp_path / "snippet.mjs"
        script.write_text(code.text_content() or "")
        checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
    page.get_by_role("tab", name="Python").click()


def test_image_to_image_from_a_chosen_file_previewed_uploaded_and_generated_at_its_size(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    submitted = record_submissions(page)
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    chooser = page.get_by_label("Endpoint", exact=True)
    image = page.get_by_label("Image", exact=True)
    expect(chooser).to_have_value("")  # text to image stays the default
    expect(image).to_be_hidden()
    expect(page.get_by_label("Strength", exact=True)).to_be_hidden()

    chooser.select_option(label="Transparent image to transparent image")
    expect(page.locator("#endpoint-id")).to_have_text("fal-ai/layer-diffusion/image-to-image")
    expect(image).to_be_visible()
    expect(page.get_by_label("Image URL", exact=True)).to_be_visible()
    expect(page.get_by_label("Strength", exact=True)).to_have_value("0.7")  # the schema's default
    expect(page.get_by_label("Stop at", exact=True)).to_be_hidden()
    expect(page.get_by_label("Width", exact=True)).to_have_attribute("placeholder", "input's size")

    # Without an image (or with a strength of 0) nothing is sent.
    page.get_by_label("Prompt", exact=True).fill("the same apple, in glass")
    page.get_by_label("Strength", exact=True).fill("0")
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    expect(error).to_contain_text("Not sent.")
    expect(error).to_contain_text("Image: choose or drop a file, or paste its URL.")
    expect(error).to_contain_text("Strength must be more than 0 (not 0).")
    expect(image).to_have_attribute("aria-invalid", "true")
    expect(image).to_be_focused()
    page.get_by_label("Strength", exact=True).fill("0.6")

    # A picked file is previewed at once, on the results' checkerboard.
    image.set_input_files(write_png(tmp_path / "apple.png", 96, 80))
    expect(image).not_to_have_attribute("aria-invalid", "true")
    expect(error).to_be_hidden()
    preview = page.get_by_role("img", name="Image: preview")
    expect(preview).to_be_visible()
    assert natural_size(page, "image_url-preview") == (96, 80)
    expect(page.locator("#image_url-caption")).to_contain_text("apple.png")
    expect(page.locator("#image_url-caption")).to_contain_text("96×80")
    checkers = page.evaluate(
        """() => [document.querySelector("#image_url-field .preview"), document.getElementById("stage")]
                   .map((element) => getComputedStyle(element).backgroundImage)"""
    )
    assert checkers[0] == checkers[1] and "linear-gradient" in checkers[0], checkers

    open_section(page, "#advanced")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Seed", exact=True).fill("9")

    # The snippets call the sub-path endpoint and let the clients upload the file.
    open_section(page, "#code")
    code = page.locator("#code-text")
    expect(code).to_contain_text('fal_client.subscribe(\n    "fal-ai/layer-diffusion/image-to-image"')
    expect(code).to_contain_text('arguments={"image_url": fal_client.encode_file("apple.png"), "prompt": ')
    # Inline, under the limit the server applies (not the upload to fal.ai that upload_file does).
    expect(code).to_contain_text("as a data: URI (up to 16 MiB per image here)")
    expect(code).to_contain_text('"strength": 0.6')
    expect(code).to_contain_text("rest.fal.ai")  # where upload_file sends larger files, and how to point it here
    page.get_by_role("tab", name="JavaScript").click()
    expect(code).to_contain_text('import { readFile } from "node:fs/promises";')
    expect(code).to_contain_text('await fal.subscribe("fal-ai/layer-diffusion/image-to-image"')
    expect(code).to_contain_text('"image_url": new Blob([await readFile("apple.png")], { type: "image/png" })')
    page.get_by_role("tab", name="curl").click()
    expect(code).to_contain_text(f"curl -X POST {playground_server.http_url}/run/fal-ai/layer-diffusion/image-to-image")
    expect(code).to_contain_text('"image_url": "https://example.com/apple.png"')
    expect(code).to_contain_text("# Replace https://example.com/apple.png with your image's http(s) URL")
    check_snippets_parse(page, tmp_path)

    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 9.", timeout=120_000)
    endpoint_url = f"{playground_server.http_url}/queue/fal-ai/layer-diffusion/image-to-image"
    assert [url for url, _ in submitted] == [endpoint_url]
    sent = submitted[0][1]
    # The file was uploaded to this server first; the request names its URL.
    assert re.fullmatch(rf"{re.escape(playground_server.http_url)}/files/[^/]+/apple\.png", sent["image_url"]), sent
    assert httpx.get(sent["image_url"]).content == (tmp_path / "apple.png").read_bytes()
    assert sent["strength"] == 0.6 and sent["num_inference_steps"] == 4 and "stop_at" not in sent, sent

    # The result has the input's size, shown on the checkerboard like every transparent result.
    expect(page.locator("#result-image")).to_be_visible()
    assert natural_size(page, "result-image") == (96, 80)
    expect(page.locator("#result-caption")).to_contain_text("96×80 · seed 9")
    expect(page.locator("#stage")).to_have_class("stage bg-checker")
    result = httpx.get(page.evaluate("document.getElementById('result-image').src")).content
    with Image.open(io.BytesIO(result)) as png:
        assert png.mode == "RGBA" and png.size == (96, 80)

    # Its tile brings its endpoint and its image (this server's copy, previewed) back into the form.
    tile = page.get_by_role("button", name="the same apple, in glass: show image")
    expect(tile).to_have_attribute("title", "Transparent image to transparent image")
    chooser.select_option(label="Text to transparent image")
    expect(image).to_be_hidden()
    expect(code).to_contain_text('"fal-ai/layer-diffusion",\n')
    tile.click()
    expect(chooser).to_have_value("image-to-image")
    expect(page.get_by_label("Image URL", exact=True)).to_have_value(sent["image_url"])
    expect(preview).to_be_visible()
    expect(page.get_by_label("Strength", exact=True)).to_have_value("0.6")
    expect(code).to_contain_text(f'"image_url": "{sent["image_url"]}"')  # a URL is sent as it is

    # And so does a reload.
    page.reload()
    expect(chooser).to_have_value("image-to-image")
    expect(page.get_by_label("Image URL", exact=True)).to_have_value(sent["image_url"])
    expect(preview).to_be_visible()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("the same apple, in glass")


def test_a_conditioned_endpoint_takes_a_picked_and_a_dropped_image(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    submitted = record_submissions(page)
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    sampler = page.get_by_label("Sampler")
    expect(sampler).to_have_value("dpmpp_2m_karras")
    page.get_by_label("Endpoint", exact=True).select_option("background-blended-to-foreground")
    expect(page.locator("#endpoint-id")).to_have_text("fal-ai/layer-diffusion/background-blended-to-foreground")
    expect(page.locator("#endpoint-result")).to_have_text("a transparent image")
    background = page.get_by_label("Background image", exact=True)
    blended = page.get_by_label("Blended image", exact=True)
    expect(background).to_be_visible()
    expect(blended).to_be_visible()
    expect(page.get_by_label("Image", exact=True)).to_be_hidden()
    expect(page.get_by_label("Strength", exact=True)).to_be_hidden()
    expect(page.get_by_label("Stop at", exact=True)).to_have_value("1")
    expect(sampler).to_have_value("euler_ancestral")  # the blending models. default sampler

    background.set_input_files(write_png(tmp_path / "background.png", 112, 72, opaque=True))
    drop_file(page, "#blended_image_url-field .drop-zone", write_png(tmp_path / "blend.png", 112, 72, opaque=True))
    expect(page.get_by_role("img", name="Background image: preview")).to_be_visible()
    expect(page.get_by_role("img", name="Blended image: preview")).to_be_visible()
    expect(page.locator("#blended_image_url-caption")).to_contain_text("blend.png")
    assert blended.evaluate("input => input.files[0].name") == "blend.png"  # the picker shows the dropped file

    page.get_by_label("Prompt", exact=True).fill("a glass bottle")
    page.get_by_label("Stop at", exact=True).fill("0.5")
    open_section(page, "#advanced")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Seed", exact=True).fill("4")

    open_section(page, "#code")
    code = page.locator("#code-text")
    expect(code).to_contain_text('"fal-ai/layer-diffusion/background-blended-to-foreground"')
    expect(code).to_contain_text(
        '"background_image_url": fal_client.encode_file("background.png"), '
        '"blended_image_url": fal_client.encode_file("blend.png")'
    )
    expect(code).to_contain_text('"stop_at": 0.5')
    assert "scheduler" not in (code.text_content() or "")  # euler_ancestral is this endpoint's default
    page.get_by_role("tab", name="curl").click()
    expect(code).to_contain_text("/run/fal-ai/layer-diffusion/background-blended-to-foreground")
    expect(code).to_contain_text(
        "# Replace https://example.com/background.png and https://example.com/blend.png with your images'"
    )
    check_snippets_parse(page, tmp_path)

    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 4.", timeout=120_000)
    assert [url for url, _ in submitted] == [
        f"{playground_server.http_url}/queue/fal-ai/layer-diffusion/background-blended-to-foreground"
    ]
    sent = submitted[0][1]
    assert sent["background_image_url"].endswith("/background.png") and sent["blended_image_url"].endswith("/blend.png")
    assert sent["stop_at"] == 0.5 and "scheduler" not in sent and "strength" not in sent, sent
    # The first image sets the size; the foreground is a transparent layer.
    assert natural_size(page, "result-image") == (112, 72)
    expect(page.locator("#result-caption")).to_contain_text("112×72 · seed 4")
    with Image.open(io.BytesIO(httpx.get(page.evaluate("document.getElementById('result-image').src")).content)) as png:
        assert png.mode == "RGBA" and png.size == (112, 72)

    # Back to text to image: its own default sampler again, and no image fields.
    page.get_by_label("Endpoint", exact=True).select_option("")
    expect(sampler).to_have_value("dpmpp_2m_karras")
    expect(background).to_be_hidden()


def test_inpainting_takes_an_image_and_a_mask_and_keeps_what_the_mask_keeps(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    submitted = record_submissions(page)
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    page.get_by_label("Endpoint", exact=True).select_option("inpainting")
    expect(page.locator("#endpoint-id")).to_have_text("fal-ai/layer-diffusion/inpainting")
    expect(page.get_by_label("Strength", exact=True)).to_have_value("1")  # inpainting's own default
    source = write_png(tmp_path / "photo.png", 96, 64, opaque=True)
    mask = write_png(tmp_path / "mask.png", 96, 64)  # a kept disc (alpha 255) in an area to regenerate
    page.get_by_label("Image", exact=True).set_input_files(source)
    page.get_by_label("Mask (alpha 0: regenerate)", exact=True).set_input_files(mask)
    expect(page.get_by_role("img", name="Mask (alpha 0: regenerate): preview")).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("a lamp")
    open_section(page, "#advanced")
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_label("Seed", exact=True).fill("4")
    open_section(page, "#code")
    expect(page.locator("#code-text")).to_contain_text('"mask_url": fal_client.encode_file("mask.png")')

    page.locator("#generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 4.", timeout=120_000)
    assert [url for url, _ in submitted] == [f"{playground_server.http_url}/queue/fal-ai/layer-diffusion/inpainting"]
    assert submitted[0][1]["mask_url"].endswith("/mask.png") and "strength" not in submitted[0][1]
    with Image.open(io.BytesIO(httpx.get(page.evaluate("document.getElementById('result-image').src")).content)) as png:
        result = np.asarray(png.convert("RGBA"))
    kept = np.asarray(Image.open(mask))[..., 3] == 255
    assert np.array_equal(result[kept], np.asarray(Image.open(source))[kept])


def test_inputs_that_are_no_images_are_explained_before_and_after_sending(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    page.get_by_label("Endpoint", exact=True).select_option("image-to-image")
    image = page.get_by_label("Image", exact=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    image.set_input_files(notes)
    error = page.locator("#form-error")
    expect(error).to_have_text("Image: notes.txt is not a PNG, JPEG or WebP image.")
    expect(image).to_have_attribute("aria-invalid", "true")

    # A URL the page cannot check is sent; the server's 422 names the field, as for any other input.
    url = page.get_by_label("Image URL", exact=True)
    url.fill("data:text/plain;base64,aGVsbG8=")
    expect(image).not_to_have_attribute("aria-invalid", "true")
    expect(error).to_be_hidden()
    url.press("Tab")
    expect(page.locator("#image_url-caption")).to_have_text("No preview: this data: URI is not an image.")
    page.get_by_label("Prompt", exact=True).fill("not an image")
    page.get_by_role("button", name="Generate").click()
    expect(error).to_contain_text("Invalid input:")
    expect(error).to_contain_text("image_url: ")
    expect(url).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#status")).to_have_text("Failed.")
    failed = page.get_by_role("button", name="not an image: failed")
    expect(failed).to_contain_text("Invalid input (422)")
