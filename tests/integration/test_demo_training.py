"""``train-demo`` end to end on a few steps: every stage runs, the files are written in the official
formats and load through the real loading code, the manifest describes them, and the same seed
trains the same weights."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerdiffuse_server.engine.making import demo_training
from layerdiffuse_server.engine.making.demo_training import CONTACT_SHEET, Recipe, write_demo

pytestmark = pytest.mark.slow

FEW_STEPS = Recipe(
    poses=1, vae_steps=2, transparency_steps=2, base_steps=2, lora_steps=2, image_batch=2, latent_batch=4
)


def test_a_short_run_writes_a_loadable_preset_and_its_manifest(tmp_path: Path) -> None:
    stages: list[str] = []
    manifest = write_demo(
        tmp_path / "demo", FEW_STEPS, lambda stage, *_: stages.append(stage), command="layerdiffuse train-demo x"
    )
    assert list(dict.fromkeys(stages)) == ["vae", "transparency", "base", "lora"]
    folder = tmp_path / "demo"
    assert (folder / CONTACT_SHEET).is_file() and json.loads((folder / "MANIFEST.json").read_text()) == manifest
    assert manifest["command"] == "layerdiffuse train-demo x" and manifest["recipe"]["lora_steps"] == 2
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert {"base/unet/diffusion_pytorch_model.fp16.safetensors", "vae_transparent_encoder.safetensors"} <= set(
        manifest["sha256"]
    )
    lora = load_file(folder / "layer_xl_transparent_attn.safetensors")
    assert all(tensor.dtype == torch.float16 for tensor in lora.values())
    assert 0 <= manifest["evaluation"]["shape_accuracy"] <= 1 and manifest["evaluation"]["prompts"] == 42


def test_the_same_seed_trains_the_same_weights_and_another_seed_others(tmp_path: Path) -> None:
    recipe = replace(FEW_STEPS, vae_steps=3)

    def vae_after_training(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        seeded = replace(recipe, seed=seed)
        pipeline = demo_training.build_sdxl_pipeline(demo_training.DEMO_SPEC, tmp_path / f"seed-{seed}")
        demo_training.train_vae(pipeline.vae, demo_training.make_sprites(seeded), seeded, lambda *_: None)
        return pipeline.vae.state_dict()

    first, again, other = vae_after_training(0), vae_after_training(0), vae_after_training(1)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
