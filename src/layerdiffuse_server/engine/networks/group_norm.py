"""Group normalisation that keeps a GPU busy when there are few groups over many pixels.

PyTorch's CUDA ``group_norm`` reduces each (sample, group) in a single thread block. The
transparent decoder normalises 4 groups at full image resolution, so at 1024² a forward call of 4
passes gives 16 blocks of 8 M values each and leaves an H200's other 116 multiprocessors idle: on
an H200, 8 passes took 387 ms at 4 per call and 252 ms at 8 per call, time set by the number of
calls rather than the work. Here the statistics come from torch's general reductions, which split
one long reduction over the whole GPU; the result equals ``nn.GroupNorm`` up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn


def group_norm_by_reductions(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``F.group_norm`` from general reductions: statistics in float32, one fused multiply-add."""
    samples, channels = x.shape[:2]
    grouped = x.reshape(samples, num_groups, -1)
    count = grouped.shape[-1]
    # Both moments accumulate in float32 straight from half inputs (torch reads them into a float32
    # reduction without a copy), so no statistic overflows half's range (a std above 256 would).
    mean = grouped.mean(dim=-1, dtype=torch.float32)
    second = torch.linalg.vector_norm(grouped, dim=-1, dtype=torch.float32).square() / count
    variance = (second - mean.square()).clamp(min=0.0)
    per_group = channels // num_groups
    scale = torch.rsqrt(variance + eps).repeat_interleave(per_group, dim=1) * weight.float()
    centre = mean.repeat_interleave(per_group, dim=1)
    shape = (samples, channels) + (1,) * (x.dim() - 2)
    # (x − mean)·scale + bias: centring first keeps half precision where the mean is large beside
    # the spread; scale stays within half's range (at most 1/sqrt(eps) times the weight).
    centred = x - centre.to(x.dtype).view(shape)
    return torch.addcmul(bias.to(x.dtype).view(1, channels, *shape[2:]), centred, scale.to(x.dtype).view(shape))


class WideGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with the same parameters and state-dict keys; on CUDA, parallel statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or not self.affine:
            return super().forward(x)
        return group_norm_by_reductions(x, self.num_groups, self.weight, self.bias, self.eps)


def widen_group_norms(module: nn.Module) -> None:
    """Replace every ``nn.GroupNorm`` inside ``module`` (freshly built) by a ``WideGroupNorm``."""
    for name, child in list(module.named_children()):
        if type(child) is nn.GroupNorm:
            setattr(module, name, WideGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine))
        else:
            widen_group_norms(child)
