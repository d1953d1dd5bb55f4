"""Switching the one UNet between LayerDiffuse models: exact values, and a known state after a failure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
