"""A LoRA uploaded with each official client (``fal_client``, ``@fal-ai/client``) to a real server,
then resolved by its URL as a worker resolves a request's ``loras`` path: read from the server's
own store, not fetched (the resolver here may connect nowhere)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerdiffuse_server.files import StoredFiles, open_blob_store
from layerdiffuse_server.loras.cache import LoraCache
from layerdiffuse_server.loras.fetch import LoraFetchPolicy
from layerdiffuse_server.loras.sources import LoraSources
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store import open_store

from ..support.lora_files import write_kohya_lora
from ..support.loras import lora_bytes
from .conftest import ServerProcess, python_client_env, run_js, run_python

LORA = lora_bytes(rank=8, seed=3)


@pytest.fixture
def resolver(server: ServerProcess, tmp_path: Path) -> Iterator[LoraSources]:
    """A worker's resolver on the server's database and file store, with no network allowed."""
    settings = Settings(home=tmp_path, data_dir=server.data_dir)
    store = open_store(settings.store_url)
    files = StoredFiles(open_blob_store(settings.blob_url), store.files)
    yield LoraSources(cache=LoraCache(tmp_path / "cache", 1 << 30), policy=LoraFetchPolicy(), files=files)
    store.close()


def test_a_lora_uploaded_with_the_python_client_resolves_by_its_url(
    server: ServerProcess, api_key: str, connect_proxy: str, resolver: LoraSources, tmp_path: Path
) -> None:
    lora = tmp_path / "pixel-style.safetensors"
    lora.write_bytes(LORA)
    outcome = run_python(
        "lora_uploads", {"file": str(lora)}, python_client_env(server, api_key, via_proxy=connect_proxy)
    )
    assert outcome["ok"], outcome
    assert outcome["urls"]["upload_file"].endswith("/pixel-style.safetensors")
    for how, url in outcome["urls"].items():
        assert resolver(url).read_bytes() == LORA, how


def test_a_lora_uploaded_with_the_js_client_resolves_by_its_url(
    node: str, server: ServerProcess, api_key: str, resolver: LoraSources
) -> None:
    encoded = base64.b64encode(LORA).decode()
    uploaded = run_js(node, server, api_key, "uploadLora", {"base64": encoded, "fileName": "watercolor.safetensors"})
    assert uploaded["ok"], uploaded
    assert uploaded["url"].endswith("/watercolor.safetensors")
    assert resolver(uploaded["url"]).read_bytes() == LORA


def test_a_lora_uploaded_with_the_python_client_styles_a_generation_and_scale_zero_does_not(
    server: ServerProcess, api_key: str, connect_proxy: str, tiny_pipeline: object, tmp_path: Path
) -> None:
    """The issue's promise end to end: upload, name its URL in ``loras``, get another image; scale 0, the same."""
    lora = write_kohya_lora(tmp_path, tiny_pipeline.style_loras.targets.shapes)  # type: ignore[attr-defined]
    small = {"prompt": "a lamp", "seed": 9, "width": 64, "height": 64, "num_inference_steps": 2}
    outcome = run_python(
        "lora_runs", {"file": str(lora), "input": small}, python_client_env(server, api_key, via_proxy=connect_proxy)
    )
    assert outcome["ok"], outcome
    digests = outcome["digests"]
    assert digests["styled"] != digests["none"] and digests["zero"] == digests["none"]
