"""Style LoRA files for the tiny model, written in each layout people have.

kohya/A1111 keys are built the way kohya's trainer names SDXL modules (its SGM block names, ``_`` for
``.``, an ``alpha`` per module); the diffusers and PEFT files are written by diffusers'
``save_lora_weights`` from PEFT-named factors, as diffusers' training scripts save them (the diffusers
layout through ``convert_state_dict_to_diffusers`` first, as ``train_dreambooth_lora_sdxl.py`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from layerdiffuse_server.engine.making.random_weights import DIFFUSERS_TO_SGM_BLOCKS

#: UNet modules the test LoRAs change: attention projections of two blocks, and one 3×3 conv.
UNET_ATTENTION = [
    f"{block}.transformer_blocks.0.{attention}.{projection}"
    for block in ("down_blocks.1.attentions.0", "mid_block.attentions.0")
    for attention in ("attn1", "attn2")
    for projection in ("to_q", "to_k", "to_v", "to_out.0")
]
UNET_CONV = "down_blocks.0.resnets.0.conv1"
#: Its kohya (SGM) name: input block 1, its resnet's ``in_layers.2``.
UNET_CONV_KOHYA = "input_blocks_1_0_in_layers_2"
#: Text encoder modules, named as LoRA files name them (with ``text_model.``, which transformers 5
#: dropped from CLIPTextModel's own names but not from CLIPTextModelWithProjection's).
TEXT_MODULES = [
    f"text_model.encoder.layers.{layer}.{module}"
    for layer in (0, 1)
    for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1")
]


def _factors(shape: torch.Size, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(up, down)`` whose product is a modest change of a weight of ``shape``."""
    out_features, in_features = shape[0], shape[1]
    kernel = tuple(shape[2:])
    down = torch.randn(rank, in_features, *kernel, generator=generator) * (0.2 / in_features**0.5)
    up = torch.randn(out_features, rank, *([1] * len(kernel)), generator=generator) / rank**0.5
    return up, down


def _shape(shapes: dict[str, torch.Size], module: str) -> torch.Size:
    return shapes.get(f"{module}.weight") or shapes[f"{module.removeprefix('text_model.')}.weight"]


def peft_factors(
    shapes: dict[str, dict[str, torch.Size]], rank: int, seed: int = 0, *, convs: tuple[str, ...] = ()
) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT-named factors per component (``<module>.lora_A.weight``/``lora_B``), as ``get_peft_model_state_dict``."""
    generator = torch.Generator().manual_seed(seed)
    modules = {
        "unet": UNET_ATTENTION + list(convs),
        "text_encoder": TEXT_MODULES,
        "text_encoder_2": TEXT_MODULES,
    }
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for component, names in modules.items():
        part: dict[str, torch.Tensor] = {}
        for module in names:
            up, down = _factors(_shape(shapes[component], module), rank, generator)
            part[f"{module}.lora_A.weight"], part[f"{module}.lora_B.weight"] = down, up
        factors[component] = part
    return factors


def _target_modules(component: str, part: dict[str, torch.Tensor]) -> list[str]:
    """The UNet's modules by full name; the text encoders' by last name, as the training scripts list
    them (``q_proj`` …: the tiny encoders' every layer, so nothing else matches)."""
    modules = {key.split(".lora_")[0] for key in part}
    return sorted(modules if component == "unet" else {module.rsplit(".", 1)[-1] for module in modules})


def write_peft_lora(
    folder: Path, shapes: dict[str, dict[str, torch.Size]], *, rank: int = 4, alpha: float = 8.0, seed: int = 0
) -> Path:
    """A PEFT-layout file with diffusers' adapter metadata (``lora_alpha`` ≠ rank, so the scale counts)."""
    from diffusers import StableDiffusionXLPipeline

    # conv_in too: a conditioned-layer model widens it, and the LoRA must still change its latent channels
    factors = peft_factors(shapes, rank, seed, convs=(UNET_CONV, "conv_in"))
    metadata = {
        component: {"r": rank, "lora_alpha": alpha, "target_modules": _target_modules(component, part)}
        for component, part in factors.items()
    }
    StableDiffusionXLPipeline.save_lora_weights(
        folder,
        unet_lora_layers=factors["unet"],
        text_encoder_lora_layers=factors["text_encoder"],
        text_encoder_2_lora_layers=factors["text_encoder_2"],
        unet_lora_adapter_metadata=metadata["unet"],
        text_encoder_lora_adapter_metadata=metadata["text_encoder"],
        text_encoder_2_lora_adapter_metadata=metadata["text_encoder_2"],
        weight_name="peft_lora.safetensors",
    )
    return folder / "peft_lora.safetensors"


def write_diffusers_lora(
    folder: Path, shapes: dict[str, dict[str, torch.Size]], *, rank: int = 4, seed: int = 1
) -> Path:
    """A diffusers-layout file (``….lora.down``, ``lora_linear_layer``), no metadata: alpha is the rank."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    factors = peft_factors(shapes, rank, seed)
    StableDiffusionXLPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(factors["unet"]),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(factors["text_encoder"]),
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(factors["text_encoder_2"]),
        weight_name="diffusers_lora.safetensors",
    )
    return folder / "diffusers_lora.safetensors"


def kohya_unet_name(module: str) -> str:
    """A diffusers UNet module under kohya's SDXL name (``lora_unet_input_blocks_4_1_…``)."""
    if module == UNET_CONV:
        return f"lora_unet_{UNET_CONV_KOHYA}"
    block, _, rest = module.partition(".transformer_blocks.")
    return f"lora_unet_{DIFFUSERS_TO_SGM_BLOCKS[block]}.transformer_blocks.{rest}".replace(".", "_")


def kohya_state_dict(
    shapes: dict[str, dict[str, torch.Size]], *, rank: int = 4, alpha: float = 2.0, seed: int = 2
) -> dict[str, torch.Tensor]:
    """Kohya/A1111 keys for the UNet (attention and a conv) and both text encoders, with ``alpha``."""
    factors = peft_factors(shapes, rank, seed, convs=(UNET_CONV,))
    names: dict[str, Any] = {
        "unet": kohya_unet_name,
        "text_encoder": lambda module: f"lora_te1_{module}".replace(".", "_"),
        "text_encoder_2": lambda module: f"lora_te2_{module}".replace(".", "_"),
    }
    state: dict[str, torch.Tensor] = {}
    for component, part in factors.items():
        for key, down in part.items():
            if ".lora_A." not in key:
                continue
            module = key.removesuffix(".lora_A.weight")
            name = names[component](module)
            state[f"{name}.lora_down.weight"] = down
            state[f"{name}.lora_up.weight"] = part[f"{module}.lora_B.weight"]
            state[f"{name}.alpha"] = torch.tensor(alpha)
    return state


def write_kohya_lora(folder: Path, shapes: dict[str, dict[str, torch.Size]], **options: Any) -> Path:
    path = folder / "kohya_lora.safetensors"
    save_file(kohya_state_dict(shapes, **options), str(path))
    return path
