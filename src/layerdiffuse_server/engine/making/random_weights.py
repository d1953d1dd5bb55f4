"""Random-weight models written in the exact on-disk formats of the real ones.

Used by the ``tiny`` preset (a small SDXL-topology model for tests and smoke runs) and the
``sdxl-random`` preset (the full SDXL architecture, which times exactly like the real model).
Everything goes to disk in the formats the real weights use — a diffusers SDXL folder, the Forge
LoRA file under SGM key names, the transparent decoder's state dict, a safety-checker folder — so
that the presets exercise the same loading code as real weights. Generation is seeded and
deterministic for a given torch version.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from ..networks.decoder_network import TransparentDecoderNetwork
from ..networks.encoder_network import LatentTransparencyOffsetEncoder
from ..weights.attention_weights import SGM_TO_DIFFUSERS_BLOCKS, AttentionWeights, attention_projection_keys
from ..weights.unet_keys import sgm_names
from .tokenizer_files import write_byte_level_clip_tokenizer

DIFFUSERS_TO_SGM_BLOCKS = {diffusers: sgm for sgm, diffusers in SGM_TO_DIFFUSERS_BLOCKS.items()}


@dataclass(frozen=True)
class ArchitectureSpec:
    """Sizes of every component of a random-weight preset."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    decoder: dict[str, Any]
    lora_rank: int
    dtype: torch.dtype
    variant: str | None
    safety_checker: dict[str, Any] = field(default_factory=dict)
    text_vocab_size: int | None = None
    #: Also write the conv-injection file and the four conditioned-layer models (for full-size
    #: SDXL they add 9 GB, which the benchmark does not need).
    layer_models: bool = True


SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

#: What makes a UNet "SDXL-shaped": the block layout whose parameter names the LayerDiffuse files use.
SDXL_UNET_TOPOLOGY = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
}
SDXL_VAE_TOPOLOGY = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "scaling_factor": 0.13025,
}

#: The SDXL base architecture (stabilityai/stable-diffusion-xl-base-1.0), 2,567,463,684 UNet parameters.
SDXL_SPEC = ArchitectureSpec(
    unet={
        **SDXL_UNET_TOPOLOGY,
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    vae={
        **SDXL_VAE_TOPOLOGY,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "sample_size": 1024,
        "force_upcast": True,
    },
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    text_encoder_2={
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "hidden_act": "gelu",
        "projection_dim": 1280,
    },
    decoder={},
    lora_rank=256,
    dtype=torch.float16,
    variant="fp16",
    # CLIP ViT-L/14, as in CompVis/stable-diffusion-safety-checker.
    safety_checker={
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 768,
    },
    text_vocab_size=49408,
    layer_models=False,
)

#: SDXL's topology (same block layout and key names) at a size that runs in seconds on a CPU.
TINY_SPEC = ArchitectureSpec(
    unet={
        **SDXL_UNET_TOPOLOGY,
        "sample_size": 32,
        "block_out_channels": (16, 32, 64),
        "norm_num_groups": 8,
        # One transformer per block: at 1024² the first attention level sees 64² tokens, the cost
        # that dominates on a CPU; SDXL's block layout (and so every key name) is unchanged.
        "transformer_layers_per_block": (1, 1, 1),
        "attention_head_dim": (1, 2, 4),
        "cross_attention_dim": 128,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 64 + 6 * 8,
    },
    vae={
        **SDXL_VAE_TOPOLOGY,
        "block_out_channels": (32, 32, 64, 64),
        "layers_per_block": 1,
        "sample_size": 256,
        "force_upcast": False,
    },
    text_encoder={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_act": "quick_gelu",
        "projection_dim": 64,
    },
    text_encoder_2={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_act": "gelu",
        "projection_dim": 64,
    },
    # One resnet per level and attention only at the two deepest (16² and 8² tokens at 1024²), so
    # the eight full-resolution passes of a default-size request stay quick on a CPU; the loader
    # reads all of this off the file.
    decoder={
        "block_out_channels": (4, 8, 8, 16, 16, 32, 32),
        "attention_levels": (False, False, False, False, False, True, True),
        "layers_per_block": 1,
    },
    lora_rank=4,
    dtype=torch.float32,
    variant=None,
    safety_checker={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
    },
)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in ``dtype``: building full SDXL in float32 and casting doubles peak RAM."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_unet(spec: ArchitectureSpec) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**spec.unet)


def build_sdxl_pipeline(spec: ArchitectureSpec, folder: Path) -> Any:
    """A random SDXL pipeline in ``spec``'s sizes; tokenizers are written under ``folder``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    ids = write_byte_level_clip_tokenizer(folder / "tokenizer")
    write_byte_level_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    # The real text encoders have CLIP's 49,408-token embedding; the tiny ones only what the tokenizer spells.
    text_ids: dict[str, Any] = {
        "vocab_size": spec.text_vocab_size or ids["vocab_size"],
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
    }
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**spec.vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, **text_ids, **spec.text_encoder)),
        text_encoder_2=CLIPTextModelWithProjection(
            CLIPTextConfig(max_position_embeddings=77, **text_ids, **spec.text_encoder_2)
        ),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2", model_max_length=77),
        unet=build_unet(spec),
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        add_watermarker=False,
    )


def forge_lora_state_dict(
    unet_shapes: dict[str, torch.Size], rank: int, generator: torch.Generator, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """Random LoRA halves for every attention projection, under Forge's SGM key names."""
    state: dict[str, torch.Tensor] = {}
    for key in sorted(attention_projection_keys(unet_shapes)):
        prefix, _, suffix = key.partition(".transformer_blocks.")
        sgm_key = f"diffusion_model.{DIFFUSERS_TO_SGM_BLOCKS[prefix]}.transformer_blocks.{suffix}"
        out_features, in_features = unet_shapes[key]
        # Scaled so that up @ down is a modest perturbation, like a trained adapter.
        up = torch.randn(out_features, rank, generator=generator) / rank**0.5
        down = torch.randn(rank, in_features, generator=generator) * (0.1 / in_features**0.5)
        state[f"{sgm_key}::lora::0"] = up.to(dtype)
        state[f"{sgm_key}::lora::1"] = down.to(dtype)
    return state


def dense_offsets_state_dict(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official diffusers-CLI format of the same update: dense fp16 ``up @ down`` under diffusers names."""
    return {key: delta.half() for key, delta in AttentionWeights.load(lora).deltas()}


def decoder_state_dict(spec: ArchitectureSpec, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    network = TransparentDecoderNetwork(**spec.decoder)
    return {key: tensor.to(dtype).contiguous() for key, tensor in network.state_dict().items()}


def write_safety_checker(spec: ArchitectureSpec, folder: Path) -> None:
    """A small random CLIP safety checker with thresholds that let random images through."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = dict(spec.safety_checker)
    projection_dim = vision.pop("projection_dim")
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 514,
            "bos_token_id": 512,
            "eos_token_id": 513,
        },
        vision_config=vision,
        projection_dim=projection_dim,
    )
    image_size = vision["image_size"]
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(1.0)
        checker.special_care_embeds_weights.fill_(1.0)
    checker.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)


def encoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A transparent encoder in the official format (fp16), its last layer small but not zero, so
    the ×300 offset it adds is visible (an untrained official-shape encoder offsets nothing)."""
    torch.manual_seed(seed)
    network = LatentTransparencyOffsetEncoder()
    last = network.blocks[-1]
    assert isinstance(last, torch.nn.Conv2d)
    torch.nn.init.normal_(last.weight, std=1e-5)
    return {key: value.to(torch.float16).contiguous() for key, value in network.state_dict().items()}


def write_random_preset(spec: ArchitectureSpec, folder: Path, seed: int = 0) -> None:
    """Write every file of a random-weight preset into ``folder`` (which must be empty or absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with _default_dtype(spec.dtype):
        pipeline = build_sdxl_pipeline(spec, folder / "base")
    pipeline.save_pretrained(folder / "base", variant=spec.variant)
    unet_shapes = {key: value.shape for key, value in pipeline.unet.state_dict().items()}
    if spec.layer_models:
        save_file(conv_diff_state_dict(pipeline.unet, seed), folder / "layer_xl_transparent_conv.safetensors")
        for kind in CONDITION_LATENTS:
            state = conditioned_diff_state_dict(pipeline.unet, kind, seed)  # type: ignore[arg-type]
            save_file(state, folder / f"layer_xl_{kind}.safetensors")
    del pipeline
    save_file(
        forge_lora_state_dict(unet_shapes, spec.lora_rank, generator), folder / "layer_xl_transparent_attn.safetensors"
    )
    with _default_dtype(torch.float32):
        save_file(decoder_state_dict(spec), folder / "vae_transparent_decoder.safetensors")
        save_file(encoder_state_dict(seed), folder / "vae_transparent_encoder.safetensors")
        if spec.safety_checker:
            write_safety_checker(spec, folder / "safety_checker")


#: The LayerDiffuse "diff" files: the conv-injection file and the four conditioned layer models.
DiffKind = Literal["conv", "fg2ble", "bg2ble", "fgble2bg", "bgble2fg"]
#: Condition latents each conditioned model concatenates to the noisy latent (fg, bg, or fg/bg + blend).
CONDITION_LATENTS: dict[str, int] = {"fg2ble": 1, "bg2ble": 1, "fgble2bg": 2, "bgble2fg": 2}
_ATTENTION_QKV = re.compile(r"\.attn[12]\.to_[qkv]\.weight$")
_EMBEDDING_MLPS = ("time_embedding.", "add_embedding.")


def diff_file_shapes(unet: Any, kind: DiffKind) -> dict[str, torch.Size]:
    """Diffusers name → Δ shape of every tensor a LayerDiffuse "diff" file of ``kind`` holds for ``unet``.

    ``conv`` (``layer_xl_transparent_conv``, 3.62 GB) and ``bgble2fg`` (also 3.62 GB): every parameter
    except the attention q/k/v weights and the time/add-embedding MLPs — the reference's reading of
    "all layers that are not q,k,v", which matches the sizes (§1.4). ``fg2ble``, ``bg2ble`` and
    ``fgble2bg`` (702 MB each): their key list is not published; we take every parameter outside the
    transformers and the embedding MLPs (resnets, down/upsamplers, conv_in, conv_norm_out, conv_out),
    the only natural layer family whose SDXL size fits: 350,977,284 fp16 values = 701.95 MB, where
    adding proj_in/out would give 750 MB and the attention output projections 1.1 GB. The conditioned
    kinds widen conv_in by one latent per condition (8 or 12 input channels on SDXL).
    """
    shapes = {name: parameter.shape for name, parameter in unet.named_parameters()}
    if kind in ("conv", "bgble2fg"):
        names = [n for n in shapes if not _ATTENTION_QKV.search(n) and not n.startswith(_EMBEDDING_MLPS)]
    else:
        names = [n for n in shapes if ".attentions." not in n and not n.startswith(_EMBEDDING_MLPS)]
    selected = {name: shapes[name] for name in sorted(names)}
    if kind != "conv":
        out_channels, latent_channels, *kernel = selected["conv_in.weight"]
        widened = latent_channels * (1 + CONDITION_LATENTS[kind])
        selected["conv_in.weight"] = torch.Size((out_channels, widened, *kernel))
    return selected


def _random_diff_state_dict(unet: Any, kind: DiffKind, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    names = sgm_names(unet.config, (name for name, _ in unet.named_parameters()))
    state: dict[str, torch.Tensor] = {}
    for name, shape in diff_file_shapes(unet, kind).items():
        # Like the random attention LoRA: offsets a tenth of a unit-variance layer's weights, so a
        # random model still makes finite images; vectors (norms, biases) move by about 0.01.
        scale = 0.1 / math.sqrt(math.prod(shape[1:])) if len(shape) > 1 else 0.01
        delta = torch.randn(shape, generator=generator) * scale
        state[f"diffusion_model.{names[name]}::diff::0"] = delta.half()
    return state


def conv_diff_state_dict(unet: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ``layer_xl_transparent_conv.safetensors`` for ``unet``: SGM ``::diff::0`` keys → fp16 Δ.

    The key set is :func:`diff_file_shapes` ``"conv"``; ``unet`` may live on the meta device.
    """
    return _random_diff_state_dict(unet, "conv", seed)


def conditioned_diff_state_dict(
    unet: Any, kind: Literal["fg2ble", "bg2ble", "fgble2bg", "bgble2fg"], seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random ``layer_xl_<kind>.safetensors`` for ``unet``, conv_in widened to 8 or 12 channels on SDXL.

    Key sets (and why) as in :func:`diff_file_shapes`.
    """
    if kind not in CONDITION_LATENTS:
        raise ValueError(
            f"unknown conditioned LayerDiffuse model {kind!r}; choose one of {', '.join(CONDITION_LATENTS)}"
        )
    return _random_diff_state_dict(unet, kind, seed)
