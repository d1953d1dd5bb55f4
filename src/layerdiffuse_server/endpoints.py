"""The endpoints this server answers: fal's app id, plus one sub-path per LayerDiffuse method.

fal addresses an app's extra endpoints by sub-path (``fal-ai/layer-diffusion/image-to-image``);
submissions go to the full path while status, result and cancel stay under the app id. Each
request stores the endpoint it was sent to, so the worker runs the method that was asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import NotFoundError
from .schemas import (
    API_INPUT,
    BackgroundBlendedToForegroundInput,
    BackgroundToBlendedInput,
    ForegroundBlendedToBackgroundInput,
    ForegroundToBlendedInput,
    GenerationParams,
    ImageToImageInput,
    InpaintingInput,
    LayerDiffusionInput,
    Task,
    checkpoint_context,
    image_fields,
)

APP_ID = "fal-ai/layer-diffusion"


@dataclass(frozen=True)
class Endpoint:
    path: str  # after the app id; "" for text to image
    input_model: type[LayerDiffusionInput]
    title: str
    transparent: bool  # the result is a transparent layer (else an opaque image, alpha 255)

    @property
    def task(self) -> Task:
        """What the engine runs for it: its input model's task."""
        return self.input_model.task

    @property
    def image_fields(self) -> list[str]:
        """Its image inputs (``image_url``, ``foreground_image_url`` …), in declaration order."""
        return image_fields(self.input_model)

    @property
    def app_id(self) -> str:
        return f"{APP_ID}/{self.path}" if self.path else APP_ID

    def admitted_params(
        self, raw_input: Any, *, from_api: bool = True, checkpoints: Iterable[str] | None = None
    ) -> LayerDiffusionInput:
        """A request's input as the API admits it, checked once: validated as API input, its seed
        drawn now when absent, so every run of the request (a retry after a lost worker too) is
        the same image. Its size is fixed where the request runs (:func:`run_params`): by the
        worker's model, or by its input image.

        ``from_api``: apply the API's checks too (image fields hold URLs, see :data:`.schemas.API_INPUT`);
        ``checkpoints``: the names a ``model_name`` may take (the operator's list), where the API knows them.

        Raises:
            pydantic.ValidationError: the input is not valid for this endpoint.
        """
        context = (checkpoint_context(checkpoints) if checkpoints is not None else API_INPUT) if from_api else None
        return self.input_model.model_validate(raw_input, context=context).with_seed()


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("", LayerDiffusionInput, "Text to transparent image", True),
    Endpoint("image-to-image", ImageToImageInput, "Transparent image to transparent image", True),
    Endpoint("inpainting", InpaintingInput, "Transparent inpainting: the masked area regenerated", True),
    Endpoint("foreground-to-blended", ForegroundToBlendedInput, "Foreground to blended image", False),
    Endpoint("background-to-blended", BackgroundToBlendedInput, "Background to blended image", False),
    Endpoint(
        "foreground-blended-to-background",
        ForegroundBlendedToBackgroundInput,
        "Foreground and blended image to background",
        False,
    ),
    Endpoint(
        "background-blended-to-foreground",
        BackgroundBlendedToForegroundInput,
        "Background and blended image to transparent foreground",
        True,
    ),
)
_BY_PATH = {endpoint.path: endpoint for endpoint in ENDPOINTS}
_BY_APP_ID = {endpoint.app_id: endpoint for endpoint in ENDPOINTS}


def endpoint_at(subpath: str) -> Endpoint:
    """The endpoint of a sub-path of the app (``""`` or ``"image-to-image"``, slashes trimmed)."""
    endpoint = _BY_PATH.get(subpath.strip("/"))
    if endpoint is None:
        known = ", ".join(f"{APP_ID}/{e.path}" for e in ENDPOINTS if e.path)
        raise NotFoundError(f"No endpoint {APP_ID}/{subpath.strip('/')}; this app has {APP_ID} and {known}")
    return endpoint


def endpoint_of(app_id: str) -> Endpoint:
    """The endpoint a stored request was sent to (requests of older releases: text to image)."""
    return _BY_APP_ID.get(app_id, ENDPOINTS[0])


def stored_input(params: LayerDiffusionInput) -> dict[str, Any]:
    """What a request's row keeps of its admitted parameters: the fields the client set, plus the
    seed drawn for it (rows of older releases hold the input as received, which reads back the same)."""
    return params.model_dump(mode="json", exclude_unset=True)


def run_params(app_id: str, stored: dict[str, Any], native_size: int) -> LayerDiffusionInput:
    """A stored request's parameters as the engine runs them: :class:`GenerationParams` for text to
    image, else the endpoint's input model; the seed fixed (drawn now for rows of older releases
    that stored none) and, without image inputs, the size fixed to the model's ``native_size``
    where it names none (with image inputs the engine fixes it from the first image).

    Raises:
        pydantic.ValidationError: the stored input is not valid (stored by an older release that checked less).
    """
    model = endpoint_of(app_id).input_model
    params = model.model_validate(stored).with_seed()
    if image_fields(params):
        return params
    return GenerationParams(**params.model_dump()).with_size(native_size)
