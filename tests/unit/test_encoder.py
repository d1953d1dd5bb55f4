"""The transparent encoder's semantics, against a hand computation of the official CLI's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from layerdiffuse_server.engine.making.random_weights import TINY_SPEC, encoder_state_dict
from layerdiffuse_server.engine.networks.encoder import OFFSET_SCALE, TransparentEncoder, encoder_input, vae_input
from layerdiffuse_server.engine.networks.encoder_network import LatentTransparencyOffsetEncoder
from layerdiffuse_server.engine.networks.padding import pad_rgb


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**TINY_SPEC.vae).eval()


@pytest.fixture(scope="module")
def encoder() -> TransparentEncoder:
    state = {key: value.float() for key, value in encoder_state_dict(seed=3).items()}
    return TransparentEncoder(LatentTransparencyOffsetEncoder.from_state_dict(state))


def rgba_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    image[:20, :, 3] = 0  # a transparent band, whose colour the padding replaces
    return image


def test_the_network_reads_alpha_first_then_the_padded_colour() -> None:
    image = rgba_image()
    features = encoder_input(image)[0]
    assert torch.equal(features[0], torch.from_numpy(image[..., 3].astype(np.float32) / 255.0))
    assert torch.allclose(features[1:], torch.from_numpy(pad_rgb(image)).permute(2, 0, 1))


def test_the_vae_sees_the_image_over_half_grey() -> None:
    image = rgba_image()
    pixels = vae_input(image)[0]
    alpha = image[..., 3].astype(np.float32) / 255.0
    expected = (image[..., :3].astype(np.float32) / 255.0 * 2 - 1) * alpha[..., None]
    assert torch.allclose(pixels, torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.equal(pixels[:, :20], torch.zeros_like(pixels[:, :20]))  # transparent = grey (0 in [-1, 1])


@torch.no_grad()
def test_the_latent_is_the_posterior_mean_plus_std_times_300_offsets(
    vae: AutoencoderKL, encoder: TransparentEncoder
) -> None:
    images = [rgba_image(0), rgba_image(1)]
    latent = encoder.encode(images, vae)
    posterior = vae.encode(torch.cat([vae_input(image) for image in images])).latent_dist
    offset = encoder.network(torch.cat([encoder_input(image) for image in images])) * 300.0
    assert OFFSET_SCALE == 300.0
    assert torch.allclose(latent, posterior.mean + posterior.std * offset, atol=1e-6)
    assert latent.shape == (2, 4, 8, 8)  # un-scaled, at 1/8 resolution: the caller applies the scaling factor
    plain = encoder.encode(images, vae, offset=False)
    assert torch.allclose(plain, posterior.mean) and not torch.allclose(latent, plain, atol=1e-4)


def test_an_untrained_official_network_offsets_nothing(vae: AutoencoderKL) -> None:
    untrained = TransparentEncoder(LatentTransparencyOffsetEncoder())  # the last layer starts at zero
    images = [rgba_image()]
    assert torch.allclose(untrained.encode(images, vae), untrained.encode(images, vae, offset=False))
