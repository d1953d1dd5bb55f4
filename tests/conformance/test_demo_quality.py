"""The README's promise, end to end: ``serve --model demo`` and the unmodified ``fal_client`` give
recognisable transparent sprites — the evaluation prompts' shapes and colours, judged from the
downloaded PNGs."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.demo.quality import evaluation_set, score
from layerdiffuse_server.engine.presets import DEMO_SIZE
from layerdiffuse_server.settings import Settings

from .conftest import ServerProcess, python_client_env, run_python

pytestmark = pytest.mark.conformance

#: One prompt in four of the evaluation set: every shape and every colour still appear.
CASES = evaluation_set()[::4]


def test_the_official_client_gets_the_sprites_it_asked_for(demo_server: ServerProcess, demo_key: str) -> None:
    inputs = [{"prompt": case.prompt, "seed": case.seed} for case in CASES]
    outcome = run_python("run_many", {"inputs": inputs}, python_client_env(demo_server, demo_key), timeout=600)
    assert outcome["ok"], outcome
    images = []
    for output, case in zip(outcome["outputs"], CASES, strict=True):
        assert output["seed"] == case.seed
        assert (output["image"]["width"], output["image"]["height"]) == (DEMO_SIZE, DEMO_SIZE)
        png = Image.open(io.BytesIO(httpx.get(output["image"]["url"]).content))
        assert png.mode == "RGBA"
        images.append(np.asarray(png))
    scores = score(CASES, images)
    verdicts = [(case.prompt, j.shape, j.colour) for case, j in zip(CASES, scores.judgements, strict=True)]
    assert scores.shape_accuracy >= 0.8, verdicts
    assert scores.colour_accuracy >= 0.9, verdicts
    assert scores.soft_edge_images >= 0.9, verdicts


def test_the_same_seed_gives_the_same_png_through_the_server_and_the_engine(
    demo_server: ServerProcess, demo_key: str, settings: Settings
) -> None:
    from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline

    case = CASES[0]
    arguments = {"input": {"prompt": case.prompt, "seed": case.seed}}
    outcome = run_python("run", arguments, python_client_env(demo_server, demo_key))
    assert outcome["ok"], outcome
    served = np.asarray(Image.open(io.BytesIO(httpx.get(outcome["output"]["image"]["url"]).content)))
    engine = TransparentSDXLPipeline.from_preset("demo", settings=settings, device="cpu")
    direct = engine.generate(prompt=case.prompt, seed=case.seed).images[0].rgba
    assert np.abs(served.astype(np.int16) - direct).max() <= 2  # thread counts may round a sum differently
