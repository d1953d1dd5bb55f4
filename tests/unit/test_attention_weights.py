"""Both LayerDiffuse attention formats: key map, validation, and merging."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerdiffuse_server.engine.making.random_weights import (
    SDXL_SPEC,
    build_unet,
    dense_offsets_state_dict,
    forge_lora_state_dict,
)
from layerdiffuse_server.engine.weights.attention_weights import (
    AttentionWeights,
    attention_deltas,
    attention_projection_keys,
    merge_attention_weights,
    sgm_to_diffusers_key,
)
from layerdiffuse_server.errors import WeightFormatError
from tests.conftest import parse_shape, read_key_table

LORA_ROWS = read_key_table("keys_layer_xl_transparent_attn.tsv")
DENSE_ROWS = read_key_table("keys_ld_diffusers_sdxl_attn.tsv")


@pytest.fixture(scope="module")
def sdxl_unet_shapes() -> dict[str, torch.Size]:
    with torch.device("meta"):
        unet = build_unet(SDXL_SPEC)
    return {key: value.shape for key, value in unet.state_dict().items()}


@pytest.fixture()
def tiny_unet(tiny_folder: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_folder / "base", subfolder="unet")


def test_every_forge_key_maps_to_its_listed_diffusers_target() -> None:
    assert len(LORA_ROWS) == 1120
    for key, _, target in LORA_ROWS:
        assert sgm_to_diffusers_key(key.split("::")[0]) == target.split("-> ")[1]


def test_the_forge_file_and_the_dense_file_cover_the_same_560_matrices() -> None:
    forge_targets = {sgm_to_diffusers_key(key.split("::")[0]) for key, _, _ in LORA_ROWS}
    assert forge_targets == {key for key, _ in DENSE_ROWS}
    assert len(forge_targets) == 560


def test_the_560_matrices_are_exactly_the_sdxl_unet_attention_projections(sdxl_unet_shapes: dict) -> None:
    assert attention_projection_keys(sdxl_unet_shapes) == {key for key, _ in DENSE_ROWS}
    for key, shape in DENSE_ROWS:
        assert tuple(sdxl_unet_shapes[key]) == parse_shape(shape), key
    for key, shape, target in LORA_ROWS:
        out_features, in_features = sdxl_unet_shapes[target.split("-> ")[1]]
        expected = (out_features, 256) if key.endswith("::lora::0") else (256, in_features)
        assert parse_shape(shape) == expected, key


def test_full_size_files_in_both_official_formats_validate_against_sdxl(sdxl_unet_shapes: dict) -> None:
    # Zero-stride tensors: the real files' keys and shapes without their 2.6 GB.
    lora = {key: torch.zeros(1).expand(parse_shape(shape)) for key, shape, _ in LORA_ROWS}
    dense = {key: torch.zeros(1).expand(parse_shape(shape)) for key, shape in DENSE_ROWS}
    AttentionWeights.load(lora).validate_against(sdxl_unet_shapes)
    AttentionWeights.load(dense).validate_against(sdxl_unet_shapes)
    assert AttentionWeights.load(lora).format == "forge_lora"
    assert AttentionWeights.load(dense).format == "diffusers_offsets"


def test_key_map_agrees_with_diffusers_own_sgm_converter() -> None:
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    if not hasattr(conversion, "_maybe_map_sgm_blocks_to_diffusers"):
        pytest.skip("this diffusers version has no SGM block mapper")
    # Each up-matrix carries its row number as its value, so converted names can be traced back.
    ups = [key for key, _, _ in LORA_ROWS if key.endswith("::lora::0")]
    kohya = {}
    for index, key in enumerate(ups):
        sgm = key.split("::")[0].removeprefix("diffusion_model.").removesuffix(".weight")
        kohya[f"lora_unet_{sgm.replace('.', '_')}.lora_up.weight"] = torch.tensor([float(index)])
        kohya[f"lora_unet_{sgm.replace('.', '_')}.lora_down.weight"] = torch.tensor([-1.0])
    mapped = conversion._maybe_map_sgm_blocks_to_diffusers(kohya, types.SimpleNamespace(layers_per_block=2))
    converted = conversion._convert_non_diffusers_lora_to_diffusers(mapped)[0]
    seen = 0
    for name, tensor in converted.items():
        if not name.endswith("_lora.up.weight"):
            continue
        name = name.removeprefix("unet.").replace(".processor.", ".")
        name = re.sub(r"\.(to_[qkv]|to_out)_lora\.up\.weight$", lambda m: f".{m[1]}", name)
        name = name.replace(".to_out", ".to_out.0") + ".weight"
        assert name == sgm_to_diffusers_key(ups[int(tensor.item())].split("::")[0])
        seen += 1
    assert seen == 560


def _merged(unet: torch.nn.Module, source: object, strength: float = 1.0) -> dict[str, torch.Tensor]:
    merge_attention_weights(unet, AttentionWeights.load(source), strength)
    return {key: value.clone() for key, value in unet.state_dict().items()}


def test_both_formats_give_the_same_merged_unet(tiny_folder: Path, tiny_unet: torch.nn.Module, tmp_path: Path) -> None:
    lora_path = tiny_folder / "layer_xl_transparent_attn.safetensors"
    lora = load_file(lora_path)
    dense_path = tmp_path / "ld_diffusers_sdxl_attn.safetensors"
    save_file(attention_deltas(lora), dense_path)
    dense_path_fp16 = tmp_path / "fp16.safetensors"
    save_file(dense_offsets_state_dict(lora), dense_path_fp16)

    original = {key: value.clone() for key, value in tiny_unet.state_dict().items()}
    from_lora = _merged(tiny_unet, lora_path)
    tiny_unet.load_state_dict(original)
    from_dense = _merged(tiny_unet, dense_path)
    tiny_unet.load_state_dict(original)
    from_dense_fp16 = _merged(tiny_unet, dense_path_fp16)

    changed = [key for key in original if not torch.equal(original[key], from_lora[key])]
    assert sorted(changed) == sorted(attention_projection_keys(original))
    for key in original:
        torch.testing.assert_close(from_lora[key], from_dense[key], rtol=0, atol=1e-6)
        torch.testing.assert_close(from_lora[key], from_dense_fp16[key], rtol=0, atol=2e-3)


def test_merge_is_up_times_down_scaled_by_strength(tiny_folder: Path, tiny_unet: torch.nn.Module) -> None:
    lora = load_file(tiny_folder / "layer_xl_transparent_attn.safetensors")
    key = "diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight"
    target = "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    before = tiny_unet.state_dict()[target].clone()
    after = _merged(tiny_unet, lora, strength=0.5)[target]
    expected = before + 0.5 * (lora[f"{key}::lora::0"].float() @ lora[f"{key}::lora::1"].float())
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    assert attention_deltas(lora)[target].shape == before.shape


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda s: s.update({"diffusion_model.input_blocks.0.0.weight::lora::0": torch.zeros(2, 2)}),
            "input_blocks.0.0.weight::lora::0",
        ),
        (
            lambda s: s.pop("diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight::lora::1"),
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        ),
        (lambda s: s.update({"diffusion_model.input_blocks.0.0.weight::diff::0": torch.zeros(2)}), "conv-injection"),
    ],
    ids=["unknown-key", "missing-half", "conv-injection"],
)
def test_bad_forge_files_are_refused_with_the_key_named(tiny_folder: Path, mutate, message: str) -> None:
    state = load_file(tiny_folder / "layer_xl_transparent_attn.safetensors")
    mutate(state)
    with pytest.raises(WeightFormatError, match=re.escape(message)):
        AttentionWeights.load(state)


def test_files_that_do_not_fit_the_unet_are_refused_and_leave_it_untouched(
    tiny_folder: Path, tiny_unet: torch.nn.Module
) -> None:
    lora = load_file(tiny_folder / "layer_xl_transparent_attn.safetensors")
    dense = dense_offsets_state_dict(lora)
    original = {key: value.clone() for key, value in tiny_unet.state_dict().items()}

    missing = dict(dense)
    dropped = missing.pop("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v.weight")
    wrong_shape = {**dense, "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.zeros(3, 3)}
    unknown = {**dense, "down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q.weight": dropped}
    not_attention = {**dense, "conv_in.weight": torch.zeros(1)}
    cases = [
        (missing, "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v.weight"),
        (wrong_shape, "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight [3, 3]"),
        (unknown, "down_blocks.3.attentions.0"),
    ]
    for state, message in cases:
        with pytest.raises(WeightFormatError, match=re.escape(message)):
            merge_attention_weights(tiny_unet, AttentionWeights.load(state))
    with pytest.raises(WeightFormatError, match=re.escape("conv_in.weight")):
        AttentionWeights.load(not_attention)
    for key, value in tiny_unet.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_random_lora_has_the_official_key_format(tiny_folder: Path) -> None:
    keys = list(load_file(tiny_folder / "layer_xl_transparent_attn.safetensors"))
    pattern = re.compile(r"^diffusion_model\.(input_blocks|middle_block|output_blocks)\..+\.weight::lora::[01]$")
    assert keys and all(pattern.match(key) for key in keys)


def test_forge_lora_generator_writes_the_real_key_set_for_sdxl(sdxl_unet_shapes: dict) -> None:
    with torch.device("meta"):
        state = forge_lora_state_dict(sdxl_unet_shapes, rank=256, generator=None)  # type: ignore[arg-type]
    assert {key: tuple(t.shape) for key, t in state.items()} == {k: parse_shape(s) for k, s, _ in LORA_ROWS}
