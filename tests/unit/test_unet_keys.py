"""The SGM ↔ diffusers UNet name map, proved against diffusers' own single-file converter."""

from __future__ import annotations

import re

import pytest
import torch

from layerdiffuse_server.engine.making.random_weights import SDXL_SPEC, SDXL_UNET_TOPOLOGY, TINY_SPEC, build_unet
from layerdiffuse_server.engine.weights.attention_weights import SGM_TO_DIFFUSERS_BLOCKS
from layerdiffuse_server.engine.weights.unet_keys import (
    SDXL_LAYOUT,
    UnetLayout,
    diffusers_to_sgm_name,
    module_table,
    sgm_names,
    sgm_to_diffusers_name,
)
from tests.conftest import read_key_table


@pytest.fixture(scope="module")
def sdxl_unet() -> torch.nn.Module:
    with torch.device("meta"):
        return build_unet(SDXL_SPEC)


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(TINY_SPEC)


def _through_diffusers_converter(unet: torch.nn.Module) -> tuple[dict, dict]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = unet.state_dict()
    names = sgm_names(unet.config, state)
    checkpoint = {f"model.diffusion_model.{names[key]}": tensor for key, tensor in state.items()}
    return state, convert_ldm_unet_checkpoint(checkpoint, unet.config)


def test_diffusers_converter_turns_our_sgm_names_back_into_the_tiny_unet(tiny_unet: torch.nn.Module) -> None:
    state, converted = _through_diffusers_converter(tiny_unet)
    assert sorted(converted) == sorted(state)
    for key, tensor in state.items():
        assert torch.equal(converted[key], tensor), key


def test_diffusers_converter_turns_our_sgm_names_back_into_full_sdxl(sdxl_unet: torch.nn.Module) -> None:
    state, converted = _through_diffusers_converter(sdxl_unet)
    assert len(state) == 1680
    assert sorted(converted) == sorted(state)
    assert all(converted[key] is tensor for key, tensor in state.items())


def test_both_directions_are_inverse_and_one_to_one(sdxl_unet: torch.nn.Module) -> None:
    names = sgm_names(sdxl_unet.config, sdxl_unet.state_dict())
    assert len(set(names.values())) == len(names)
    for name, sgm in names.items():
        assert sgm_to_diffusers_name(sgm) == name
        assert diffusers_to_sgm_name(name) == sgm


def test_known_sgm_names_of_sdxl() -> None:
    examples = {
        "input_blocks.0.0.weight": "conv_in.weight",
        "input_blocks.3.0.op.bias": "down_blocks.0.downsamplers.0.conv.bias",
        "input_blocks.8.0.skip_connection.weight": "down_blocks.2.resnets.1.conv_shortcut.weight",
        "middle_block.2.out_layers.3.weight": "mid_block.resnets.1.conv2.weight",
        "middle_block.1.transformer_blocks.9.ff.net.0.proj.weight": (
            "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj.weight"
        ),
        "output_blocks.2.2.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.bias": "up_blocks.1.upsamplers.0.conv.bias",
        "output_blocks.6.0.emb_layers.1.weight": "up_blocks.2.resnets.0.time_emb_proj.weight",
        "output_blocks.3.1.proj_out.bias": "up_blocks.1.attentions.0.proj_out.bias",
        "time_embed.2.bias": "time_embedding.linear_2.bias",
        "label_emb.0.0.weight": "add_embedding.linear_1.weight",
        "out.0.weight": "conv_norm_out.weight",
        "out.2.bias": "conv_out.bias",
    }
    for sgm, name in examples.items():
        assert sgm_to_diffusers_name(sgm) == name


def test_the_attention_table_agrees_with_the_full_map() -> None:
    transformers = {sgm: name for sgm, (name, kind) in module_table(SDXL_LAYOUT).items() if kind == "transformer"}
    assert transformers == dict(SGM_TO_DIFFUSERS_BLOCKS)


def test_every_key_of_the_real_attention_file_maps_to_its_listed_target() -> None:
    rows = read_key_table("keys_layer_xl_transparent_attn.tsv")
    assert len(rows) == 1120
    for key, _, target in rows:
        sgm = key.split("::")[0].removeprefix("diffusion_model.")
        assert sgm_to_diffusers_name(sgm) == target.split("-> ")[1]


@pytest.mark.parametrize(
    "name",
    [
        "input_blocks.9.0.in_layers.0.weight",  # no such block
        "input_blocks.1.1.proj_in.weight",  # the top level has no attention
        "input_blocks.1.0.in_layers.1.weight",  # in_layers.1 is the SiLU
        "input_blocks.8.0.op.weight",  # the bottom level has no downsampler
        "output_blocks.8.1.conv.weight",  # nor an upsampler
        "output_blocks.2.1.conv.weight",  # after an attention the upsampler is at index 2
        "middle_block.1.transformer_blocks.0.attn1.to_q.lora.weight",
        "diffusion_model.out.2.weight",  # prefix not stripped
        "out.2.weight.extra",
    ],
)
def test_names_that_are_not_sdxl_parameters_raise(name: str) -> None:
    with pytest.raises(KeyError):
        sgm_to_diffusers_name(name)


def test_layout_is_read_off_the_configs() -> None:
    assert UnetLayout.from_config(SDXL_UNET_TOPOLOGY) == SDXL_LAYOUT
    assert UnetLayout.from_config(TINY_SPEC.unet) == SDXL_LAYOUT


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type"),
        ({"layers_per_block": (2, 2, 1)}, "layers_per_block"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"down_block_types": ("DownBlock2D", "SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D")}, "SimpleCross"),
    ],
)
def test_other_unet_layouts_are_refused_with_the_reason(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        UnetLayout.from_config({**SDXL_UNET_TOPOLOGY, **change})


@pytest.mark.parametrize(
    "name", ["down_blocks.0.resnets.0.norm3.weight", "down_blocks.0.attentions.0.norm.weight", "conv_in.scale"]
)
def test_diffusers_names_that_are_not_sdxl_parameters_raise(name: str) -> None:
    with pytest.raises(KeyError):
        diffusers_to_sgm_name(name)
