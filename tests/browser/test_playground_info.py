"""The playground says which model runs and what it knows (from ``/api/info``), its snippets send a
chosen file inline under the server's real limit and trust the server's real CA, gallery tiles follow
their requests live and name their endpoint, and wide previews and long code lines stay in their boxes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from layerdiffuse_server.demo import captions
from layerdiffuse_server.settings import Settings

from ..server_process import ServerProcess, running_server, server_env
from ..support.checkpoints import reweighted_copy
from .test_playground import enter_key, open_section, write_png

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def demo_playground(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("demo-playground") / "data", server_env(settings), model="demo"
    ) as process:
        yield process


def test_the_page_names_the_demo_model_its_vocabulary_and_a_prompt_it_draws(
    page: Page, demo_playground: ServerProcess
) -> None:
    page.goto(demo_playground.http_url)
    enter_key(page, demo_playground.create_key("vocabulary"))
    expect(page.locator("#model-name")).to_have_text("demo")
    prompt = page.get_by_label("Prompt", exact=True)
    expect(prompt).to_have_attribute("placeholder", "a red star with a soft glow")
    vocabulary = page.locator("#vocabulary")
    expect(vocabulary).to_be_visible()
    for word in (*captions.SHAPES, *captions.COLOURS, "with a soft glow", "translucent"):
        expect(vocabulary).to_contain_text(word)
    assert prompt.get_attribute("aria-describedby") == "vocabulary"

    prompt.fill("a black cat")
    open_section(page, "#advanced")
    page.get_by_label("Seed", exact=True).fill("3")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Done: seed 3. The demo model ignored: black, cat.", timeout=120_000)
    expect(page.locator("#logs")).to_contain_text("ignored these words of the prompt")


def test_open_vocabulary_models_show_their_name_only(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    expect(page.locator("#model-name")).to_have_text("tiny")
    expect(page.locator("#vocabulary")).to_be_hidden()
    assert page.get_by_label("Prompt", exact=True).get_attribute("placeholder")


def test_a_chosen_file_is_sent_inline_and_stays_in_its_drop_zone(
    page: Page, playground_server: ServerProcess, playground_key: str, tmp_path: Path
) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    page.locator("#endpoint").select_option("image-to-image")
    page.locator("#image_url-file").set_input_files(write_png(tmp_path / "a-wide-picture.png", 390, 120))
    expect(page.locator("#image_url-preview")).to_be_visible()
    for width in (1280, 390):  # a desktop, and a phone as wide as the picture
        page.set_viewport_size({"width": width, "height": 900})
        inside = page.evaluate(
            """() => {
                const zone = document.querySelector("#image_url-field .drop-zone").getBoundingClientRect();
                const image = document.getElementById("image_url-preview").getBoundingClientRect();
                return [image.left >= zone.left - 0.5, image.right <= zone.right + 0.5, image.width > 0];
            }"""
        )
        assert inside == [True, True, True], width
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_label("Prompt", exact=True).fill("a glass bottle on a wooden table, with warm light and a long shadow")
    open_section(page, "#code")
    code = page.locator("#code-text")
    expect(code).to_contain_text('fal_client.encode_file("a-wide-picture.png")')
    info = httpx.get(f"{playground_server.http_url}/api/info").json()
    limit = info["max_inline_image_bytes"] // 2**20
    expect(code).to_contain_text(f"up to {limit} MiB per image here")
    assert "upload_file(" not in (code.text_content() or "")
    expect(code).to_contain_text(f"SSL_CERT_FILE={playground_server.ca_file}")

    # Lines wrap between words, at a space or after punctuation, never between two letters or digits.
    for tab in ("Python", "JavaScript", "curl"):
        page.get_by_role("tab", name=tab).click()
        broken = page.evaluate(
            """() => {
                const code = document.getElementById("code-text");
                const text = code.firstChild;
                const range = document.createRange();
                const cuts = [];
                let top = null;
                for (let index = 0; index < text.length; index++) {
                    range.setStart(text, index);
                    range.setEnd(text, index + 1);
                    const rect = range.getClientRects()[0];
                    if (!rect) continue;
                    if (top !== null && rect.top > top + 1) {
                        const word = /[\\p{L}\\p{N}]/u;
                        if (word.test(text.data[index - 1]) && word.test(text.data[index])) {
                            cuts.push(text.data.slice(index - 8, index + 8));
                        }
                    }
                    top = rect.top;
                }
                return cuts;
            }"""
        )
        assert broken == [], (tab, broken)


def test_gallery_tiles_follow_requests_the_page_did_not_send(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    headers = {"Authorization": f"Key {playground_key}"}
    ids = [
        httpx.post(
            f"{playground_server.http_url}/queue/fal-ai/layer-diffusion",
            json={"prompt": f"sent elsewhere {steps}", "width": 512, "height": 512, "num_inference_steps": steps},
            headers=headers,
        ).json()["request_id"]
        for steps in (12, 13)
    ]
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    last = page.locator(f'#gallery li[data-request-id="{ids[1]}"]')
    expect(last).to_contain_text("Text to transparent image")
    for request_id in ids:  # no Refresh pressed
        tile = page.locator(f'#gallery li[data-request-id="{request_id}"] button')
        expect(tile).to_have_attribute(
            "aria-label", f"sent elsewhere {12 + ids.index(request_id)}: show image", timeout=180_000
        )


@pytest.fixture(scope="module")
def checkpoint_playground(
    settings: Settings, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A tiny server whose operator lists one more checkpoint, ``other``."""
    other = reweighted_copy(tiny_folder / "base", tmp_path_factory.mktemp("checkpoints") / "other")
    env = server_env(settings, LAYERDIFFUSE_CHECKPOINTS=json.dumps({"other": str(other)}))
    with running_server(tmp_path_factory.mktemp("checkpoint-playground") / "data", env) as process:
        yield process


def test_a_checkpoint_is_chosen_from_the_operators_list(page: Page, checkpoint_playground: ServerProcess) -> None:
    page.goto(checkpoint_playground.http_url)
    enter_key(page, checkpoint_playground.create_key("checkpoints"))
    open_section(page, "#advanced")
    chooser = page.get_by_label("Checkpoint", exact=True)
    expect(chooser).to_be_visible()
    expect(chooser.locator("option")).to_have_text(["the server's model", "other"])
    chooser.select_option("other")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Done", timeout=120_000)
    expect(page.locator("#logs")).to_contain_text("Loaded checkpoint 'other'")


def test_without_checkpoints_there_is_no_chooser(
    page: Page, playground_server: ServerProcess, playground_key: str
) -> None:
    page.goto(playground_server.http_url)
    enter_key(page, playground_key)
    expect(page.locator("#model-name")).to_have_text("tiny")
    expect(page.locator("#model_name-field")).to_be_hidden()
