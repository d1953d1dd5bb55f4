"""Other SDXL checkpoints made from the tiny preset's base folder: the same architecture with other
weights (what an operator's fine-tune is), or the same weights declared v-prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def reweighted_copy(base: Path, target: Path, seed: int = 1) -> Path:
    """A copy of the diffusers folder ``base`` whose UNet weights are moved by seeded noise (another fine-tune)."""
    shutil.copytree(base, target)
    weights_file = target / "unet" / "diffusion_pytorch_model.safetensors"
    generator = torch.Generator().manual_seed(seed)
    weights = {
        name: tensor * (1 + 0.3 * torch.randn(tensor.shape, generator=generator))
        if tensor.is_floating_point()
        else tensor
        for name, tensor in load_file(weights_file).items()
    }
    save_file(weights, weights_file)
    return target


def scheduler_configured_copy(base: Path, target: Path, **scheduler: object) -> Path:
    """A copy of ``base`` whose scheduler config says ``scheduler`` (``prediction_type="v_prediction"`` …)."""
    shutil.copytree(base, target)
    config_file = target / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | scheduler))
    return target
