"""From an OpenAI Images request to the input of one of our endpoints, and the choices that shape
the answer (format, background, size).

Documented choices:

- ``n`` 1–8 is our ``num_images`` (one batch, image i with seed + i); 9 and 10, which OpenAI
  allows, are refused with a 400 rather than split into requests that would not share a seed.
- ``quality``: low 12 steps, medium (auto, standard) 20, high (hd) 30; ``num_inference_steps``
  in ``extra_body`` wins.
- ``background``: transparent and auto give straight-alpha images; opaque composites them over
  white. ``jpeg`` has no alpha: with ``transparent`` it is a 400 (as OpenAI answers), with auto
  the image is composited over white.
- ``moderation``: auto runs the safety checker, low turns it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...schemas import MAX_IMAGES
from .errors import OpenAIError, bad_request
from .schemas import ImageOptions

#: Steps by ``quality``.
QUALITY_STEPS = {"low": 12, "medium": 20, "high": 30}
_QUALITY_NAMES = {"auto": "medium", "standard": "medium", "hd": "high"}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
MIN_SIDE, MAX_SIDE = 64, 2048
#: Our fields the OpenAI names stand for, so a refusal names the parameter the client sent.
OUR_FIELD_PARAMS = {
    "num_images": "n",
    "width": "size",
    "height": "size",
    "enable_safety_checker": "moderation",
    "image_url": "image",
    "background_image_url": "image",
    "blended_image_url": "image",
    "mask_url": "mask",
}
#: extra_body fields copied to our input as they are.
_PASSED_THROUGH = (
    "negative_prompt",
    "seed",
    "guidance_scale",
    "num_inference_steps",
    "scheduler",
    "loras",
    "strength",
    "stop_at",
)


@dataclass(frozen=True)
class AnswerShape:
    """How the images are answered: the choices resolved from the request."""

    background: str  # "transparent" or "opaque"
    output_format: str  # "png", "webp" or "jpeg"
    compression: int | None
    quality: str  # "low", "medium" or "high"
    response_format: str  # "b64_json" or "url"
    stream: bool
    partial_images: int


def answer_shape(options: ImageOptions) -> AnswerShape:
    """The answer's shape.

    Raises:
        OpenAIError: jpeg with a transparent background.
    """
    output_format = options.output_format or "png"
    background = options.background or "auto"
    if output_format == "jpeg" and background == "transparent":
        raise bad_request(
            "Transparent background is not supported for jpeg output format; use png or webp.", param="background"
        )
    if background == "auto":
        background = "opaque" if output_format == "jpeg" else "transparent"
    quality = options.quality or "auto"
    return AnswerShape(
        background=background,
        output_format=output_format,
        compression=options.output_compression,
        quality=_QUALITY_NAMES.get(quality, quality),
        response_format=options.response_format or "b64_json",
        stream=bool(options.stream),
        partial_images=options.partial_images or 0,
    )


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``WxH`` as (width, height); None for ``auto`` (the model's or the input image's size).

    Raises:
        OpenAIError: not ``auto`` nor ``WxH`` with sides from 64 to 2048.
    """
    if size is None or size == "auto":
        return None
    match = _SIZE.match(size)
    if match is None:
        raise bad_request(f"Invalid size {size!r}: use 'auto' or 'WIDTHxHEIGHT', e.g. '1024x1024'.", param="size")
    width, height = int(match[1]), int(match[2])
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise bad_request(
            f"Invalid size {size!r}: each side must be from {MIN_SIDE} to {MAX_SIDE} pixels.", param="size"
        )
    return width, height


def image_count(options: ImageOptions) -> int:
    """``n`` as our ``num_images``.

    Raises:
        OpenAIError: more images than one batch holds.
    """
    n = options.n or 1
    if n > MAX_IMAGES:
        raise bad_request(f"Invalid 'n': this server generates at most {MAX_IMAGES} images per request.", param="n")
    return n


def check_model(model: str | None, served: list[str]) -> None:
    """Refuse a model name the operator did not map to this server's model.

    Raises:
        OpenAIError: 404 ``model_not_found``, as OpenAI answers an unknown model.
    """
    if model is not None and model not in served:
        raise OpenAIError(
            404, f"The model '{model}' does not exist; this server serves {', '.join(served)}.", param="model",
            code="model_not_found",
        )  # fmt: skip


def our_input(options: ImageOptions, shape: AnswerShape) -> dict[str, Any]:
    """The input of our endpoint: prompt, size, steps, safety checker and the extra_body fields."""
    raw: dict[str, Any] = {"prompt": options.prompt}
    size = parse_size(options.size)
    if size is not None:
        raw["width"], raw["height"] = size
    raw["num_inference_steps"] = QUALITY_STEPS[shape.quality]
    if options.moderation is not None:
        raw["enable_safety_checker"] = options.moderation == "auto"
    for name in _PASSED_THROUGH:
        value = getattr(options, name, None)
        if value is not None:
            raw[name] = value
    return raw
