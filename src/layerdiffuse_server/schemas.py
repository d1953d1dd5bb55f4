"""The generation input, as one pydantic model shared by the engine, the CLI and the API.

Defaults are those of the hosted ``fal-ai/layer-diffusion`` endpoint; ``width``, ``height``,
``scheduler`` and ``num_images`` are extensions whose defaults keep the hosted behaviour.
Validation follows the JSON Schema the API publishes: ``0`` is not a boolean and ``"20"`` is not
an integer, while ``20.0`` is one (JSON has only numbers).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from .loras.paths import LoraPath

#: Seeds travel through JSON to JavaScript clients, whose numbers are exact only up to 2**53 - 1.
MAX_SEED = 2**53 - 1
MAX_PROMPT_CHARS = 4000
#: Style LoRAs one request may merge; each adds its merge time to the batch that runs it.
MAX_LORAS = 4

SchedulerName = Literal["dpmpp_2m_karras", "dpmpp_2m_sde_karras", "euler", "euler_ancestral", "unipc", "ddim"]


def _integral_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: An integer as JSON Schema means it: any number without a fractional part (never a string or bool).
JsonInt = Annotated[int, BeforeValidator(_integral_number)]
#: Any side from 64 to 2048 pixels. The transparent decoder needs multiples of 64 (it halves the
#: resolution six times), so other sizes are generated at the next multiple of 64 and centre-cropped.
ImageSide = Annotated[int, Field(ge=64, le=2048), BeforeValidator(_integral_number)]
#: What an image field of an API request starts with: ``http://``, ``https://`` or ``data:``, in any
#: case (URI schemes are case-insensitive). Published as the fields' ``pattern`` and checked with the
#: same expression for input that arrives through the API (validated with ``context=API_INPUT``);
#: the CLI and the library also take local paths, so they validate without it.
IMAGE_URL_PATTERN = r"^([Hh][Tt][Tt][Pp][Ss]?://|[Dd][Aa][Tt][Aa]:)"
API_INPUT: dict[str, Any] = {"source": "api"}
_IMAGE_URL = re.compile(IMAGE_URL_PATTERN)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31}):")
#: What an image field accepts, as its refusals say it.
ACCEPTED_IMAGE_URLS = "an http(s) URL, a data: URI or a file URL of this server"


def describe_refused_url(value: str) -> str:
    """A refused image URL as its refusal names it: by its scheme, else by its start (data: URIs are long)."""
    scheme = _SCHEME.match(value)
    return (
        f"a URL of scheme {scheme[1].lower()!r}" if scheme else repr(value if len(value) <= 100 else f"{value[:97]}...")
    )


def _checked_image_url(value: str, info: ValidationInfo) -> str:
    if (info.context or {}).get("source") == API_INPUT["source"] and not _IMAGE_URL.match(value):
        raise ValueError(f"must be {ACCEPTED_IMAGE_URLS}, got {describe_refused_url(value)}")
    return value


#: An image input: this server's file URL (what the clients' upload returns), a data: URI, or an
#: http(s) URL the server fetches. Data URIs make these long; the request body limit bounds them.
ImageUrl = Annotated[
    str,
    Field(min_length=1, json_schema_extra={"format": "uri", "pattern": IMAGE_URL_PATTERN}),
    AfterValidator(_checked_image_url),
]


MAX_IMAGES = 8
#: Most previews a request may ask for while it denoises (OpenAI's ``partial_images`` allows 0–3).
MAX_PARTIAL_IMAGES = 3

#: The validation context's key for the checkpoint names the operator lists (see :func:`checkpoint_context`).
CHECKPOINTS_CONTEXT = "checkpoints"


def checkpoint_context(names: Iterable[str]) -> dict[str, Any]:
    """The API's validation context with the operator's checkpoint names: ``model_name`` must be one."""
    return API_INPUT | {CHECKPOINTS_CONTEXT: sorted(names)}


def _listed_checkpoint(value: str | None, info: ValidationInfo) -> str | None:
    """A ``model_name`` the operator lists, where the context says which are (the API's admission);
    a worker reads stored inputs without it, and refuses a name it cannot load when it runs."""
    names = (info.context or {}).get(CHECKPOINTS_CONTEXT)
    if value is None or names is None or value in names:
        return value
    allowed = ", ".join(repr(name) for name in names) if names else "none: this server lists no checkpoints"
    raise ValueError(f"unknown model {value!r}; the checkpoints are {allowed} (leave model_name out for the default)")


#: What the engine runs for an input: text or image to image, or one of the conditioned-layer models
#: (named after their official weight files, ``layer_xl_fg2ble.safetensors`` …). Each input model
#: carries its own, so the engine dispatches on the input it is handed.
Task = Literal["text-to-image", "image-to-image", "inpaint", "fg2ble", "bg2ble", "fgble2bg", "bgble2fg"]


def random_seed() -> int:
    """A fresh seed in the range every tool in this field accepts (32 bits)."""
    return secrets.randbits(32)


class LoraWeight(BaseModel):
    """A style LoRA merged into the model for one request, as fal's endpoints name them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: LoraPath = Field(
        description="An http(s) URL (fetched once, under the same guard as webhooks), this server's file URL (an "
        "upload), a Hugging Face `owner/repo/file.safetensors`, or a name in the operator's LoRA folder; "
        "safetensors files only.",
    )
    scale: float = Field(
        default=1.0, ge=-4.0, le=4.0, description="Factor on the LoRA's weights (1: as trained, 0: not applied)."
    )


class LayerDiffusionInput(BaseModel):
    """The input of the ``fal-ai/layer-diffusion`` endpoint: one transparent image."""

    task: ClassVar[Task] = "text-to-image"

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
        description="Image width in pixels; absent: the model's native size (1024 for sdxl).",
    )
    height: ImageSide | None = Field(
        default=None,
        description="Image height in pixels; absent: the model's native size (1024 for sdxl).",
    )
    scheduler: SchedulerName = Field(default="dpmpp_2m_karras", description="Sampler.")
    num_images: JsonInt = Field(
        default=1,
        ge=1,
        le=MAX_IMAGES,
        description="Extension: number of images to generate; image i uses seed + i, and the output lists them "
        "all in `images` (`image` is the first).",
    )
    partial_images: JsonInt = Field(
        default=0,
        ge=0,
        le=MAX_PARTIAL_IMAGES,
        description=f"Extension: previews (0–{MAX_PARTIAL_IMAGES}) decoded cheaply from the intermediate latents at "
        "evenly spaced steps before the end, for clients that stream them; 0 changes nothing.",
    )
    loras: list[LoraWeight] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description=f"Style LoRAs (kohya/A1111, diffusers or PEFT safetensors files) merged on top of the "
        f"LayerDiffuse weights, at most {MAX_LORAS}. Transparency was trained on the base SDXL: it depends on "
        "the base and on the LoRA, and may fail (opaque or broken alpha) with some fine-tunes and styles.",
    )
    model_name: Annotated[str, AfterValidator(_listed_checkpoint)] | None = Field(
        default=None,
        description="Extension: the SDXL checkpoint to generate with, one the operator lists (GET /api/info, "
        "`checkpoints`), under the same LayerDiffuse weights; absent: the server's model.",
    )

    def with_seed(self) -> Self:
        """This input with its seed fixed, so the run can be reported and repeated."""
        return self if self.seed is not None else self.model_copy(update={"seed": random_seed()})

    def with_size(self, native: int) -> Self:
        """This input with its size fixed: what it asked for, else the model's native size."""
        if self.width is not None and self.height is not None:
            return self
        return self.model_copy(update={"width": self.width or native, "height": self.height or native})

    @property
    def fixed_seed(self) -> int:
        """The seed of an input whose seed is fixed (see :meth:`with_seed`)."""
        if self.seed is None:
            raise ValueError("the seed is not fixed yet: call with_seed() first")
        return self.seed

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of an input whose size is fixed (see :meth:`with_size`)."""
        if self.width is None or self.height is None:
            raise ValueError("the size is not fixed yet: call with_size(native) first")
        return self.width, self.height


def padded_side(side: int) -> int:
    """The side an image is generated at: the next multiple of 64 (see :data:`ImageSide`)."""
    return -(-side // 64) * 64


def strength_steps(strength: float, num_inference_steps: int) -> int:
    """How many denoising steps image to image runs: the last ``strength`` of the schedule, counted
    as diffusers' image-to-image pipeline counts them. The one rule for the input's validation, the
    engine and the CLI's progress bar.

    Raises:
        ValueError: when that is no step at all.
    """
    steps = min(int(num_inference_steps * strength), num_inference_steps)
    if steps < 1:
        raise ValueError(
            f"strength {strength} of {num_inference_steps} steps runs no step; raise either "
            "(strength × num_inference_steps must reach 1)"
        )
    return steps


def partial_steps(total: int, count: int) -> list[int]:
    """The steps (1-based, of the ``total`` that run) after which a partial image is made: ``count``
    evenly spaced ones strictly before the last; fewer when the schedule is too short for them.
    The one rule for the engine and the fake engine of tests."""
    if count <= 0 or total <= 1:
        return []
    return sorted({min(total - 1, max(1, round(total * k / (count + 1)))) for k in range(1, count + 1)})


#: The endpoints with image inputs generate one image per request (their engine runs one at a time).
_ONE_IMAGE: Any = Field(
    default=1,
    ge=1,
    le=1,
    description="Number of images: this endpoint generates one image per request (send several requests for more).",
)


class ImageToImageInput(LayerDiffusionInput):
    """The input of ``fal-ai/layer-diffusion/image-to-image``: a transparent image re-generated."""

    task: ClassVar[Task] = "image-to-image"

    image_url: ImageUrl = Field(description="The RGBA image to start from (transparency is kept and re-generated).")
    strength: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="How much to change the image: the fraction of the denoising schedule that runs (1: from noise).",
    )
    num_images: JsonInt = _ONE_IMAGE
    width: ImageSide | None = Field(
        default=None, description="Output width; absent: the input image's (it is cropped and resized to fit)."
    )
    height: ImageSide | None = Field(
        default=None, description="Output height; absent: the input image's (it is cropped and resized to fit)."
    )

    @property
    def denoising_steps(self) -> int:
        """The steps that run: the last ``strength`` of the schedule (see :func:`strength_steps`)."""
        return strength_steps(self.strength, self.num_inference_steps)

    @model_validator(mode="after")
    def _runs_a_step(self) -> Self:
        strength_steps(self.strength, self.num_inference_steps)
        return self


class InpaintingInput(ImageToImageInput):
    """The input of ``fal-ai/layer-diffusion/inpainting``: the masked area of a transparent image
    regenerated, the rest kept pixel for pixel (alpha included)."""

    task: ClassVar[Task] = "inpaint"

    mask_url: ImageUrl = Field(
        description="The mask, read from its ALPHA channel as OpenAI's image edits read theirs: alpha 0 marks the "
        "area to regenerate, 255 the pixels to keep (values between blend). Resized to the image; a mask without "
        "alpha (opaque everywhere) keeps everything, so it is refused.",
    )
    strength: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="How much to change the masked area: the fraction of the denoising schedule that runs "
        "(1: from noise, the default).",
    )


class ConditionedLayerInput(LayerDiffusionInput):
    """What the four conditioned-layer endpoints share (Forge's "… to …" LayerDiffuse methods)."""

    stop_at: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description='Fraction of the denoising (by timestep, as Forge\'s "Stop At") that uses the layer model; '
        "the plain SDXL UNet does the rest.",
    )
    num_images: JsonInt = _ONE_IMAGE
    width: ImageSide | None = Field(
        default=None, description="Output width; absent: the first input image's (inputs are cropped and resized)."
    )
    height: ImageSide | None = Field(
        default=None, description="Output height; absent: the first input image's (inputs are cropped and resized)."
    )


_FOREGROUND = Field(description="The transparent foreground layer (RGBA).")
#: LayerDiffuse's authors recommend a non-DPM sampler (Euler a, UniPC) for the "… and blended to …" models.
_BLENDING_SCHEDULER: Any = Field(default="euler_ancestral", description="Sampler (Euler a by default, as recommended).")
_BACKGROUND = Field(description="The background image.")
_BLENDED = Field(description="The blended image: foreground over background.")


class ForegroundToBlendedInput(ConditionedLayerInput):
    """``…/foreground-to-blended``: a scene generated around a transparent foreground."""

    task: ClassVar[Task] = "fg2ble"

    foreground_image_url: ImageUrl = _FOREGROUND


class BackgroundToBlendedInput(ConditionedLayerInput):
    """``…/background-to-blended``: a subject generated into a background."""

    task: ClassVar[Task] = "bg2ble"

    background_image_url: ImageUrl = _BACKGROUND


class ForegroundBlendedToBackgroundInput(ConditionedLayerInput):
    """``…/foreground-blended-to-background``: the background behind a foreground, recovered from a blend."""

    task: ClassVar[Task] = "fgble2bg"

    foreground_image_url: ImageUrl = _FOREGROUND
    blended_image_url: ImageUrl = _BLENDED
    scheduler: SchedulerName = _BLENDING_SCHEDULER


class BackgroundBlendedToForegroundInput(ConditionedLayerInput):
    """``…/background-blended-to-foreground``: the transparent foreground of a blend over a known background."""

    task: ClassVar[Task] = "bgble2fg"

    background_image_url: ImageUrl = _BACKGROUND
    blended_image_url: ImageUrl = _BLENDED
    scheduler: SchedulerName = _BLENDING_SCHEDULER


#: How the names of image fields end: the images, and the inpainting mask.
IMAGE_FIELD_SUFFIXES = ("image_url", "mask_url")


def image_fields(params: LayerDiffusionInput | type[LayerDiffusionInput]) -> list[str]:
    """The names of an input's (or input model's) image fields, in declaration order (the first sets
    the default size)."""
    model = params if isinstance(params, type) else type(params)
    return [name for name in model.model_fields if name.endswith(IMAGE_FIELD_SUFFIXES)]


def batch_key(params: LayerDiffusionInput) -> str:
    """What requests must share to be denoised in one batch: one sampler run, one latent shape, one
    checkpoint, one set of style LoRAs merged into the models.

    Stored with each queued request, so a worker picks a batch in SQL without reading inputs; an
    absent side is the worker's model's native one, the same for every request that worker runs.
    Requests with image inputs run alone: their key is unique. A checkpoint is named in the key as
    ``:model=NAME`` (followed by ``:`` or the end), so a worker can prefer the checkpoints it holds
    (see the request queue's claim).
    """
    model = f"{MODEL_MARKER}{params.model_name}" if params.model_name is not None else ""
    if image_fields(params):
        return f"alone:{secrets.token_hex(8)}{model}"
    width, height = params.width or "native", params.height or "native"
    key = f"{width}x{height}:{params.num_inference_steps}:{params.scheduler}:{params.guidance_scale!r}{model}"
    return f"{key}:loras={lora_key(params.loras)}" if params.loras else key


#: How a batch key names its checkpoint (see :func:`batch_key`); a key without it is the model's own.
MODEL_MARKER = ":model="


def lora_key(loras: list[LoraWeight]) -> str:
    """The style LoRAs of a request as a short fixed-length key (a hash of their canonical JSON):
    equal lists give equal keys, so requests share a batch only when they merge the same weights."""
    canonical = json.dumps([[lora.path, lora.scale] for lora in loras], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def image_count(stored_input: dict[str, Any]) -> int:
    """How many images a stored request's input asks for (inputs of older releases: one), which is what
    it takes of a batch (see the request queue's claim)."""
    count = stored_input.get("num_images", 1)
    return count if isinstance(count, int) and count >= 1 else 1


class GenerationParams(LayerDiffusionInput):
    """What the engine generates from text: the endpoint's input, run by the text-to-image pipeline."""


class Image(BaseModel):
    """A stored output file, as fal describes images."""

    url: str = Field(description="Where to download the file.")
    content_type: str = Field(default="image/png")
    file_name: str
    file_size: int = Field(description="Size in bytes.")
    width: int
    height: int


class LayerDiffusionOutput(BaseModel):
    """The output of the ``fal-ai/layer-diffusion`` endpoint, with ``images`` as fal's SDXL endpoints give them."""

    image: Image = Field(description="The transparent image (RGBA PNG, straight alpha); the first of `images`.")
    images: list[Image] = Field(description="Every image generated, in order: image i used seed + i (`num_images`).")
    seed: int = Field(description="The seed the first image was generated with; send it back to get the same images.")
    has_nsfw_concepts: list[bool] | None = Field(
        default=None, description="Per image, whether the safety checker flagged it (it is then fully transparent)."
    )
    has_transparency: list[bool] | None = Field(
        default=None,
        description="Extension: per image, whether its alpha channel carries anything (see "
        "`layerdiffuse_server.images.has_transparency`): false for an image that came out the same opacity "
        "everywhere, such as fully opaque: a sign that the model lost its transparency. The blended and background "
        "endpoints make opaque images, so false is expected there.",
    )
    ignored_prompt_words: list[str] | None = Field(
        default=None,
        description="Extension, only from models trained on a closed vocabulary (the demo model): the words of "
        "the prompt the model does not know and so ignored, each once, in order (empty when it knew them all).",
    )
