"""Training the ``demo`` preset: a small SDXL-topology model that makes real transparent sprites,
trained on a CPU the way LayerDiffuse was trained, and written in the official file formats
so it loads through exactly the code that loads the real weights.

The recipe, stage by stage (the paper's, scaled down):

1. **VAE.** An SDXL-layout ``AutoencoderKL`` learns the sprites composited over 50 % grey: the
   demo's ordinary images, and exactly what the transparent path feeds the VAE.
2. **Latent transparency.** A transparent image's latent is the VAE latent of the image composited
   over 50 % grey, moved by an offset that the transparent *encoder* computes from alpha and the
   padded colour (×300, scaled by the posterior's std, as the official encoder does). The
   transparent *decoder* gets the VAE-decoded RGB and that latent and returns alpha and colour. Both
   train together, the VAE frozen, with a second loss that keeps the offset latent decoding to the
   grey composite, so the latent stays one the base model knows.
3. **Base UNet.** An SDXL-layout UNet learns to denoise the latents of those ordinary images,
   conditioned on captions through the two small CLIP text encoders, which learn with it.
4. **Transparency LoRA.** A low-rank update of every attention projection (Forge's
   ``layer_xl_transparent_attn`` format) moves the frozen base (and frozen text encoders) to the
   transparent latents.
5. **Decoder refinement.** The transparent decoder alone trains on, at full size and under the
   decoder's own flips and turns, with a second loss that pushes its alpha below zero wherever the
   sprite has none: stage 2's decoder leaves a faint haze (alpha 1–8) over most backgrounds, which
   its L1 loss weighs too little to remove. Half of each batch are latents the sampler re-generated
   from the sprites' own, so the decoder learns what the sampler gives, not only what the encoder
   gives. The encoder stays frozen, so the latents, and with them the base and the LoRA, stay
   valid; ``train-demo --from`` runs this stage alone on an earlier run.

Everything is seeded; one run reproduces the same weights on the same torch build.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ...demo.sprites import COLOURS, SHAPES, STYLES, render, sprite_for
from ..networks.decoder import AUGMENTATIONS, augment
from ..networks.decoder_network import TransparentDecoderNetwork
from ..networks.encoder_network import LatentTransparencyOffsetEncoder
from ..networks.padding import pad_rgb
from ..presets import DEMO_SIZE
from ..weights.attention_weights import attention_projection_keys
from .random_weights import (
    DIFFUSERS_TO_SGM_BLOCKS,
    TINY_SPEC,
    build_sdxl_pipeline,
    write_safety_checker,
)

#: The official encoder's offset scale ("like a LoRA's alpha": its last layer starts at zero).
OFFSET_SCALE = 300.0
#: What the demo's unconditional branch is trained on: no prompt, and the endpoint's default negative.
UNCONDITIONAL_CAPTIONS = ("", "text, watermark")

#: The tiny preset's text encoders and safety checker; its UNet twice as wide, a wider VAE, a
#: transparent decoder twice the tiny one's width, and a LoRA of rank 16.
DEMO_SPEC = replace(
    TINY_SPEC,
    unet={
        **TINY_SPEC.unet,
        "sample_size": 16,
        "block_out_channels": (32, 64, 128),
        "attention_head_dim": (2, 4, 8),
    },
    vae={
        **TINY_SPEC.vae,
        "block_out_channels": (16, 32, 32, 64),
        # Four channels or more per group: a group of one channel normalises a flat colour away.
        "norm_num_groups": 4,
        "sample_size": 128,
    },
    decoder={
        "block_out_channels": (8, 16, 16, 32, 32, 64, 64),
        "attention_levels": (False, False, False, False, False, True, True),
        "layers_per_block": 1,
    },
    lora_rank=16,
)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    size: int = DEMO_SIZE
    poses: int = 16  # images per (shape, colour, style)
    vae_steps: int = 2000
    transparency_steps: int = 2000
    base_steps: int = 2600
    lora_steps: int = 1700
    decoder_steps: int = 600
    sampled_sprites: int = 1024  # the refinement's sampled latents (see SAMPLED_STRENGTHS)
    image_batch: int = 16
    #: The image models (VAE, transparent encoder and decoder) see every shape at once in their
    #: receptive fields at 64 px: they learn on crops, four times cheaper, and run at any size.
    crop: int = 64
    latent_batch: int = 64
    learning_rate: float = 1e-3
    caption_dropout: float = 0.1

    @property
    def images(self) -> int:
        return self.poses * len(SHAPES) * len(COLOURS) * len(STYLES)


Progress = Callable[[str, int, int, float], None]  # stage, step, steps, loss


@dataclass
class Sprites:
    rgba: torch.Tensor  # (N, 4, H, W) straight, [0, 1]
    padded: torch.Tensor  # (N, 3, H, W) padded colour, [0, 1]
    captions: list[str]

    def grey_composites(self, index: torch.Tensor) -> torch.Tensor:
        """Over 50 % grey, in [-1, 1]: what the VAE sees of a transparent image (the official feed),
        and the demo's ordinary images, the ones the base model learns."""
        rgba = self.rgba[index]
        return (rgba[:, :3] * 2 - 1) * rgba[:, 3:]


def make_sprites(recipe: Recipe) -> Sprites:
    images = [render(sprite_for(index, recipe.seed), recipe.size) for index in range(recipe.images)]
    captions = [sprite_for(index, recipe.seed).caption for index in range(recipe.images)]
    rgba = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    padded = torch.from_numpy(np.stack([pad_rgb(image) for image in images])).permute(0, 3, 1, 2).contiguous()
    return Sprites(rgba, padded, captions)


def _batches(count: int, batch: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    for _ in range(steps):
        yield torch.randint(0, count, (batch,), generator=generator)


def _crop(images: list[torch.Tensor], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The same random crop of each tensor, on the latent grid (multiples of 8)."""
    full = images[0].shape[-1]
    top, left = (int(value) * 8 for value in torch.randint(0, (full - size) // 8 + 1, (2,), generator=generator))
    return [image[..., top : top + size, left : left + size] for image in images]


#: The image models train in bfloat16 autocast: convolutions at full resolution run ~1.7× faster
#: on CPUs with AMX; the UNet (small tensors, many ops) does not gain and stays in float32.
def _image_autocast() -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _optimiser(parameters: Any, recipe: Recipe, steps: int, scale: float = 1.0) -> tuple[Any, Any]:
    optimiser = torch.optim.AdamW(parameters, lr=recipe.learning_rate * scale, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)),
    )
    return optimiser, schedule


def _step(optimiser: Any, schedule: Any, loss: torch.Tensor) -> None:
    """One optimisation step of every stage: gradients afresh, the update, the schedule."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    schedule.step()


def train_vae(vae: Any, sprites: Sprites, recipe: Recipe, progress: Progress) -> None:
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    optimiser, schedule = _optimiser(vae.parameters(), recipe, recipe.vae_steps)
    vae.train()
    for step, index in enumerate(_batches(len(sprites.captions), recipe.image_batch, recipe.vae_steps, generator)):
        [images] = _crop([sprites.grey_composites(index)], recipe.crop, generator)
        with _image_autocast():
            posterior = vae.encode(images).latent_dist
            reconstruction = vae.decode(posterior.sample(generator)).sample
            loss = (reconstruction.float() - images).abs().mean() + 1e-6 * posterior.kl().float().mean()
        _step(optimiser, schedule, loss)
        progress("vae", step + 1, recipe.vae_steps, loss.item())
    vae.eval()
    vae.requires_grad_(False)


@torch.no_grad()
def latent_statistics(vae: Any, sprites: Sprites) -> float:
    """1 / std of the latents: SDXL's ``scaling_factor`` is the same idea (0.13025 for its VAE)."""
    means = [vae.encode(sprites.grey_composites(torch.arange(i, min(i + 64, len(sprites.captions))))).latent_dist.mean
             for i in range(0, len(sprites.captions), 64)]  # fmt: skip
    return float(1.0 / torch.cat(means).std())


def transparent_latents(
    vae: Any, encoder: LatentTransparencyOffsetEncoder, grey: torch.Tensor, alpha: torch.Tensor, padded: torch.Tensor
) -> torch.Tensor:
    """Un-scaled latents with the transparency offset, as the official encoder makes them."""
    posterior = vae.encode(grey).latent_dist
    offset = encoder(torch.cat([alpha, padded], dim=1)) * OFFSET_SCALE
    return posterior.mean + posterior.std * offset


def train_latent_transparency(
    vae: Any, sprites: Sprites, recipe: Recipe, progress: Progress
) -> tuple[LatentTransparencyOffsetEncoder, TransparentDecoderNetwork]:
    encoder = LatentTransparencyOffsetEncoder()
    decoder = TransparentDecoderNetwork(**DEMO_SPEC.decoder)
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    parameters = [*encoder.parameters(), *decoder.parameters()]
    optimiser, schedule = _optimiser(parameters, recipe, recipe.transparency_steps)
    for step, index in enumerate(
        _batches(len(sprites.captions), recipe.image_batch, recipe.transparency_steps, generator)
    ):
        grey, alpha, padded = _crop(
            [sprites.grey_composites(index), sprites.rgba[index][:, 3:], sprites.padded[index]], recipe.crop, generator
        )
        with _image_autocast():
            latent = transparent_latents(vae, encoder, grey, alpha, padded)
            pixel = (vae.decode(latent).sample.float() * 0.5 + 0.5).clamp(0, 1)
            predicted = decoder(pixel, latent).float()
        target = torch.cat([alpha, padded], dim=1)
        loss = (predicted - target).abs().mean() + 0.5 * (pixel - (grey * 0.5 + 0.5)).abs().mean()
        _step(optimiser, schedule, loss)
        progress("transparency", step + 1, recipe.transparency_steps, loss.item())
    encoder.eval().requires_grad_(False)
    decoder.eval().requires_grad_(False)
    return encoder, decoder


#: Where a sprite has no alpha at all, the refined decoder's raw alpha is pushed at least this far
#: below zero (the decoder clips it to zero), with this weight against the L1 loss.
CLEAR_MARGIN = 0.05
CLEAR_WEIGHT = 4.0
#: Alpha's own L1 on top of the four channels' mean: pushing the background down must not pull a
#: translucent body (alpha 0.6) below the body threshold.
ALPHA_WEIGHT = 2.0
#: The refinement continues from stage 2's decoder, at this share of the recipe's learning rate.
REFINE_LEARNING_RATE = 0.3


#: The refinement's second half of each batch: latents the sampler made, not the encoder. Sprites'
#: exact latents re-generated by the transparent UNet from these shares of the schedule keep their
#: layout (so the sprite stays the target) but carry the sampler's error: a translucent body's
#: alpha decoded from them came out 136–143 where the sprite's is 153, and the generations' bodies
#: fell under the body threshold.
SAMPLED_STRENGTHS = (0.3, 0.6, 0.9)


@dataclass
class SampledLatents:
    """Un-scaled latents the transparent UNet re-generated, with the sprites they came from."""

    latents: torch.Tensor  # (M, 4, h, w)
    sprites: torch.Tensor  # (M,) indices into the data set


@torch.no_grad()
def sample_latents(pipeline: Any, sprites: Sprites, recipe: Recipe, progress: Progress) -> SampledLatents:
    """Sprites' exact transparent latents, noised to one of :data:`SAMPLED_STRENGTHS` and denoised
    with the endpoint's defaults (20 steps, guidance 8, their captions): what the decoder sees in
    production, paired with what it should return."""
    from ..networks.decoder import to_model_space, to_vae_space

    generator = torch.Generator().manual_seed(recipe.seed + 7)
    chosen = torch.randperm(len(sprites.captions), generator=generator)[: recipe.sampled_sprites]
    vae, encoder = pipeline.sdxl.vae, pipeline.encoder.network
    pipeline.use_text_to_image_weights()
    pipe = pipeline.image_to_image_pipe
    batches = chosen.split(recipe.image_batch)
    latents = []
    for step, index in enumerate(batches):
        exact = transparent_latents(
            vae, encoder, sprites.grey_composites(index), sprites.rgba[index][:, 3:], sprites.padded[index]
        )
        strength = SAMPLED_STRENGTHS[step % len(SAMPLED_STRENGTHS)]
        captions = [sprites.captions[i] for i in index.tolist()]
        embeddings = pipeline.encode_prompts(captions, [UNCONDITIONAL_CAPTIONS[1]] * len(captions), 8.0)
        seeds = torch.randint(0, 2**31, (len(index),), generator=generator).tolist()
        sampled = pipe(
            **embeddings,
            image=to_model_space(exact, vae),
            strength=strength,
            height=recipe.size,
            width=recipe.size,
            num_inference_steps=20,
            guidance_scale=8.0,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="latent",
        ).images
        latents.append(to_vae_space(sampled, vae))
        progress("sampling", step + 1, len(batches), 0.0)
    return SampledLatents(torch.cat(latents), chosen)


def refine_decoder(
    vae: Any,
    encoder: LatentTransparencyOffsetEncoder,
    decoder: TransparentDecoderNetwork,
    sprites: Sprites,
    sampled: SampledLatents,
    recipe: Recipe,
    progress: Progress,
) -> None:
    """Stage 5: train the decoder alone, half of each batch on the frozen encoder's exact latents,
    half on sampled ones. Full-size images, because the decoder's attention sees the whole latent
    at inference; each batch under one of the 8 flips and turns that the decoder's test-time
    passes apply, so every pass is equally clean."""
    generator = torch.Generator().manual_seed(recipe.seed + 6)
    decoder.train().requires_grad_(True)
    optimiser, schedule = _optimiser(decoder.parameters(), recipe, recipe.decoder_steps, REFINE_LEARNING_RATE)
    passes = AUGMENTATIONS[8]
    half = recipe.image_batch // 2
    for step in range(recipe.decoder_steps):
        exact_index = torch.randint(0, len(sprites.captions), (recipe.image_batch - half,), generator=generator)
        pool_index = torch.randint(0, len(sampled.sprites), (half,), generator=generator)
        index = torch.cat([exact_index, sampled.sprites[pool_index]])
        alpha, padded = sprites.rgba[index][:, 3:], sprites.padded[index]
        with torch.no_grad(), _image_autocast():
            exact = transparent_latents(
                vae,
                encoder,
                sprites.grey_composites(exact_index),
                alpha[: len(exact_index)],
                padded[: len(exact_index)],
            )
            latent = torch.cat([exact.float(), sampled.latents[pool_index]])
            pixel = (vae.decode(latent).sample.float() * 0.5 + 0.5).clamp(0, 1)
        flip, turns = passes[int(torch.randint(0, len(passes), (1,), generator=generator))]
        pixel, latent, target = (
            augment(x, flip, turns) for x in (pixel, latent.float(), torch.cat([alpha, padded], dim=1))
        )
        with _image_autocast():
            predicted = decoder(pixel, latent).float()
        clear = (target[:, :1] == 0).float()
        loss = (
            (predicted - target).abs().mean()
            + ALPHA_WEIGHT * (predicted[:, :1] - target[:, :1]).abs().mean()
            + CLEAR_WEIGHT * (torch.relu(predicted[:, :1] + CLEAR_MARGIN) * clear).mean()
        )
        _step(optimiser, schedule, loss)
        progress("decoder", step + 1, recipe.decoder_steps, loss.item())
    decoder.eval().requires_grad_(False)


#: Captions → (prompt embeddings (N, 77, 128), pooled embeddings (N, 64)), as SDXL conditions on them.
CaptionEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def trainable_caption_encoder(pipeline: Any) -> CaptionEncoder:
    """SDXL's own prompt encoding, with gradients: the text encoders learn with the base UNet. Random
    CLIPs that stayed frozen told "orange" from "yellow" too weakly for guidance to follow."""

    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        unique = list(dict.fromkeys(captions))
        embeds, _, pooled, _ = pipeline.encode_prompt(
            unique, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        rows = [unique.index(caption) for caption in captions]
        return embeds[rows], pooled[rows]

    return encode


@torch.no_grad()
def frozen_caption_encoder(pipeline: Any, captions: list[str]) -> CaptionEncoder:
    """Every caption encoded once, looked up afterwards: for stages where the text encoders are frozen."""
    unique = list(dict.fromkeys([*UNCONDITIONAL_CAPTIONS, *captions]))
    embeds, pooled = trainable_caption_encoder(pipeline)(unique)
    index = {caption: i for i, caption in enumerate(unique)}

    def encode(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [index[caption] for caption in batch]
        return embeds[rows], pooled[rows]

    return encode


class _Diffusion:
    """SDXL's training objective: predict the noise added at a random step of the scaled-linear schedule."""

    def __init__(self, scheduler_config: dict[str, Any], size: int) -> None:
        betas = (
            torch.linspace(
                scheduler_config["beta_start"] ** 0.5,
                scheduler_config["beta_end"] ** 0.5,
                scheduler_config["num_train_timesteps"],
                dtype=torch.float64,
            )
            ** 2
        )
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32)

    def loss(
        self, unet: Any, latents: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        timesteps = torch.randint(0, len(self.alphas_cumprod), (len(latents),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        signal = self.alphas_cumprod[timesteps].sqrt()[:, None, None, None]
        noisy = signal * latents + (1 - signal**2).sqrt() * noise
        predicted = unet(
            noisy,
            timesteps,
            encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": self.time_ids.expand(len(latents), -1)},
        ).sample
        return (predicted - noise).pow(2).mean()


def _with_dropout(captions: list[str], recipe: Recipe, generator: torch.Generator) -> list[str]:
    """The batch's captions, some replaced by an unconditional one: what guidance needs."""
    dropped = torch.rand(len(captions), generator=generator) < recipe.caption_dropout
    return [
        UNCONDITIONAL_CAPTIONS[int(torch.randint(0, 2, (1,), generator=generator))] if drop else caption
        for caption, drop in zip(captions, dropped.tolist(), strict=True)
    ]


def _train_denoiser(
    stage: str,
    unet: Any,
    parameters: list[torch.Tensor],
    latents: torch.Tensor,
    captions: list[str],
    encode: CaptionEncoder,
    diffusion: _Diffusion,
    recipe: Recipe,
    steps: int,
    seed: int,
    progress: Progress,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser, schedule = _optimiser(parameters, recipe, steps)
    unet.train()
    for step, index in enumerate(_batches(len(latents), recipe.latent_batch, steps, generator)):
        embeds, pooled = encode(_with_dropout([captions[i] for i in index.tolist()], recipe, generator))
        loss = diffusion.loss(unet, latents[index], embeds, pooled, generator)
        _step(optimiser, schedule, loss)
        progress(stage, step + 1, steps, loss.item())
    unet.eval()


class _LowRank(nn.Module):
    """``W + up @ down``: Forge's frozen-patcher LoRA (no alpha, no rank scaling), as a parametrisation."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features**0.5)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.up @ self.down


def train_transparency_lora(
    unet: Any,
    latents: torch.Tensor,
    captions: list[str],
    encode: CaptionEncoder,
    diffusion: _Diffusion,
    recipe: Recipe,
    progress: Progress,
) -> dict[str, torch.Tensor]:
    """Train the LoRA on the frozen base; returns it in Forge's SGM key names (``::lora::0`` = up)."""
    unet.requires_grad_(False)
    generator = torch.Generator().manual_seed(recipe.seed + 4)
    shapes = {key: value.shape for key, value in unet.state_dict().items()}
    adapters: dict[str, _LowRank] = {}
    for key in sorted(attention_projection_keys(shapes)):
        module = unet.get_submodule(key.removesuffix(".weight"))
        out_features, in_features = shapes[key]
        adapters[key] = _LowRank(out_features, in_features, DEMO_SPEC.lora_rank, generator)
        parametrize.register_parametrization(module, "weight", adapters[key])
    parameters: list[torch.Tensor] = [parameter for adapter in adapters.values() for parameter in adapter.parameters()]
    _train_denoiser(
        "lora", unet, parameters, latents, captions, encode, diffusion, recipe, recipe.lora_steps,
        recipe.seed + 5, progress,
    )  # fmt: skip
    state = {}
    for key, adapter in adapters.items():
        prefix, _, suffix = key.partition(".transformer_blocks.")
        sgm_key = f"diffusion_model.{DIFFUSERS_TO_SGM_BLOCKS[prefix]}.transformer_blocks.{suffix}"
        state[f"{sgm_key}::lora::0"] = adapter.up.detach().clone()
        state[f"{sgm_key}::lora::1"] = adapter.down.detach().clone()
        parametrize.remove_parametrizations(
            unet.get_submodule(key.removesuffix(".weight")), "weight", leave_parametrized=False
        )
    return state


def train_demo(folder: Path, recipe: Recipe, progress: Progress) -> dict[str, float]:
    """Train every part and write the preset's files into ``folder``; returns each stage's seconds."""
    from safetensors.torch import save_file

    torch.manual_seed(recipe.seed)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    sprites = make_sprites(recipe)
    seconds["data"] = time.perf_counter() - started

    pipeline = build_sdxl_pipeline(DEMO_SPEC, folder / "base")
    pipeline.text_encoder.requires_grad_(False)
    pipeline.text_encoder_2.requires_grad_(False)

    started = time.perf_counter()
    train_vae(pipeline.vae, sprites, recipe, progress)
    pipeline.vae.register_to_config(scaling_factor=latent_statistics(pipeline.vae, sprites))
    seconds["vae"] = time.perf_counter() - started

    started = time.perf_counter()
    encoder, decoder = train_latent_transparency(pipeline.vae, sprites, recipe, progress)
    seconds["transparency"] = time.perf_counter() - started

    scaling = pipeline.vae.config.scaling_factor
    with torch.no_grad():
        everything = torch.arange(len(sprites.captions))
        ordinary = torch.cat(
            [pipeline.vae.encode(sprites.grey_composites(chunk)).latent_dist.mean for chunk in everything.split(64)]
        )
        transparent = torch.cat(
            [
                transparent_latents(
                    pipeline.vae,
                    encoder,
                    sprites.grey_composites(chunk),
                    sprites.rgba[chunk][:, 3:],
                    sprites.padded[chunk],
                )
                for chunk in everything.split(64)
            ]
        )
    diffusion = _Diffusion(dict(pipeline.scheduler.config), recipe.size)

    started = time.perf_counter()
    unet = pipeline.unet
    text_encoders = [pipeline.text_encoder, pipeline.text_encoder_2]
    for text_encoder in text_encoders:
        text_encoder.requires_grad_(True).train()
    parameters = [parameter for model in (unet, *text_encoders) for parameter in model.parameters()]
    _train_denoiser(
        "base", unet, parameters, ordinary * scaling, sprites.captions, trainable_caption_encoder(pipeline),
        diffusion, recipe, recipe.base_steps, recipe.seed + 3, progress,
    )  # fmt: skip
    for text_encoder in text_encoders:
        text_encoder.requires_grad_(False).eval()
    seconds["base"] = time.perf_counter() - started

    started = time.perf_counter()
    encode = frozen_caption_encoder(pipeline, sprites.captions)
    lora = train_transparency_lora(unet, transparent * scaling, sprites.captions, encode, diffusion, recipe, progress)
    seconds["lora"] = time.perf_counter() - started

    # Half precision on disk, like the official files: the package stays small, CPUs load it as float32.
    pipeline.to(torch.float16).save_pretrained(folder / "base", variant="fp16")
    files = {
        "layer_xl_transparent_attn.safetensors": lora,
        "vae_transparent_decoder.safetensors": decoder.state_dict(),
        "vae_transparent_encoder.safetensors": encoder.state_dict(),
    }
    for name, state in files.items():
        save_file({key: value.half().contiguous() for key, value in state.items()}, folder / name)
    write_safety_checker(DEMO_SPEC, folder / "safety_checker")
    return seconds


#: What ``train-demo --from`` takes over from the earlier run unchanged: everything but the decoder.
REUSED_FILES = (
    "base",
    "safety_checker",
    "layer_xl_transparent_attn.safetensors",
    "vae_transparent_encoder.safetensors",
)
DECODER_FILE = "vae_transparent_decoder.safetensors"


def refine_demo(folder: Path, earlier: Path, recipe: Recipe, progress: Progress) -> dict[str, float]:
    """Stage 5 on a run's files (``earlier``; ``folder`` itself after stages 1–4): its base,
    encoder and LoRA are copied into ``folder`` as they are (same bytes), its decoder refined.
    ``recipe`` must be the earlier run's, so the data set is the same."""
    import shutil

    from safetensors.torch import save_file

    from ..pipelines.transparent_sdxl import TransparentSDXLPipeline
    from ..presets import demo_sources

    torch.manual_seed(recipe.seed)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    sprites = make_sprites(recipe)
    seconds["data"] = time.perf_counter() - started
    if folder.resolve() != earlier.resolve():
        for name in REUSED_FILES:
            source, target = earlier / name, folder / name
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, target)
    pipeline = TransparentSDXLPipeline.from_sources(demo_sources(earlier), device="cpu", dtype="float32")
    assert pipeline.encoder is not None  # the demo's sources always name one

    started = time.perf_counter()
    sampled = sample_latents(pipeline, sprites, recipe, progress)
    seconds["sampling"] = time.perf_counter() - started

    started = time.perf_counter()
    decoder = pipeline.decoder.network
    refine_decoder(pipeline.sdxl.vae, pipeline.encoder.network, decoder, sprites, sampled, recipe, progress)
    seconds["decoder"] = time.perf_counter() - started
    save_file({key: value.half().contiguous() for key, value in decoder.state_dict().items()}, folder / DECODER_FILE)
    return seconds


#: Prompts denoised together by :func:`evaluate`: on a CPU a batch runs the 42 prompts in well under
#: half the time of one at a time (the per-layer overhead is paid once per batch), at a memory cost
#: that the demo's 128-pixel latents keep small.
EVALUATION_BATCH = 14


def evaluate(pipeline: Any, cases: list[Any] | None = None) -> tuple[Any, list[np.ndarray]]:
    """The evaluation prompts (or ``cases`` of them) through ``pipeline`` at the endpoint's
    defaults; (scores, images). They run in batches of :data:`EVALUATION_BATCH`: each image is the
    one its request gets alone, up to the float differences of batched kernels."""
    from ...demo.quality import evaluation_set, score
    from ...schemas import GenerationParams

    cases = evaluation_set() if cases is None else cases
    images = []
    for start in range(0, len(cases), EVALUATION_BATCH):
        requests = [
            GenerationParams(prompt=case.prompt, seed=case.seed) for case in cases[start : start + EVALUATION_BATCH]
        ]
        images += [result.images[0].rgba for result in pipeline.generate_batch(requests)]
    return score(cases, images), images


def contact_sheet(images: list[np.ndarray], columns: int = 7, cell: int = 8) -> np.ndarray:
    """The images side by side over a checkerboard, as RGB."""
    rows = []
    for start in range(0, len(images), columns):
        line = []
        for rgba in images[start : start + columns]:
            pixels = rgba.astype(np.float64) / 255.0
            checker = ((np.indices(pixels.shape[:2]).sum(0) // cell) % 2)[..., None] * 0.25 + 0.65
            line.append(pixels[..., :3] * pixels[..., 3:] + checker * (1 - pixels[..., 3:]))
        rows.append(np.concatenate(line, axis=1))
    return (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)


#: The evaluation prompts' images over a checkerboard, written beside the weights (not shipped with them).
CONTACT_SHEET = "contact-sheet.png"


def write_demo(
    folder: Path,
    recipe: Recipe,
    progress: Progress,
    command: str | None = None,
    earlier: Path | None = None,
    cases: list[Any] | None = None,
) -> dict[str, Any]:
    """Train, score and describe the demo preset in ``folder``: its files, ``MANIFEST.json`` (the
    command that made them, each file's SHA-256, the judge's figures) and ``contact-sheet.png``.
    With ``earlier``, only the decoder is refined on that run's files, under that run's recipe
    (``recipe`` gives the refinement's steps); the manifest records the earlier run too. ``cases``
    scores a part of the evaluation set (a quick check of the recipe's code, not of its weights)."""
    import hashlib
    import json

    import diffusers
    from PIL import Image

    from ..pipelines.transparent_sdxl import TransparentSDXLPipeline
    from ..presets import demo_sources

    folder.mkdir(parents=True, exist_ok=True)
    before: dict[str, Any] | None = None
    if earlier is None:
        seconds = train_demo(folder, recipe, progress)
        seconds |= {
            stage: value for stage, value in refine_demo(folder, folder, recipe, progress).items() if stage != "data"
        }
    else:
        before = json.loads((earlier / "MANIFEST.json").read_text())
        recipe = replace(
            Recipe(**before["recipe"]), decoder_steps=recipe.decoder_steps, sampled_sprites=recipe.sampled_sprites
        )
        seconds = refine_demo(folder, earlier, recipe, progress)
    started = time.perf_counter()
    pipeline = TransparentSDXLPipeline.from_sources(demo_sources(folder), device="cpu", dtype="float32")
    scores, images = evaluate(pipeline, cases)
    seconds["evaluation"] = time.perf_counter() - started
    Image.fromarray(contact_sheet(images)).save(folder / CONTACT_SHEET)
    manifest = {
        "command": command,
        "recipe": asdict(recipe),
        "seconds": {stage: round(value, 1) for stage, value in seconds.items()},
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "evaluation": scores.summary(),
        "sha256": {
            str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name not in ("MANIFEST.json", CONTACT_SHEET)
        },
    }
    if before is not None:
        manifest["earlier"] = {key: before.get(key) for key in ("command", "seconds", "evaluation")}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
