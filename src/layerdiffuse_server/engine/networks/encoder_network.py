"""The transparent encoder's network (``LatentTransparencyOffsetEncoder``): RGBA → a latent offset.

A plain stack of 3×3 convolutions with SiLU between them, three of stride 2 (so the offset is at
the latent's 1/8 resolution), the last one zero-initialised: untrained, it offsets nothing. The
parameter names are the official file's (``blocks.0`` … ``blocks.16``), which loads strictly.
Input channels are ``[alpha, R, G, B]`` with the colour padded (:func:`..padding.pad_rgb`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...errors import WeightFormatError

#: (output channels, stride) of each convolution before the last; the official widths.
LAYERS = ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1))


class LatentTransparencyOffsetEncoder(nn.Module):
    def __init__(self, in_channels: int = 4, latent_channels: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for channels, stride in LAYERS:
            layers += [nn.Conv2d(previous, channels, kernel_size=3, padding=1, stride=stride), nn.SiLU()]
            previous = channels
        last = nn.Conv2d(previous, latent_channels, kernel_size=3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]  # Conv2d(bias=True) always has one
        self.blocks = nn.Sequential(*layers, last)

    def forward(self, alpha_and_padded_rgb: torch.Tensor) -> torch.Tensor:
        return self.blocks(alpha_and_padded_rgb)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> LatentTransparencyOffsetEncoder:
        """Strict: every key of the official file, with its shape, and nothing else."""
        network = cls()
        expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
        found = {key: tuple(value.shape) for key, value in state.items()}
        if expected != found:
            missing = sorted(set(expected) - set(found))
            unexpected = sorted(set(found) - set(expected))
            wrong = sorted(key for key in set(expected) & set(found) if expected[key] != found[key])
            raise WeightFormatError(
                "not a LayerDiffuse transparent encoder state dict: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {missing}" if missing else "",
                        f"unexpected {unexpected}" if unexpected else "",
                        f"wrong shapes of {wrong}" if wrong else "",
                    )
                    if part
                )
            )
        network.load_state_dict(dict(state), strict=True)
        return network
