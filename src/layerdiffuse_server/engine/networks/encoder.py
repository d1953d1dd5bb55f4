"""The transparent encoder: straight-alpha RGBA images → SDXL latents that carry their transparency.

Semantics of the official diffusers CLI (``TransparentVAEEncoder``), the newest official code:
the SDXL VAE encodes the image composited over 50 % grey (``(rgb·2 − 1)·α``); the encoder network
reads ``[alpha, R, G, B]`` with the colour padded (:func:`.padding.pad_rgb`) and its output, times
300, offsets the VAE's posterior: ``latent = mean + std · 300 · offset``. The result is the
*un-scaled* latent (multiply by the VAE's scaling factor for the UNet). Forge feeds the raw network
output without the ×300 and composites on 127/255 grey; the CLI's choice is followed here because
it is the reference implementation the files were released with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from .encoder_network import LatentTransparencyOffsetEncoder
from .padding import pad_rgb

#: The official wrapper's ``self.alpha``: the network's last convolution starts at zero, and this
#: factor (like a LoRA alpha) scales what it learnt.
OFFSET_SCALE = 300.0


def encoder_input(rgba: np.ndarray) -> torch.Tensor:
    """``[1, 4, H, W]`` float32: alpha, then the padded colour, in [0, 1]."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    stacked = np.concatenate([alpha, pad_rgb(rgba)], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(stacked)).permute(2, 0, 1)[None]


def vae_input(rgba: np.ndarray) -> torch.Tensor:
    """``[1, 3, H, W]`` float32 in [-1, 1]: the colour composited over 50 % grey."""
    image = torch.from_numpy(rgba.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return (image[:, :3] * 2.0 - 1.0) * image[:, 3:]


class TransparentEncoder:
    def __init__(self, network: LatentTransparencyOffsetEncoder) -> None:
        self.network = network.eval()

    @classmethod
    def from_file(cls, path: Path, *, device: torch.device, dtype: torch.dtype) -> TransparentEncoder:
        network = LatentTransparencyOffsetEncoder.from_state_dict(load_file(str(path)))
        return cls(network.to(device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    @torch.no_grad()
    def encode(
        self, images: Sequence[np.ndarray], vae: Any, *, offset: bool = True, device: torch.device | None = None
    ) -> torch.Tensor:
        """``uint8 [H, W, 4]`` images of one size → un-scaled latents ``[B, 4, H/8, W/8]`` (float32).

        ``device`` is where the VAE runs (the pipeline's device: with model offload the VAE itself
        waits on the host between calls). ``offset=False`` gives the plain VAE posterior mean of
        the grey composite, for comparison.
        """
        pixels = torch.cat([vae_input(image) for image in images]).to(device or vae.device, vae.dtype)
        posterior = vae.encode(pixels).latent_dist
        mean, std = posterior.mean.float(), posterior.std.float()
        if not offset:
            return mean
        features = torch.cat([encoder_input(image) for image in images]).to(self.device, self.dtype)
        shift = self.network(features).float().to(mean.device) * OFFSET_SCALE
        return mean + std * shift
