"""Fakes shipped with the product, for tests of everything around the model: a protocol test, a
schema fuzzer or a load test needs an engine that answers at once, not a diffusion model.

:class:`FakeEngine` keeps the engine's contract — one image per request of the requested size,
the seed it ran with, a step callback per step and cancellation between steps — and draws a
semi-transparent disc whose colour follows the seed, so its images are real straight-alpha PNGs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .engine.images import TransparentImage
from .engine.results import GenerationResult
from .errors import GenerationCancelled
from .schemas import GenerationParams


class FakeEngine:
    device = "cpu"
    dtype = "float32"
    native_size = 1024

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
            if on_step is not None:
                on_step(step, total)
        return [
            GenerationResult(
                images=[_disc(params, params.seed + index) for index in range(params.num_images)],  # type: ignore[operator]
                seed=params.seed,  # type: ignore[arg-type]
                params=params,
                has_nsfw_concepts=[False] * params.num_images if params.enable_safety_checker else None,
                timings={"denoising": 0.0, "decoding": 0.0},
                batch_size=len(requests),
            )
            for params in requests
        ]


def _disc(params: GenerationParams, seed: int) -> TransparentImage:
    width, height = params.size
    rows, columns = np.ogrid[:height, :width]
    radius = min(width, height) / 3
    distance = np.hypot(rows - height / 2, columns - width / 2)
    alpha = np.clip((radius - distance) / 4 + 0.5, 0, 1)
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = [(seed * 67) % 256, (seed * 131) % 256, (seed * 197) % 256]
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    return TransparentImage(rgba=rgba, seed=seed)
