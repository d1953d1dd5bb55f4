"""What the engine returns, in a module of its own that imports no torch: workers, the API's fakes
and tests read results without loading the model's code."""

from __future__ import annotations

from dataclasses import dataclass, field

from .images import TransparentImage
from .schemas import LayerDiffusionInput


@dataclass
class GenerationResult:
    """Images of one request, the seed it ran with, and where the time went (seconds)."""

    images: list[TransparentImage]
    seed: int
    params: LayerDiffusionInput  # GenerationParams for text to image, else the endpoint's input
    has_nsfw_concepts: list[bool] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1  # requests denoised together with this one (timings are the batch's)
