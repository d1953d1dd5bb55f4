"""Switching the one UNet between LayerDiffuse models: exact values, and a known state after a failure."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from layerdiffuse_server.engine.making.random_weights import TINY_SPEC, build_unet, conditioned_diff_state_dict
from layerdiffuse_server.engine.weights.base_values import BaseValues
from layerdiffuse_server.engine.weights.diff_weights import DiffWeights, merge_diff_weights
from layerdiffuse_server.engine.weights.unet_patches import BASE, Style, UNetPatches


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def add(key: str, amount: float):
    def merge(unet: nn.Module) -> None:
        with torch.no_grad():
            dict(unet.named_parameters())[key].add_(amount)

    return merge


def test_switching_restores_exact_values() -> None:
    unet = model()
    base = {key: value.clone() for key, value in unet.state_dict().items()}
    patches = UNetPatches(unet)
    patches.register("a", {"0.weight"}, add("0.weight", 0.1))
    patches.register("b", {"1.bias"}, add("1.bias", 1.0))
    patches.use("a")
    after_a = unet.state_dict()["0.weight"].clone()
    for name in ("b", "a", BASE, "b", "a"):
        patches.use(name)
    assert torch.equal(unet.state_dict()["0.weight"], after_a)
    assert torch.equal(unet.state_dict()["1.bias"], base["1.bias"])
    patches.use(BASE)
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in base.items())


def test_a_failed_merge_leaves_the_base_weights_and_says_so() -> None:
    unet = model()
    base = {key: value.clone() for key, value in unet.state_dict().items()}
    patches = UNetPatches(unet)
    patches.register("good", {"0.weight"}, add("0.weight", 0.1))

    def half_then_fail(target: nn.Module) -> None:
        add("1.weight", 100.0)(target)
        raise RuntimeError("out of memory")

    patches.register("bad", {"1.weight", "1.bias"}, half_then_fail)
    patches.use("good")
    with pytest.raises(RuntimeError):
        patches.use("bad")
    assert patches.active == BASE
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in base.items())
    patches.use("good")  # and the next switch works from there
    assert torch.allclose(unet.state_dict()["0.weight"], base["0.weight"] + 0.1)


def test_a_style_stays_on_top_of_every_patch_and_leaves_exactly() -> None:
    unet = model()
    base = {key: value.clone() for key, value in unet.state_dict().items()}
    patches = UNetPatches(unet)
    patches.register("a", {"0.weight"}, add("0.weight", 0.1))
    patches.use("a")
    after_a = unet.state_dict()["0.weight"].clone()
    patches.use_style(Style("warm", frozenset({"0.weight", "1.bias"}), add("0.weight", 1.0)))
    assert torch.allclose(unet.state_dict()["0.weight"], base["0.weight"] + 1.1)
    patches.use(BASE)  # the style stays through a switch
    assert patches.style == "warm" and torch.allclose(unet.state_dict()["0.weight"], base["0.weight"] + 1.0)
    patches.use("a")
    patches.use_style(None)
    assert patches.style is None and torch.equal(unet.state_dict()["0.weight"], after_a)
    patches.use(BASE)
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in base.items())


def test_a_failed_style_merge_leaves_the_base_weights_and_no_style() -> None:
    unet = model()
    base = {key: value.clone() for key, value in unet.state_dict().items()}
    patches = UNetPatches(unet)
    patches.register("a", {"0.weight"}, add("0.weight", 0.1))
    patches.use("a")

    def half_then_fail(target: nn.Module) -> None:
        add("1.weight", 100.0)(target)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        patches.use_style(Style("broken", frozenset({"1.weight"}), half_then_fail))
    assert patches.active == BASE and patches.style is None
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in base.items())


def test_the_layer_models_switch_back_and_forth_to_exact_weights_from_their_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = build_unet(TINY_SPEC).eval()
    base = {key: value.clone() for key, value in unet.state_dict().items()}
    patches = UNetPatches(unet, BaseValues(tmp_path))
    for task in ("fg2ble", "bgble2fg"):
        path = tmp_path / f"layer_xl_{task}.safetensors"
        save_file(conditioned_diff_state_dict(unet, task, seed=5), path)
        weights = DiffWeights.load(path)
        patches.register(task, set(weights.shapes), functools.partial(merge_diff_weights, weights=weights))
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for task in ("fg2ble", "bgble2fg"):
        patches.use(task)
        merged[task] = {key: value.clone() for key, value in unet.state_dict().items()}
    assert merged["bgble2fg"]["conv_in.weight"].shape[1] == 12
    assert patches.base_shapes()["conv_in.weight"] == base["conv_in.weight"].shape

    for task in ("fg2ble", BASE, "bgble2fg", "fg2ble", BASE, "bgble2fg", BASE):
        patches.use(task)
        expected = base if task == BASE else merged[task]
        now = unet.state_dict()
        assert now.keys() == expected.keys()
        assert all(torch.equal(now[key], value) for key, value in expected.items()), task
    assert unet.conv_in.in_channels == 4


def test_kept_base_values_come_back_bit_identical_in_their_dtype_and_shape(tmp_path: Path) -> None:
    kept = BaseValues(tmp_path)
    values = {
        "half": torch.randn(3, 5).half(),
        "bfloat": torch.randn(2, 3, 3, 3).bfloat16(),
        "float": torch.randn(7),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6)[:, ::2],
    }
    for key, value in values.items():
        kept.keep(key, value)
    originals = {key: value.clone() for key, value in values.items()}
    values["half"].add_(1.0)  # the kept value is a copy, not the tensor
    kept.keep("float", torch.zeros(7))  # and the first value kept stays

    back = dict(kept.read(["float", "strided", "half", "scalar", "empty", "bfloat"]))

    assert back.keys() == originals.keys()
    for key, value in originals.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key
    assert kept.nbytes == sum(value.numel() * value.element_size() for value in originals.values())
    assert list(tmp_path.iterdir()) == []  # the file has no name: nothing is left behind
