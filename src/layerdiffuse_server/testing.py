"""Fakes shipped with the product, for tests of everything around the model: a protocol test, a
schema fuzzer or a load test needs an engine that answers at once, not a diffusion model.

:class:`FakeEngine` keeps the engine's contract — one image per request of the requested size,
the seed it ran with, a step callback per step and cancellation between steps — and draws a
semi-transparent disc whose colour follows the seed, so its images are real straight-alpha PNGs.
For endpoints with image inputs the disc takes the mean colour of the first input's visible
pixels and the output its size, so a test sees that the image it sent was the one read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .engine.image_sizing import size_from_image
from .engine.images import TransparentImage
from .engine.results import GenerationResult
from .errors import GenerationCancelled
from .schemas import GenerationParams, LayerDiffusionInput, image_fields


class FakeEngine:
    """``step_seconds``: how long each denoising step takes (a slow device, for tests of stopping)."""

    device = "cpu"
    dtype = "float32"
    native_size = 1024

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        requests = [params.with_size(self.native_size).with_seed() for params in requests]
        total = requests[0].num_inference_steps if requests else 0
        for step in range(1, total + 1):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled after step {step - 1} of {total}")
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if on_step is not None:
                on_step(step, total)
        return [
            GenerationResult(
                images=[_disc(params, params.fixed_seed + index) for index in range(params.num_images)],
                seed=params.fixed_seed,
                params=params,
                has_nsfw_concepts=[False] * params.num_images if params.enable_safety_checker else None,
                timings={"denoising": 0.0, "decoding": 0.0},
                batch_size=len(requests),
            )
            for params in requests
        ]

    def generate_from_images(
        self,
        params: LayerDiffusionInput,
        images: dict[str, Any],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        first = images[image_fields(params)[0]]
        width, height = size_from_image(params.width, params.height, first.shape[1], first.shape[0])
        params = params.model_copy(update={"width": width, "height": height}).with_seed()
        steps = GenerationParams(num_inference_steps=params.num_inference_steps, width=64, height=64)
        self.generate_batch([steps], on_step=on_step, should_cancel=should_cancel)
        visible = first[..., 3] > 0
        colour = first[..., :3][visible].mean(axis=0) if visible.any() else np.zeros(3)
        image = _disc(params, params.fixed_seed, colour=colour)
        return GenerationResult(
            images=[image],
            seed=params.fixed_seed,
            params=params,
            has_nsfw_concepts=[False] if params.enable_safety_checker else None,
            timings={"denoising": 0.0, "decoding": 0.0},
        )


def _disc(params: LayerDiffusionInput, seed: int, colour: Any = None) -> TransparentImage:
    width, height = params.size
    rows, columns = np.ogrid[:height, :width]
    radius = min(width, height) / 3
    distance = np.hypot(rows - height / 2, columns - width / 2)
    alpha = np.clip((radius - distance) / 4 + 0.5, 0, 1)
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = [(seed * 67) % 256, (seed * 131) % 256, (seed * 197) % 256] if colour is None else colour
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    return TransparentImage(rgba=rgba, seed=seed)
