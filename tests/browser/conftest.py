"""Headless Chromium (Debian's ``chromium``) driven by Playwright, against a real server process."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from layerdiffuse_server.settings import Settings

from ..server_process import ServerProcess, running_server, server_env

ARTIFACTS = Path(os.environ.get("LAYERDIFFUSE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
# Chromium in a sandbox-less container with no network: these are the flags that keep it quiet and up.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Answers of the API may be errors on purpose (a refused key, a cancelled request); anything else the
# page loads (its script, style, icon, the images) must load.
API_PATHS = ("/queue/", "/api/", "/run/")


def is_api(url: str) -> bool:
    return urlsplit(url).path.startswith(API_PATHS)


def chromium_executable() -> str:
    found = os.environ.get("LAYERDIFFUSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "no Chromium found (Debian: apt-get install chromium; or set LAYERDIFFUSE_CHROMIUM)"
    if os.environ.get("LAYERDIFFUSE_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Module-scoped: Playwright's sync API runs an event loop on this thread while it is open,
    which would break tests that start their own with ``asyncio.run``."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def playground_server(
    settings: Settings, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("playground") / "data", server_env(settings)) as process:
        yield process


@pytest.fixture(scope="module")
def playground_key(playground_server: ServerProcess) -> str:
    return playground_server.create_key("browser")


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser profile per test; page errors, Content-Security-Policy violations and files of the
    page that fail to load (a missing icon: anything but the API's own error answers) fail the test (the
    playground must work under its own policy); a screenshot is kept as an artifact."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    opened = context.new_page()
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            errors.append(message.text)
        elif message.type == "error" and message.text.startswith("Failed to load resource"):
            url = message.location.get("url", "")
            if not is_api(url):
                errors.append(f"{message.text}: {url}")

    def on_response(response: Any) -> None:
        if response.status >= 400 and not is_api(response.url):
            errors.append(f"{response.status} for {response.url}")

    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", on_console)
    opened.on("response", on_response)
    yield opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
