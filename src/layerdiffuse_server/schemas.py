"""The generation input, as one pydantic model shared by the engine, the CLI and the API.

Defaults are those of the hosted ``fal-ai/layer-diffusion`` endpoint; ``width``, ``height``
and ``scheduler`` (and ``num_images`` in the library and CLI) are extensions whose defaults keep
the hosted behaviour. Validation follows the JSON Schema the API publishes: ``0`` is not a boolean
and ``"20"`` is not an integer, while ``20.0`` is one (JSON has only numbers).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: Seeds travel through JSON to JavaScript clients, whose numbers are exact only up to 2**53 - 1.
MAX_SEED = 2**53 - 1
MAX_PROMPT_CHARS = 4000

SchedulerName = Literal["dpmpp_2m_karras", "dpmpp_2m_sde_karras", "euler", "euler_ancestral", "unipc", "ddim"]


def _integral_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: An integer as JSON Schema means it: any number without a fractional part (never a string or bool).
JsonInt = Annotated[int, BeforeValidator(_integral_number)]
#: The transparent decoder downsamples six times by 2: other sizes cannot pass its skip connections.
ImageSide = Annotated[int, Field(ge=64, le=2048, multiple_of=64), BeforeValidator(_integral_number)]


def random_seed() -> int:
    """A fresh seed in the range every tool in this field accepts (32 bits)."""
    return secrets.randbits(32)


class LayerDiffusionInput(BaseModel):
    """The input of the ``fal-ai/layer-diffusion`` endpoint: one transparent image."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS, description="The prompt to generate from.")
    negative_prompt: str = Field(
        default="text, watermark",
        max_length=MAX_PROMPT_CHARS,
        description="What the image should not contain.",
    )
    guidance_scale: float = Field(
        default=8.0, ge=0.0, le=30.0, description="Classifier-free guidance scale (CFG); 1 or less disables it."
    )
    num_inference_steps: JsonInt = Field(default=20, ge=1, le=150, description="Number of denoising steps.")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral_number)] | None = Field(
        default=None,
        description="Random seed; a random one is drawn when absent. Image i of a batch uses seed + i.",
    )
    enable_safety_checker: bool = Field(
        default=True, description="Replace images flagged as NSFW by a fully transparent image."
    )
    width: ImageSide | None = Field(
        default=None,
        description="Image width in pixels, a multiple of 64; absent: the model's native size (1024 for sdxl).",
    )
    height: ImageSide | None = Field(
        default=None,
        description="Image height in pixels, a multiple of 64; absent: the model's native size (1024 for sdxl).",
    )
    scheduler: SchedulerName = Field(default="dpmpp_2m_karras", description="Sampler.")

    def with_seed(self) -> Self:
        """This input with its seed fixed, so the run can be reported and repeated."""
        return self if self.seed is not None else self.model_copy(update={"seed": random_seed()})

    def with_size(self, native: int) -> Self:
        """This input with its size fixed: what it asked for, else the model's native size."""
        if self.width is not None and self.height is not None:
            return self
        return self.model_copy(update={"width": self.width or native, "height": self.height or native})

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of an input whose size is fixed (see :meth:`with_size`)."""
        if self.width is None or self.height is None:
            raise ValueError("the size is not fixed yet: call with_size(native) first")
        return self.width, self.height


def batch_key(params: LayerDiffusionInput) -> str:
    """What requests must share to be denoised in one batch: one sampler run, one latent shape.

    Stored with each queued request, so a worker picks a batch in SQL without reading inputs; an
    absent side is the worker's model's native one, the same for every request that worker runs.
    """
    width, height = params.width or "native", params.height or "native"
    return f"{width}x{height}:{params.num_inference_steps}:{params.scheduler}:{params.guidance_scale!r}"


class GenerationParams(LayerDiffusionInput):
    """What the engine generates: the endpoint's input, possibly several images at once."""

    num_images: JsonInt = Field(default=1, ge=1, le=8, description="Number of images to generate.")


class Image(BaseModel):
    """A stored output file, as fal describes images."""

    url: str = Field(description="Where to download the file.")
    content_type: str = Field(default="image/png")
    file_name: str
    file_size: int = Field(description="Size in bytes.")
    width: int
    height: int


class LayerDiffusionOutput(BaseModel):
    """The output of the ``fal-ai/layer-diffusion`` endpoint."""

    image: Image = Field(description="The transparent image (RGBA PNG, straight alpha).")
    seed: int = Field(description="The seed the image was generated with; send it back to get the same image.")
    has_nsfw_concepts: list[bool] | None = Field(
        default=None, description="Per image, whether the safety checker flagged it (it is then fully transparent)."
    )
