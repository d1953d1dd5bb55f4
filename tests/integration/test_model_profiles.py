"""What a model knows, said where clients see it: the demo model names the words of a prompt it
ignores (its request's logs, the output's ``ignored_prompt_words``), and ``/api/info`` tells the
playground which model runs, a prompt it draws and its vocabulary."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from itertools import product
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from layerdiffuse_server.api import Services, create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.demo import captions
from layerdiffuse_server.demo.sprites import sprite_for
from layerdiffuse_server.model_profiles import profile_of
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.testing import FakeEngine
from layerdiffuse_server.worker import GenerationWorker

from .api_support import APP, server_settings, wait_completed


def test_the_demo_vocabulary_is_the_words_of_its_captions() -> None:
    seen = {word for index in range(len(captions.SHAPES) * len(captions.COLOURS) * 4) for word in
            captions.words(sprite_for(index).caption)}  # fmt: skip
    assert seen == captions.VOCABULARY
    demo = profile_of("demo")
    assert demo.ignored_words(demo.example_prompt) == []
    for shape, colour, style in product(captions.SHAPES, captions.COLOURS, captions.STYLES):
        assert demo.ignored_words(captions.caption(shape, colour, style).upper() + "!") == []


@pytest.mark.parametrize(
    ("prompt", "ignored"),
    [
        ("a cat", ["cat"]),
        ("a glass bottle on a wooden table", ["glass", "bottle", "on", "wooden", "table"]),
        ("a black hexagon, a Black HEXAGON", ["black", "hexagon"]),
        ("a red star with a soft glow", []),
    ],
)
def test_the_demo_model_names_the_words_it_ignores(prompt: str, ignored: list[str]) -> None:
    assert profile_of("demo").ignored_words(prompt) == ignored


def test_open_vocabulary_models_ignore_nothing() -> None:
    for name in ("sdxl", "tiny", "sdxl-random"):
        assert profile_of(name).ignored_words("a cat") is None
        assert profile_of(name).vocabulary is None


def served(settings: Settings, tmp_path: Path, model: str) -> Iterator[tuple[TestClient, Services]]:
    services = build_services(server_settings(settings, tmp_path, model=model), None, model_name=model)
    with TestClient(create_app(services)) as client:
        client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        yield client, services


def run_queued(services: Services, model: str) -> None:
    worker = GenerationWorker(
        services.manager, services.blobs, FakeEngine, base_url=services.base_url, model_name=model
    )
    worker.engine = FakeEngine()
    while worker.run_once():
        pass


def test_a_request_to_the_demo_model_says_which_words_it_ignored(settings: Settings, tmp_path: Path) -> None:
    for client, services in served(settings, tmp_path, "demo"):
        small = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}
        cat, star = (
            client.post(f"/queue{APP}", json=small | {"prompt": prompt}).json()["request_id"]
            for prompt in ("a black cat", "a red star with a soft glow")
        )
        run_queued(services, "demo")
        logs = [line for line in wait_completed(client, cat)["logs"] if "ignored" in line["message"]]
        assert len(logs) == 1 and logs[0]["level"] == "WARN"
        assert "black, cat" in logs[0]["message"] and "circle" in logs[0]["message"]
        assert client.get(f"/queue{APP}/requests/{cat}").json()["ignored_prompt_words"] == ["black", "cat"]
        assert not any("ignored" in line["message"] for line in wait_completed(client, star)["logs"])
        assert client.get(f"/queue{APP}/requests/{star}").json()["ignored_prompt_words"] == []


def test_other_models_keep_fals_output_shape(settings: Settings, tmp_path: Path) -> None:
    for client, services in served(settings, tmp_path, "tiny"):
        body = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}
        request_id = client.post(f"/queue{APP}", json=body).json()["request_id"]
        run_queued(services, "tiny")
        wait_completed(client, request_id)
        assert set(client.get(f"/queue{APP}/requests/{request_id}").json()) == {
            "image",
            "images",
            "seed",
            "has_nsfw_concepts",
            "has_transparency",
        }


def test_server_info_names_the_model_and_what_it_knows(settings: Settings, tmp_path: Path) -> None:
    for client, _services in served(settings, tmp_path, "demo"):
        info = client.get("/api/info", headers={"Authorization": ""}).json()  # no key needed
        assert info["model"]["name"] == "demo" and info["model"]["example_prompt"] == "a red star with a soft glow"
        assert info["model"]["vocabulary"]["shapes"] == list(captions.SHAPES)
        assert info["model"]["vocabulary"]["colours"] == list(captions.COLOURS)
        assert "with a soft glow" in info["model"]["vocabulary"]["styles"]
        assert info["max_inline_image_bytes"] == 16 * 2**20
        assert info["ca_file"] == str(tmp_path / "data" / "tls" / "ca.pem")
    for client, _services in served(settings, tmp_path / "sdxl", "sdxl"):
        info = client.get("/api/info").json()
        assert info["model"]["vocabulary"] is None and info["model"]["name"] == "sdxl"


def test_the_key_is_taken_as_printed_or_with_its_scheme(settings: Settings, tmp_path: Path) -> None:
    for client, services in served(settings, tmp_path, "tiny"):
        key = issue_key(services.store.keys, "bare").value
        for header in (key, f"Key {key}", f"key  {key}"):
            assert client.get("/api/requests", headers={"Authorization": header}).status_code == 200, header
        for header in (f"Bearer {key}", "nocolon", f"Key {key}x"):
            assert client.get("/api/requests", headers={"Authorization": header}).status_code == 401, header


def test_the_readme_lists_the_demo_vocabulary() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    first_section = readme.split("\n## ", 2)[1]
    rows = dict(re.findall(r"^\| (shapes|colours|styles) \| (.+) \|$", first_section, re.MULTILINE))
    assert rows["shapes"].split(", ") == list(captions.SHAPES)
    assert rows["colours"].split(", ") == list(captions.COLOURS)
    phrases = [phrase for phrase in captions.STYLE_PHRASES.values() if phrase]
    assert sorted(rows["styles"].removeprefix("plain (no word), ").split(", ")) == sorted(phrases)


def test_an_api_node_names_the_model_its_workers_run(settings: Settings, tmp_path: Path) -> None:
    for client, services in served(settings, tmp_path, "sdxl"):
        worker = GenerationWorker(services.manager, services.blobs, FakeEngine, base_url="", model_name="demo")
        worker.engine = FakeEngine()
        worker.report()
        assert client.get("/api/info").json()["model"]["name"] == "demo"
        # A worker whose heartbeat stopped (crashed) names nothing: the configured model again.
        (row,) = [row for row in services.store.workers.all() if row.id == worker.worker_id]
        services.store.workers.report(replace(row, heartbeat_at=row.heartbeat_at - 3600))
        assert client.get("/api/info").json()["model"]["name"] == "sdxl"
