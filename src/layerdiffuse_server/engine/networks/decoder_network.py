"""The transparent VAE decoder network, with the parameter names of the official weights.

A 7-level U-Net (104 M parameters in the released file) that reads the SDXL-VAE-decoded RGB image
at full resolution plus the un-scaled latent, injected through a 1×1 convolution at 1/8 resolution,
and predicts ``[alpha, R, G, B]``. Built from diffusers' U-Net blocks so that the official
``vae_transparent_decoder.safetensors`` loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import nn

from ...errors import WeightFormatError
from .group_norm import widen_group_norms

#: The latent (H/8) is added to the input of this down block, the first one at 1/8 resolution.
LATENT_INJECTION_BLOCK = 3


class TransparentDecoderNetwork(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own models do the same
    """U-Net mapping (RGB in [0,1], un-scaled SDXL latent) to (alpha, straight RGB), unbounded."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (32, 32, 64, 128, 256, 512, 512),
        attention_levels: Sequence[bool] = (False, False, False, False, True, True, True),
        layers_per_block: int = 2,
        attention_head_dim: int = 8,
        norm_num_groups: int = 4,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.latent_conv_in = nn.Conv2d(latent_channels, block_out_channels[LATENT_INJECTION_BLOCK - 1], 1)

        common: dict[str, Any] = {
            "temb_channels": None,
            "resnet_eps": norm_eps,
            "resnet_act_fn": "silu",
            "resnet_groups": norm_num_groups,
            "attention_head_dim": attention_head_dim,
            "resnet_time_scale_shift": "default",
            "dropout": 0.0,
        }
        self.down_blocks = nn.ModuleList()
        previous = block_out_channels[0]
        for level, (channels, attention) in enumerate(zip(block_out_channels, attention_levels, strict=True)):
            self.down_blocks.append(
                get_down_block(
                    "AttnDownBlock2D" if attention else "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=previous,
                    out_channels=channels,
                    add_downsample=level < levels - 1,
                    downsample_padding=1,
                    downsample_type="conv",
                    **common,
                )
            )
            previous = channels

        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1],
            temb_channels=None,  # type: ignore[arg-type]  # no time embedding: diffusers accepts None
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            add_attention=True,
        )

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        reversed_attention = list(reversed(attention_levels))
        previous = reversed_channels[0]
        for level, channels in enumerate(reversed_channels):
            skip_channels = reversed_channels[min(level + 1, levels - 1)]
            self.up_blocks.append(
                get_up_block(
                    "AttnUpBlock2D" if reversed_attention[level] else "UpBlock2D",
                    num_layers=layers_per_block + 1,
                    in_channels=skip_channels,
                    out_channels=channels,
                    prev_output_channel=previous,
                    add_upsample=level < levels - 1,
                    upsample_type="conv",
                    **common,
                )
            )
            previous = channels

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        # Few groups over full-resolution images: see group_norm.py.
        widen_group_norms(self)

    def forward(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        injected = self.latent_conv_in(latent)
        sample = self.conv_in(pixels)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for level, block in enumerate(self.down_blocks):
            if level == LATENT_INJECTION_BLOCK:
                sample = sample + injected
            sample, residuals = block(hidden_states=sample, temb=None)
            skips += residuals
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            count = len(block.resnets)  # type: ignore[arg-type]  # a ModuleList
            sample = block(sample, skips[-count:], None)
            skips = skips[:-count]
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    @classmethod
    def config_from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> dict[str, object]:
        """Read the architecture off a state dict's shapes, so any width of this network loads.

        The released file gives the defaults above; the test preset uses a narrower copy with the
        same parameter names.
        """
        try:
            levels = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("down_blocks."))
            channels = [int(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels)]
            layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("down_blocks.0.resnets."))
            return {
                "in_channels": int(state["conv_in.weight"].shape[1]),
                "out_channels": int(state["conv_out.weight"].shape[0]),
                "latent_channels": int(state["latent_conv_in.weight"].shape[1]),
                "block_out_channels": tuple(channels),
                "attention_levels": tuple(f"down_blocks.{i}.attentions.0.to_q.weight" in state for i in range(levels)),
                "layers_per_block": layers,
            }
        except (KeyError, ValueError, IndexError) as error:
            raise WeightFormatError(
                f"not a LayerDiffuse transparent decoder state dict (missing or malformed {error})"
            ) from None
