"""The shipped ``demo`` preset: its files are the ones its manifest describes, it loads through
the code that loads the real weights, and what it draws is right — the shape and colour the prompt
asked for, with soft, semi-transparent edges."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from layerdiffuse_server.demo.quality import CLEAR_BACKGROUND_HAZE, Scores, evaluation_set, judge
from layerdiffuse_server.engine.presets import DEMO_FOLDER, DEMO_SIZE, preset_sources
from layerdiffuse_server.schemas import GenerationParams
from layerdiffuse_server.settings import Settings

MANIFEST = json.loads((DEMO_FOLDER / "MANIFEST.json").read_text())


@pytest.fixture(scope="module")
def demo_pipeline(settings: Settings) -> Iterator[object]:
    from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline

    yield TransparentSDXLPipeline.from_preset("demo", settings=settings, device="cpu")


@pytest.fixture(scope="module")
def scores(demo_pipeline: object) -> Scores:
    from layerdiffuse_server.engine.making.demo_training import evaluate

    scores, _ = evaluate(demo_pipeline)
    return scores


def test_shipped_files_are_the_ones_the_manifest_records() -> None:
    recorded = MANIFEST["sha256"]
    shipped = {
        str(path.relative_to(DEMO_FOLDER)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(DEMO_FOLDER.rglob("*"))
        if path.is_file() and path.name != "MANIFEST.json"
    }
    assert shipped == recorded
    assert sum(path.stat().st_size for path in DEMO_FOLDER.rglob("*") if path.is_file()) <= 30 * 2**20
    assert MANIFEST["command"].startswith("layerdiffuse train-demo")


def test_the_preset_is_in_the_official_formats() -> None:
    from safetensors import safe_open

    from tests.conftest import parse_shape, read_key_table

    sources = preset_sources("demo", Path("unused"))
    with safe_open(sources.encoder, "pt") as encoder:
        shapes = {key: tuple(encoder.get_slice(key).get_shape()) for key in encoder.keys()}  # noqa: SIM118
    assert shapes == {key: parse_shape(shape) for key, shape in read_key_table("keys_vae_transparent_encoder.tsv")}
    with safe_open(sources.layer_weights, "pt") as lora:
        keys = list(lora.keys())
    assert keys and all(key.startswith("diffusion_model.") and "::lora::" in key for key in keys)


def test_shapes_and_colours_are_the_ones_asked_for(scores: Scores) -> None:
    wrong = [
        f"{case.prompt!r} → {judgement.shape} in {judgement.colour}"
        for case, judgement in zip(evaluation_set(), scores.judgements, strict=True)
        if (judgement.shape, judgement.colour) != (case.shape, case.colour)
    ]
    assert scores.shape_accuracy >= 0.8, wrong
    assert scores.colour_accuracy >= 0.9, wrong
    assert scores.soft_edge_images >= 0.9


def test_backgrounds_are_clear_and_bodies_unmarked(scores: Scores) -> None:
    hazy = [
        f"{case.prompt!r} (seed {case.seed}): {judgement.background_haze:.0%} of the background has alpha"
        for case, judgement in zip(evaluation_set(), scores.judgements, strict=True)
        if judgement.background_haze > CLEAR_BACKGROUND_HAZE
    ]
    assert scores.clear_background_images >= 0.9, hazy
    assert scores.mean_background_haze <= 0.02
    assert scores.marked_images <= 0.05


def test_the_accuracies_are_the_ones_recorded_with_the_weights(scores: Scores) -> None:
    recorded = MANIFEST["evaluation"]
    # Another CPU may round a few float32 sums differently; a sprite or two may change its verdict.
    assert scores.shape_accuracy == pytest.approx(recorded["shape_accuracy"], abs=0.05)
    assert scores.colour_accuracy == pytest.approx(recorded["colour_accuracy"], abs=0.05)
    assert scores.clear_background_images == pytest.approx(recorded["clear_background_images"], abs=0.05)


def test_a_request_without_a_size_gets_the_native_one(demo_pipeline: object) -> None:
    native = demo_pipeline.generate(GenerationParams(prompt="a blue ring", seed=4))  # type: ignore[attr-defined]
    assert (native.images[0].width, native.images[0].height) == (DEMO_SIZE, DEMO_SIZE)
    wide = demo_pipeline.generate(  # type: ignore[attr-defined]
        GenerationParams(prompt="a blue ring", seed=4, width=2 * DEMO_SIZE, num_inference_steps=4)
    )
    assert (wide.images[0].width, wide.images[0].height) == (2 * DEMO_SIZE, DEMO_SIZE)


def test_transparency_is_real_background_clear_body_opaque(demo_pipeline: object) -> None:
    image = demo_pipeline.generate(GenerationParams(prompt="a green square", seed=21)).images[0]  # type: ignore[attr-defined]
    alpha = image.rgba[..., 3].astype(np.float64) / 255
    corners = np.concatenate([alpha[:8, :8].ravel(), alpha[:8, -8:].ravel(), alpha[-8:, :8].ravel()])
    assert corners.mean() < 0.05, "the background is transparent"
    assert alpha[DEMO_SIZE // 2 - 4 : DEMO_SIZE // 2 + 4, DEMO_SIZE // 2 - 4 : DEMO_SIZE // 2 + 4].mean() > 0.9
    assert judge(image.rgba).shape == "square"
