"""The transparent encoder network holds exactly the official file's keys and shapes."""

from __future__ import annotations

import pytest
import torch

from layerdiffuse_server.engine.networks.encoder_network import LatentTransparencyOffsetEncoder
from layerdiffuse_server.errors import WeightFormatError
from tests.conftest import parse_shape, read_key_table

ENCODER_ROWS = read_key_table("keys_vae_transparent_encoder.tsv")


def test_parameters_are_the_official_keys_and_shapes() -> None:
    state = LatentTransparencyOffsetEncoder().state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == {
        key: parse_shape(shape) for key, shape in ENCODER_ROWS
    }


def test_untrained_it_offsets_nothing_and_keeps_the_latent_grid() -> None:
    offset = LatentTransparencyOffsetEncoder()(torch.rand(2, 4, 128, 192))
    assert offset.shape == (2, 4, 16, 24)
    assert not offset.any()


def test_loads_an_official_state_dict_strictly() -> None:
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(parse_shape(shape), generator=generator).half() for key, shape in ENCODER_ROWS}
    network = LatentTransparencyOffsetEncoder.from_state_dict(state)
    assert torch.equal(network.blocks[0].weight, state["blocks.0.weight"].float())
    with pytest.raises(WeightFormatError, match=r"missing .*blocks\.16\.bias"):
        LatentTransparencyOffsetEncoder.from_state_dict({k: v for k, v in state.items() if k != "blocks.16.bias"})
    with pytest.raises(WeightFormatError, match="wrong shapes"):
        LatentTransparencyOffsetEncoder.from_state_dict({**state, "blocks.0.bias": torch.zeros(31)})
