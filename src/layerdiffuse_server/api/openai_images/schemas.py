"""The request bodies of the OpenAI Images routes, field for field as the ``openai`` SDKs send them,
plus our own generation fields (sent with the SDK's ``extra_body``).

Fields OpenAI defines and that mean nothing here (``style``, ``input_fidelity``) are taken and
ignored, as OpenAI ignores them for models that do not use them; a field no one defines is a 400
``unknown_parameter``, as OpenAI answers it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...schemas import MAX_PROMPT_CHARS, MAX_SEED

#: OpenAI accepts up to 10 images per call; our batches hold :data:`...schemas.MAX_IMAGES`.
MAX_OPENAI_IMAGES = 10
MAX_PARTIAL_IMAGES = 3

Background = Literal["transparent", "opaque", "auto"]
OutputFormat = Literal["png", "webp", "jpeg"]
Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]


class ImageOptions(BaseModel):
    """What generations and edits share."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to generate.")
    model: str | None = Field(default=None, description="A name `GET /v1/models` lists; absent: this server's model.")
    n: int | None = Field(default=None, ge=1, le=MAX_OPENAI_IMAGES, description="How many images (this server: 1–8).")
    size: str | None = Field(
        default=None,
        description="`auto` (the model's native size), `1024x1024`, `1536x1024`, `1024x1536` or any "
        "`WxH` with sides from 64 to 2048.",
    )
    quality: Quality | None = Field(
        default=None, description="Denoising steps: low 12, medium 20, high 30; auto (and standard) 20, hd 30."
    )
    background: Background | None = Field(
        default=None, description="transparent (and auto): straight-alpha images; opaque: composited over white."
    )
    output_format: OutputFormat | None = Field(default=None, description="png (default), webp (with alpha) or jpeg.")
    output_compression: int | None = Field(
        default=None, ge=0, le=100, description="webp and jpeg quality, 0–100 (default 100 for webp, 90 for jpeg)."
    )
    moderation: Literal["auto", "low"] | None = Field(
        default=None, description="auto: the safety checker runs; low: it does not."
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None, description="b64_json (default) or url: a file URL of this server (a capability, no key needed)."
    )
    user: str | None = Field(default=None, max_length=256, description="The end user, logged with the request.")
    safety_identifier: str | None = Field(default=None, max_length=256, description="As `user`.")
    stream: bool | None = Field(default=None, description="Answer as server-sent events.")
    partial_images: int | None = Field(
        default=None, ge=0, le=MAX_PARTIAL_IMAGES, description="Partial images to stream (0–3)."
    )
    style: str | None = Field(default=None, description="Ignored (a dall-e-3 option).")

    # Our own fields, through the SDK's extra_body.
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    scheduler: str | None = None


class ImageGenerationRequest(ImageOptions):
    """``POST /v1/images/generations`` (JSON)."""

    loras: list[Any] | None = Field(default=None, description="Style LoRAs, as fal's `loras`.")


class ImageEditRequest(ImageOptions):
    """The text fields of ``POST /v1/images/edits`` (multipart: numbers arrive as strings)."""

    input_fidelity: str | None = Field(default=None, description="Ignored: `strength` says how much may change.")
    strength: float | None = Field(default=None, description="Image to image: how much to change (0–1, default 0.7).")
    stop_at: float | None = Field(default=None, description="Two images: how long the layer model guides.")


class ImageData(BaseModel):
    b64_json: str | None = Field(default=None, description="The image's bytes, base64 (response_format b64_json).")
    url: str | None = Field(default=None, description="The image's file URL (response_format url).")


class Usage(BaseModel):
    """Tokens are not counted here: zeros, in the fields the SDKs' types have."""

    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    """What generations and edits answer (``stream: false``)."""

    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"]
    output_format: OutputFormat
    quality: Literal["low", "medium", "high"]
    size: str
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape, which the SDKs turn into their exception classes."""

    error: ErrorDetail


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]
