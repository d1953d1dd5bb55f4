"""The transparency weights of text (and image) to image, in any of the three official files.

``layer_xl_transparent_attn.safetensors`` (Forge LoRA) and ``ld_diffusers_sdxl_attn.safetensors``
(dense offsets) change the attention projections; ``layer_xl_transparent_conv.safetensors``
("conv injection", a "diff" file) changes every other layer instead. The authors find the attention
weights give better results and the conv ones a stronger style influence; both are offered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from ...errors import WeightFormatError
from .attention_weights import AttentionWeights, merge_attention_weights
from .diff_weights import DIFF_SUFFIX, DiffWeights, merge_diff_weights

#: The name of the transparency patch among the UNet's patches.
TEXT_TO_IMAGE = "text-to-image"


def is_diff_file(path: Path) -> bool:
    """Whether a safetensors file is in the "diff" format (read from its header alone)."""
    with safe_open(str(path), framework="pt") as file:
        return any(key.endswith(DIFF_SUFFIX) for key in file.keys())  # noqa: SIM118 (not a dict)


def transparency_patch(
    path: Path, unet: torch.nn.Module, strength: float = 1.0
) -> tuple[set[str], Callable[[torch.nn.Module], object]]:
    """Parse and check the file against ``unet``: the weights it changes, and how to merge it."""
    if is_diff_file(path):
        diff = DiffWeights.load(path)
        if diff.check({key: value.shape for key, value in unet.named_parameters()}):
            raise WeightFormatError(
                f"{path.name} is a conditioned-layer model (its conv_in takes condition latents); the "
                "transparency weights are layer_xl_transparent_attn or layer_xl_transparent_conv"
            )
        return set(diff.shapes), lambda target: merge_diff_weights(target, diff, strength)
    attention = AttentionWeights.load(path)
    attention.validate_against({key: value.shape for key, value in unet.named_parameters()})
    return set(attention.factors), lambda target: merge_attention_weights(target, attention, strength)
