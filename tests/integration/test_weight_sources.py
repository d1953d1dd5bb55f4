"""Finding weights: the real sdxl preset's hub paths, the hub cache, offline mode, clear errors."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from huggingface_hub import constants

from layerdiffuse_server.engine.making.random_weights import TINY_SPEC, write_random_preset
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.engine.presets import LAYERDIFFUSE_REPO, SAFETY_CHECKER, SDXL_BASE
from layerdiffuse_server.engine.weights.sources import HubReference, parse_reference, resolve_file
from layerdiffuse_server.errors import MissingWeightsError
from layerdiffuse_server.settings import Settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache: Path, repo_id: str) -> Path:
    """A folder laid out as the hub library stores a downloaded repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@pytest.fixture()
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_references_are_told_apart(tmp_path: Path) -> None:
    assert parse_reference("LayerDiffusion/layerdiffusion-v1/vae_transparent_decoder.safetensors") == HubReference(
        "LayerDiffusion/layerdiffusion-v1", "vae_transparent_decoder.safetensors"
    )
    assert parse_reference(SDXL_BASE) == HubReference(SDXL_BASE)
    assert parse_reference("./weights/x.safetensors") == Path("weights/x.safetensors")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert parse_reference(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"


def test_sdxl_preset_loads_from_the_hub_cache_offline(offline_cache: Path, tmp_path: Path) -> None:
    """The real preset's path end to end: repo ids, fp16 variant, Forge LoRA, decoder, CompVis checker."""
    generated = tmp_path / "generated"
    write_random_preset(replace(TINY_SPEC, variant="fp16"), generated)
    shutil.copytree(generated / "base", _snapshot(offline_cache, SDXL_BASE), dirs_exist_ok=True)
    layer_repo = _snapshot(offline_cache, LAYERDIFFUSE_REPO)
    for name in (
        "layer_xl_transparent_attn.safetensors",
        "vae_transparent_decoder.safetensors",
        "vae_transparent_encoder.safetensors",
    ):
        shutil.copy(generated / name, layer_repo / name)
    shutil.copytree(generated / "safety_checker", _snapshot(offline_cache, SAFETY_CHECKER), dirs_exist_ok=True)

    pipeline = TransparentSDXLPipeline.from_preset(
        "sdxl", settings=Settings(home=tmp_path), device="cpu", dtype="float32"
    )
    result = pipeline.generate(prompt="a glass bottle", seed=1, width=64, height=64, num_inference_steps=2)
    assert result.images[0].rgba.shape == (64, 64, 4) and result.has_nsfw_concepts == [False]


def test_missing_hub_weights_say_which_file_where_and_how_to_get_them(offline_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as caught:
        TransparentSDXLPipeline.from_preset("sdxl", settings=Settings(home=tmp_path), device="cpu")
    message = str(caught.value)
    assert SDXL_BASE in message and str(offline_cache) in message
    assert "layerdiffuse download" in message and "HF_HUB_OFFLINE" in message and "--base" in message

    with pytest.raises(MissingWeightsError) as caught:
        resolve_file(
            f"{LAYERDIFFUSE_REPO}/vae_transparent_decoder.safetensors", what="Transparent VAE decoder", flag="--decoder"
        )
    assert "vae_transparent_decoder.safetensors" in str(caught.value) and LAYERDIFFUSE_REPO in str(caught.value)


def test_missing_local_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"no file at '.*nowhere\.safetensors'.*--decoder"):
        resolve_file(tmp_path / "nowhere.safetensors", what="Transparent VAE decoder", flag="--decoder")
