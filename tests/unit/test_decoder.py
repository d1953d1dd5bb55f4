"""Transparent decoder: strict loading of the official format, TTA median, channel order, truncation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from layerdiffuse_server.engine.networks.decoder import AUGMENTATIONS, TransparentDecoder, to_rgba_uint8
from layerdiffuse_server.engine.networks.decoder_network import TransparentDecoderNetwork
from layerdiffuse_server.errors import InvalidInputError, WeightFormatError
from tests.conftest import parse_shape, read_key_table

DECODER_ROWS = read_key_table("keys_vae_transparent_decoder.tsv")


@pytest.fixture(scope="module")
def official_decoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random fp16 tensors under exactly the official file's 538 keys and shapes."""
    generator = torch.Generator().manual_seed(1)
    state = {key: (torch.randn(parse_shape(shape), generator=generator) * 0.02).half() for key, shape in DECODER_ROWS}
    path = tmp_path_factory.mktemp("decoder") / "vae_transparent_decoder.safetensors"
    save_file(state, path)
    return path


def test_official_file_loads_strictly_into_the_reference_architecture(official_decoder_file: Path) -> None:
    decoder = TransparentDecoder.from_file(official_decoder_file)
    state = decoder.network.state_dict()
    assert sorted(state) == sorted(key for key, _ in DECODER_ROWS)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: parse_shape(s) for k, s in DECODER_ROWS}
    assert sum(v.numel() for v in state.values()) == 104_104_804
    assert decoder.network.config.block_out_channels == (32, 32, 64, 128, 256, 512, 512)


def test_a_file_with_a_missing_or_extra_key_is_refused(official_decoder_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(official_decoder_file)
    state.pop("mid_block.attentions.0.to_k.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(WeightFormatError, match=re.escape("mid_block.attentions.0.to_k.bias")):
        TransparentDecoder.from_file(path)


class CornerNetwork(torch.nn.Module):
    """Outputs, for every pixel and channel, the top-left pixel of the (augmented) input: passes disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        corner = pixels[:, :1, :1, :1]
        return corner.expand(pixels.shape[0], 4, *pixels.shape[2:]) + self.anchor


class ConstantNetwork(torch.nn.Module):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = torch.nn.Parameter(torch.tensor(values))

    def forward(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.values[None, :, None, None].expand(pixels.shape[0], 4, *pixels.shape[2:])


def _corner_image(height: int = 64, width: int = 128) -> torch.Tensor:
    pixels = torch.zeros(1, 3, height, width)
    pixels[..., 0, 0], pixels[..., 0, -1], pixels[..., -1, 0], pixels[..., -1, -1] = 0.1, 0.2, 0.3, 0.4
    return pixels


@pytest.mark.parametrize(("passes", "expected"), [(8, 0.2), (4, 0.2), (2, 0.1), (1, 0.1)])
def test_passes_are_combined_by_the_lower_median(passes: int, expected: float) -> None:
    decoder = TransparentDecoder(CornerNetwork(), passes=passes)  # type: ignore[arg-type]
    estimate = decoder.estimate(_corner_image(), torch.zeros(1, 4, 8, 16))
    # 8 passes see each corner twice: sorted (.1 .1 .2 .2 .3 .3 .4 .4); the mean would be .25, the upper median .3.
    torch.testing.assert_close(estimate, torch.full_like(estimate, expected))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8])
def test_the_lower_median_selects_what_torch_median_does(count: int) -> None:
    from layerdiffuse_server.engine.networks.decoder import lower_median

    generator = torch.Generator().manual_seed(count)
    # Few distinct values, so ties are common; a NaN in any input makes that pixel NaN, as in torch.median.
    values = [torch.randint(0, 5, (2, 4, 9, 8), generator=generator).float() / 4 for _ in range(count)]
    for index, value in enumerate(values):
        value[0, 0, 0, index] = float("nan")
    expected = torch.median(torch.stack(values), dim=0).values
    assert torch.equal(lower_median(values).nan_to_num(-1.0), expected.nan_to_num(-1.0))
    assert lower_median(values)[0, 0, 0, :count].isnan().all()


@pytest.mark.parametrize("count", range(1, 9))
def test_the_median_network_sorts_every_order_into_its_middle(count: int) -> None:
    """Exhaustively, on permutations (with the 0-1 principle, enough for a comparator network):
    every order of 0 … count-1 is one element of the tensors, the i-th tensor holding each order's
    i-th value."""
    from itertools import permutations

    from layerdiffuse_server.engine.networks.decoder import lower_median

    orders = torch.tensor(list(permutations(range(count))))
    medians = lower_median(list(orders.T))
    assert torch.equal(medians, torch.full_like(medians, (count - 1) // 2)), orders[medians != (count - 1) // 2]


def test_every_augmentation_is_undone() -> None:
    from layerdiffuse_server.engine.networks.decoder import augment, unaugment

    image = torch.arange(2 * 3 * 64 * 128, dtype=torch.float32).reshape(2, 3, 64, 128)
    for flip, turns in AUGMENTATIONS[8]:
        assert torch.equal(unaugment(augment(image, flip, turns), flip, turns), image)


def _serial_reference(network: torch.nn.Module, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The official algorithm, pass by pass, as the specification of the batched one."""
    results = []
    for flip, turns in AUGMENTATIONS[8]:
        p, z = pixels.clone(), latent.clone()
        if flip:
            p, z = torch.flip(p, dims=(3,)), torch.flip(z, dims=(3,))
        p, z = torch.rot90(p, k=turns, dims=(2, 3)), torch.rot90(z, k=turns, dims=(2, 3))
        eps = network(p, z).clip(0, 1)
        eps = torch.rot90(eps, k=-turns, dims=(2, 3))
        results.append(torch.flip(eps, dims=(3,)) if flip else eps)
    return torch.median(torch.stack(results), dim=0).values


@pytest.mark.parametrize(("height", "width"), [(192, 128), (128, 128)])
@pytest.mark.parametrize("max_batch", [8, 3, 1])
def test_batched_passes_match_the_serial_reference(tiny_folder: Path, max_batch: int, height: int, width: int) -> None:
    decoder = TransparentDecoder.from_file(tiny_folder / "vae_transparent_decoder.safetensors", max_batch=max_batch)
    generator = torch.Generator().manual_seed(3)
    pixels = torch.rand(1, 3, height, width, generator=generator)
    latent = torch.randn(1, 4, height // 8, width // 8, generator=generator)
    with torch.no_grad():
        expected = _serial_reference(decoder.network, pixels, latent)
    # Batched convolutions may differ from single ones in the last float bits, never more.
    torch.testing.assert_close(decoder.estimate(pixels, latent), expected.clip(0, 1), rtol=0, atol=1e-5)


def test_channels_come_out_alpha_first_and_are_truncated_to_uint8() -> None:
    decoder = TransparentDecoder(ConstantNetwork([0.25, 0.5, 0.75, 1.7]), passes=8)  # type: ignore[arg-type]
    estimate = decoder.estimate(torch.rand(1, 3, 64, 64), torch.zeros(1, 4, 8, 8))
    (rgba,) = to_rgba_uint8(estimate)
    assert rgba.dtype == np.uint8 and rgba.shape == (64, 64, 4)
    # R 0.5·255 = 127.5 → 127, G 191.25 → 191, B clipped to 1 → 255, alpha 63.75 → 63 (no rounding).
    assert tuple(rgba[0, 0]) == (127, 191, 255, 63)
    assert (rgba == rgba[0, 0]).all()


def test_sizes_that_are_not_multiples_of_64_are_an_input_error(tiny_folder: Path) -> None:
    decoder = TransparentDecoder.from_file(tiny_folder / "vae_transparent_decoder.safetensors")
    with pytest.raises(InvalidInputError, match="96x64"):
        decoder.estimate(torch.rand(1, 3, 64, 96), torch.zeros(1, 4, 8, 12))


def test_network_config_is_read_off_the_state_dict() -> None:
    network = TransparentDecoderNetwork(block_out_channels=(8, 8, 16, 16, 32, 32, 32))
    config = TransparentDecoderNetwork.config_from_state_dict(network.state_dict())
    assert config["block_out_channels"] == (8, 8, 16, 16, 32, 32, 32)
    assert config["attention_levels"] == (False, False, False, False, True, True, True)
    with pytest.raises(WeightFormatError):
        TransparentDecoderNetwork.config_from_state_dict({"conv_in.weight": torch.zeros(1)})


def test_the_cpu_trace_equals_the_module_and_follows_its_weights(tiny_folder: Path) -> None:
    """The traced CPU path against the plain module, on random weights, at sizes and batches
    other than the one it was traced at; changed weights are traced again, never served stale."""
    from layerdiffuse_server.engine.networks.decoder import cpu_forward

    decoder = TransparentDecoder.from_file(tiny_folder / "vae_transparent_decoder.safetensors", max_batch=3)
    network = decoder.network
    generator = torch.Generator().manual_seed(5)
    pixels = torch.rand(1, 3, 192, 128, generator=generator)
    latent = torch.randn(1, 4, 24, 16, generator=generator)
    with torch.no_grad():
        traced = cpu_forward(network)
        assert traced is not network and cpu_forward(network) is traced
        for batch in (1, 3):
            feed = (pixels.repeat(batch, 1, 1, 1), latent.repeat(batch, 1, 1, 1))
            torch.testing.assert_close(traced(*feed), network(*feed), rtol=0, atol=1e-5)
        estimate = decoder.estimate(pixels, latent)
        expected = _serial_reference(network, pixels, latent).clip(0, 1)
        torch.testing.assert_close(estimate, expected, rtol=0, atol=1e-5)

        network.conv_out.bias.add_(0.25)
        assert cpu_forward(network) is not traced
        torch.testing.assert_close(
            decoder.estimate(pixels, latent), _serial_reference(network, pixels, latent).clip(0, 1), rtol=0, atol=1e-5
        )
        assert not torch.equal(decoder.estimate(pixels, latent), estimate)


def test_where_tracing_fails_the_module_runs(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layerdiffuse_server.engine.networks.decoder import cpu_forward

    decoder = TransparentDecoder.from_file(tiny_folder / "vae_transparent_decoder.safetensors")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no tracing here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    assert cpu_forward(decoder.network) is decoder.network
    assert decoder.estimate(torch.rand(1, 3, 64, 64), torch.zeros(1, 4, 8, 8)).shape == (1, 4, 64, 64)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace's notice
def test_divisions_by_one_leave_the_trace_and_nothing_else_does(tiny_folder: Path) -> None:
    """diffusers' rescale factors of 1.0 are dropped from the CPU trace; other divisions stay, and
    the values are the module's bit for bit."""
    from layerdiffuse_server.engine.networks.decoder import cpu_forward, drop_divisions_by_one

    def halve_then_rescale(x: torch.Tensor) -> torch.Tensor:
        return (x / 2.0 + 1.0) / 1.0

    function = torch.jit.trace(halve_then_rescale, (torch.ones(2),))
    assert drop_divisions_by_one(function.graph) == 1
    assert [node.kind() for node in function.graph.nodes()].count("aten::div") == 1
    assert torch.equal(function(torch.tensor([3.0, -5.0])), torch.tensor([2.5, -1.5]))

    network = TransparentDecoder.from_file(tiny_folder / "vae_transparent_decoder.safetensors").network
    traced = cpu_forward(network)
    assert isinstance(traced, torch.jit.ScriptModule)
    assert drop_divisions_by_one(traced.graph) == 0
    generator = torch.Generator().manual_seed(9)
    pixels, latent = torch.rand(1, 3, 64, 64, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        assert torch.equal(traced(pixels, latent), network(pixels, latent))
