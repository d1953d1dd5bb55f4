"""LayerDiffuse "diff" files (conv injection, conditioned layer models): parsing, checks and merging."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerdiffuse_server.engine.making.random_weights import (
    SDXL_SPEC,
    TINY_SPEC,
    build_unet,
    conditioned_diff_state_dict,
    conv_diff_state_dict,
    diff_file_shapes,
)
from layerdiffuse_server.engine.weights.diff_weights import DiffWeights, apply_diff, merge_diff_weights
from layerdiffuse_server.engine.weights.unet_keys import sgm_names
from layerdiffuse_server.errors import WeightFormatError

EXTRA_CHANNELS = {"fg2ble": 4, "bg2ble": 4, "fgble2bg": 8, "bgble2fg": 8}
OFFICIAL_KEY = re.compile(
    r"^diffusion_model\.(input_blocks|middle_block|output_blocks|out)\.[\w.]+\.(weight|bias)::diff::0$"
)


@pytest.fixture(scope="module")
def base_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(TINY_SPEC).eval()


@pytest.fixture()
def unet(base_unet: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(base_unet)


@pytest.fixture(scope="module")
def conv_file(base_unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return conv_diff_state_dict(base_unet, seed=1)


def _shapes(unet: torch.nn.Module) -> dict[str, torch.Size]:
    return {key: parameter.shape for key, parameter in unet.named_parameters()}


def _unet_inputs(channels: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, channels, 16, 16, generator=generator)
    text = torch.randn(1, 7, TINY_SPEC.unet["cross_attention_dim"], generator=generator)
    pooled = torch.randn(1, 64, generator=generator)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    return sample, text, pooled, time_ids


@torch.no_grad()
def _predict(unet: torch.nn.Module, sample: torch.Tensor, text: torch.Tensor, pooled, time_ids) -> torch.Tensor:
    added = {"text_embeds": pooled, "time_ids": time_ids}
    return unet(sample, torch.tensor(500), encoder_hidden_states=text, added_cond_kwargs=added).sample


def test_random_conv_file_is_in_the_official_format(base_unet: torch.nn.Module, conv_file: dict) -> None:
    assert conv_file and all(OFFICIAL_KEY.match(key) for key in conv_file)
    assert all(tensor.dtype == torch.float16 for tensor in conv_file.values())
    names = set(sgm_names(base_unet.config, _shapes(base_unet)).values())
    covered = {key.removeprefix("diffusion_model.").removesuffix("::diff::0") for key in conv_file}
    left_out = names - covered
    assert all(re.search(r"to_[qkv]\.weight$|^time_embed\.|^label_emb\.", name) for name in left_out)
    assert len(left_out) == 11 * 2 * 3 + 8  # q/k/v of 11 single-block transformers + the two embedding MLPs


def test_merging_the_conv_file_is_w_plus_strength_times_delta_on_every_key(
    unet: torch.nn.Module, conv_file: dict, tmp_path: Path
) -> None:
    path = tmp_path / "layer_xl_transparent_conv.safetensors"
    save_file(conv_file, path)
    weights = DiffWeights.load(path)
    assert weights.check(_shapes(unet)) == 0
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    names = sgm_names(unet.config, before)

    assert merge_diff_weights(unet, weights, strength=0.7) == len(conv_file)

    after = unet.state_dict()
    for key, value in before.items():
        file_key = f"diffusion_model.{names[key]}::diff::0"
        if file_key in conv_file:
            expected = value + 0.7 * conv_file[file_key].float()
            torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-6)
            assert not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), key


@pytest.mark.parametrize("kind", sorted(EXTRA_CHANNELS))
def test_conditioned_file_widens_conv_in(base_unet: torch.nn.Module, unet: torch.nn.Module, kind: str) -> None:
    extra = EXTRA_CHANNELS[kind]
    state = conditioned_diff_state_dict(base_unet, kind, seed=2)  # type: ignore[arg-type]
    weights = DiffWeights.load(state)
    assert weights.check(_shapes(unet)) == extra
    weight, bias = unet.conv_in.weight.detach().clone(), unet.conv_in.bias.detach().clone()
    delta = state["diffusion_model.input_blocks.0.0.weight::diff::0"].float()
    bias_delta = state["diffusion_model.input_blocks.0.0.bias::diff::0"].float()

    merge_diff_weights(unet, weights)

    padded = torch.cat([weight, torch.zeros(weight.shape[0], extra, *weight.shape[2:])], dim=1)
    torch.testing.assert_close(unet.conv_in.weight.detach(), padded + delta, rtol=0, atol=1e-6)
    assert unet.conv_in.in_channels == 4 + extra
    assert unet.config.in_channels == 4
    assert isinstance(unet.conv_in.weight, torch.nn.Parameter)
    assert dict(unet.named_parameters())["conv_in.weight"] is unet.conv_in.weight

    sample, text, pooled, time_ids = _unet_inputs(4 + extra)
    latent, condition = sample[:, :4], sample[:, 4:]
    by_hand = torch.nn.functional.conv2d(latent, weight + delta[:, :4], bias + bias_delta, padding=1)
    by_hand += torch.nn.functional.conv2d(condition, delta[:, 4:], padding=1)
    with torch.no_grad():
        torch.testing.assert_close(unet.conv_in(sample), by_hand, rtol=1e-5, atol=1e-5)
    prediction = _predict(unet, sample, text, pooled, time_ids)
    assert prediction.shape == (1, 4, 16, 16) and torch.isfinite(prediction).all()


def test_at_strength_zero_the_widened_unet_ignores_the_condition_and_acts_as_the_base(
    base_unet: torch.nn.Module, unet: torch.nn.Module
) -> None:
    state = conditioned_diff_state_dict(base_unet, "fg2ble", seed=2)
    merge_diff_weights(unet, DiffWeights.load(state), strength=0.0)
    sample, text, pooled, time_ids = _unet_inputs(8)
    widened = _predict(unet, sample, text, pooled, time_ids)
    base = _predict(base_unet, sample[:, :4], text, pooled, time_ids)
    torch.testing.assert_close(widened, base, rtol=1e-5, atol=1e-5)


def test_apply_diff_sums_in_float32_and_keeps_the_weight_dtype() -> None:
    weight = torch.full((2, 2), 1.0, dtype=torch.float16)
    delta = torch.full((2, 2), 2e-4, dtype=torch.float16)
    merged = apply_diff(weight, delta, strength=3.0)
    assert merged.dtype == torch.float16
    assert torch.equal(merged, (weight.float() + 3.0 * delta.float()).half())
    with pytest.raises(ValueError, match=re.escape("[2, 3]")):
        apply_diff(weight, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=re.escape("[1, 2, 1, 1]")):
        apply_diff(torch.zeros(1, 4, 1, 1), torch.zeros(1, 2, 1, 1))


def test_apply_diff_pads_a_narrower_conv_weight_with_zeros() -> None:
    weight = torch.ones(2, 4, 3, 3, dtype=torch.bfloat16)
    merged = apply_diff(weight, torch.ones(2, 8, 3, 3), strength=0.5)
    assert merged.shape == (2, 8, 3, 3) and merged.dtype == torch.bfloat16
    assert torch.equal(merged[:, :4].float(), torch.full((2, 4, 3, 3), 1.5))
    assert torch.equal(merged[:, 4:].float(), torch.full((2, 4, 3, 3), 0.5))


CONV_IN = "diffusion_model.input_blocks.0.0.weight::diff::0"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"diffusion_model.input_blocks.9.0.in_layers.0.weight::diff::0": torch.zeros(1)}, "input_blocks.9.0"),
        ({"input_blocks.0.0.bias::diff::0": torch.zeros(16)}, "input_blocks.0.0.bias::diff::0"),
        ({"diffusion_model.out.2.bias": torch.zeros(4)}, "diffusion_model.out.2.bias"),
        ({"diffusion_model.out.2.bias::diff::1": torch.zeros(4)}, "diffusion_model.out.2.bias::diff::1"),
        (
            {"diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::0": torch.zeros(1)},
            "attn1.to_q.weight::lora::0",
        ),
    ],
    ids=["unknown-sgm-name", "no-prefix", "no-suffix", "other-index", "lora-key"],
)
def test_malformed_files_are_refused_at_load_with_the_key_named(conv_file: dict, change: dict, named: str) -> None:
    with pytest.raises(WeightFormatError, match=re.escape(named)):
        DiffWeights.load({**conv_file, **change})


def test_a_lora_file_is_told_apart() -> None:
    lora_key = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight::lora::1"
    with pytest.raises(WeightFormatError, match="attention LoRA"):
        DiffWeights.load({lora_key: torch.zeros(1)})


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(WeightFormatError, match="no tensors"):
        DiffWeights.load({})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"diffusion_model.middle_block.1.transformer_blocks.3.attn1.to_out.0.weight::diff::0": torch.zeros(1)},
            "mid_block.attentions.0.transformer_blocks.3.attn1.to_out.0.weight",
        ),
        ({"diffusion_model.out.2.weight::diff::0": torch.zeros(3, 3)}, "conv_out.weight [3, 3] vs UNet [4, 16, 3, 3]"),
        ({CONV_IN: torch.zeros(16, 2, 3, 3)}, "conv_in.weight [16, 2, 3, 3] vs UNet [16, 4, 3, 3]"),
        ({CONV_IN: torch.zeros(16, 6, 3, 3)}, "conv_in.weight [16, 6, 3, 3]"),
        ({CONV_IN: torch.zeros(32, 8, 3, 3)}, "conv_in.weight [32, 8, 3, 3]"),
        (
            {"diffusion_model.input_blocks.1.0.in_layers.2.weight::diff::0": torch.zeros(16, 32, 3, 3)},
            "down_blocks.0.resnets.0.conv1.weight [16, 32, 3, 3]",
        ),
    ],
    ids=["not-in-this-unet", "wrong-shape", "narrower-conv-in", "part-latent-conv-in", "conv-in-outputs", "wider-conv"],
)
def test_files_that_do_not_fit_are_refused_and_leave_the_unet_untouched(
    unet: torch.nn.Module, conv_file: dict, change: dict, named: str
) -> None:
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    weights = DiffWeights.load({**conv_file, **change})
    with pytest.raises(WeightFormatError, match=re.escape(named)):
        merge_diff_weights(unet, weights)
    after = unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())
    assert unet.conv_in.in_channels == 4


@pytest.mark.parametrize(
    ("kind", "keys", "megabytes", "extra"),
    [
        ("conv", 1252, 3619.56, 0),
        ("bgble2fg", 1252, 3619.61, 8),
        ("fg2ble", 206, 701.95, 4),
        ("fgble2bg", 206, 701.98, 8),
    ],
)
def test_full_size_key_sets_fit_sdxl_and_the_published_file_sizes(
    kind: str, keys: int, megabytes: float, extra: int
) -> None:
    with torch.device("meta"):
        sdxl = build_unet(SDXL_SPEC)
    shapes = diff_file_shapes(sdxl, kind)  # type: ignore[arg-type]
    assert len(shapes) == keys
    assert sum(shape.numel() for shape in shapes.values()) * 2 / 1e6 == pytest.approx(megabytes, abs=0.01)
    names = sgm_names(sdxl.config, shapes)
    # Zero-stride tensors: the full files' keys and shapes without their gigabytes.
    state = {f"diffusion_model.{names[key]}::diff::0": torch.zeros(1).expand(shape) for key, shape in shapes.items()}
    assert DiffWeights.load(state).check(_shapes(sdxl)) == extra


@pytest.mark.parametrize("kind", ["conv", "bgble2fg"])
def test_a_file_read_at_merge_time_gives_the_weights_of_the_same_offsets_in_memory(
    base_unet: torch.nn.Module, tmp_path: Path, kind: str
) -> None:
    state = (
        conv_diff_state_dict(base_unet, seed=4)
        if kind == "conv"
        else conditioned_diff_state_dict(base_unet, kind, seed=4)  # type: ignore[arg-type]
    )
    path = tmp_path / f"layer_xl_{kind}.safetensors"
    save_file(state, path)
    from_file, in_memory = DiffWeights.load(path), DiffWeights.load(state)
    assert from_file.state is None  # nothing of the file is held between merges
    assert dict(from_file.shapes) == dict(in_memory.shapes)
    merged_from_file, merged_in_memory = copy.deepcopy(base_unet), copy.deepcopy(base_unet)

    merge_diff_weights(merged_from_file, from_file, strength=0.8)
    merge_diff_weights(merged_in_memory, in_memory, strength=0.8)

    expected = merged_in_memory.state_dict()
    assert expected.keys() == merged_from_file.state_dict().keys()
    assert all(torch.equal(value, expected[key]) for key, value in merged_from_file.state_dict().items())
    assert not torch.equal(expected["conv_out.weight"], base_unet.state_dict()["conv_out.weight"])


def _truncate(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 100)


def _rewrite_later(path: Path) -> None:
    """Same keys, shapes and size, other values, written a second after the check."""
    stamp = path.stat().st_mtime_ns
    save_file({key: torch.zeros_like(value) for key, value in load_file(path).items()}, path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


def _reshape(path: Path) -> None:
    state = load_file(path)
    key = next(iter(state))
    state[key] = torch.zeros(3)
    save_file(state, path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_truncate, "changed since it was checked"),
        (_rewrite_later, "changed since it was checked"),
        (_reshape, "changed since it was checked"),
        (Path.unlink, "can no longer be read"),
    ],
    ids=["truncated", "rewritten", "other-header", "removed"],
)
def test_a_file_changed_between_check_and_merge_is_refused_before_any_weight_changes(
    unet: torch.nn.Module, conv_file: dict, tmp_path: Path, change, message: str
) -> None:
    path = tmp_path / "layer_xl_transparent_conv.safetensors"
    save_file(conv_file, path)
    weights = DiffWeights.load(path)
    weights.check(_shapes(unet))
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    change(path)
    with pytest.raises(WeightFormatError, match=message):
        merge_diff_weights(unet, weights)
    after = unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_a_file_that_is_not_safetensors_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "layer_xl_fg2ble.safetensors"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightFormatError, match="not a readable safetensors file"):
        DiffWeights.load(path)
