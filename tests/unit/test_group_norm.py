"""The decoder's group normalisation: same parameters as ``nn.GroupNorm``, same results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerdiffuse_server.engine.networks.decoder_network import TransparentDecoderNetwork
from layerdiffuse_server.engine.networks.group_norm import WideGroupNorm, group_norm_by_reductions, widen_group_norms


def sample(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # A mean far from zero relative to the spread is where a one-pass variance would go wrong.
    return torch.randn(shape, generator=generator) * 3.0 + 5.0


@pytest.mark.parametrize("shape", [(2, 32, 16, 16), (3, 8, 5, 7), (1, 64, 9, 4)])
def test_reductions_equal_group_norm_in_float32(shape: tuple[int, ...]) -> None:
    x = sample(shape)
    weight, bias = torch.randn(shape[1]), torch.randn(shape[1])
    expected = F.group_norm(x, 4, weight, bias, 1e-5)
    assert torch.allclose(group_norm_by_reductions(x, 4, weight, bias, 1e-5), expected, atol=2e-5, rtol=1e-5)


def test_reductions_in_bfloat16_stay_within_the_native_kernels_rounding() -> None:
    x = sample((2, 32, 32, 32), seed=1)
    weight, bias = torch.randn(32), torch.randn(32)
    exact = F.group_norm(x, 4, weight, bias, 1e-5)
    low = [t.bfloat16() for t in (x, weight, bias)]
    native_error = (F.group_norm(low[0], 4, low[1], low[2], 1e-5).float() - exact).abs().max()
    ours_error = (group_norm_by_reductions(low[0], 4, low[1], low[2], 1e-5).float() - exact).abs().max()
    assert ours_error <= 2 * native_error


def test_the_decoder_network_uses_it_with_unchanged_parameter_names() -> None:
    network = TransparentDecoderNetwork(block_out_channels=(8, 8, 16, 16, 32, 32, 32))
    norms = [module for module in network.modules() if isinstance(module, nn.GroupNorm)]
    assert norms and all(type(module) is WideGroupNorm for module in norms)

    plain = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sequential(nn.GroupNorm(4, 8)))
    keys = list(plain.state_dict())
    widen_group_norms(plain)
    assert type(plain[1][0]) is WideGroupNorm and list(plain.state_dict()) == keys


def test_off_cuda_it_is_the_native_module() -> None:
    norm = WideGroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = sample((2, 16, 8, 8))
    assert torch.equal(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))


def test_half_inputs_with_a_wide_spread_do_not_overflow() -> None:
    """A std above 256 squares past half's range (65504): the statistics must not be taken in half."""
    x = torch.randn((2, 16, 32, 32), generator=torch.Generator().manual_seed(2)) * 400.0 + 1000.0
    weight, bias = torch.randn(16), torch.randn(16)
    ours = group_norm_by_reductions(x.half(), 4, weight.half(), bias.half(), 1e-5).float()
    assert torch.isfinite(ours).all()
    native_half = F.group_norm(x.half().float(), 4, weight.half().float(), bias.half().float(), 1e-5)
    # Within a few steps of half precision of what the exact statistics give on the same half inputs.
    assert (ours - native_half).abs().max() < 0.02
