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

from layerdiffuse_server.demo.quality import evaluation_set
from layerdiffuse_server.engine.making import demo_training
from layerdiffuse_server.engine.making.demo_training import CONTACT_SHEET, Recipe, write_demo

pytestmark = pytest.mark.slow

FEW_STEPS = Recipe(
    poses=1,
    vae_steps=2,
    transparency_steps=2,
    base_steps=2,
    lora_steps=2,
    decoder_steps=2,
    sampled_sprites=2,
    image_batch=2,
    latent_batch=4,
)
#: Scoring checks the code path, not the weights (two training steps draw nothing): three prompts.
FEW_CASES = evaluation_set()[:3]


def test_a_short_run_writes_a_loadable_preset_and_its_manifest(tmp_path: Path) -> None:
    stages: list[str] = []
    folder = tmp_path / "demo"
    manifest = write_demo(
        folder, FEW_STEPS, lambda stage, *_: stages.append(stage), command="layerdiffuse train-demo x", cases=FEW_CASES
    )
    assert list(dict.fromkeys(stages)) == ["vae", "transparency", "base", "lora", "sampling", "decoder"]
    assert (folder / CONTACT_SHEET).is_file() and json.loads((folder / "MANIFEST.json").read_text()) == manifest
    assert manifest["command"] == "layerdiffuse train-demo x" and manifest["recipe"]["decoder_steps"] == 2
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert {"base/unet/diffusion_pytorch_model.fp16.safetensors", "vae_transparent_encoder.safetensors"} <= set(
        manifest["sha256"]
    )
    lora = load_file(folder / "layer_xl_transparent_attn.safetensors")
    assert all(tensor.dtype == torch.float16 for tensor in lora.values())
    assert manifest["evaluation"]["prompts"] == 3
    assert 0 <= manifest["evaluation"]["clear_background_images"] <= 1

    # --from: the same files but a refined decoder, under the earlier recipe, the earlier run recorded.
    stages.clear()
    refined = write_demo(
        tmp_path / "refined",
        replace(Recipe(), decoder_steps=3, sampled_sprites=2),
        lambda stage, *_: stages.append(stage),
        command="layerdiffuse train-demo y --from x",
        earlier=folder,
        cases=FEW_CASES,
    )
    assert list(dict.fromkeys(stages)) == ["sampling", "decoder"]
    assert refined["recipe"] == {**manifest["recipe"], "decoder_steps": 3}
    assert refined["earlier"]["command"] == "layerdiffuse train-demo x"
    changed = {name for name, digest in refined["sha256"].items() if manifest["sha256"].get(name) != digest}
    assert changed == {"vae_transparent_decoder.safetensors"}
    assert set(refined["sha256"]) == set(manifest["sha256"])


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
