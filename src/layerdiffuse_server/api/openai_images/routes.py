"""``/v1``: OpenAI's Images API (``images.generate``, ``images.edit``) and ``GET /v1/models``.

Requests go through the same queue as fal's ``/run`` (priorities, batching, leases; a client that
hangs up cancels its request) and are answered when done. Keys are the same as fal's, sent as
``Authorization: Bearer <key id>:<secret>``, with the same per-key isolation.

Edits: one image → image to image; two → ``background-blended-to-foreground`` (``image[0]`` the
background, ``image[1]`` the blended image: the transparent foreground is recovered); a ``mask``
→ inpainting (see :func:`mask_endpoint`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ...auth import AuthenticationError, authenticate
from ...endpoints import ENDPOINTS, Endpoint, endpoint_at
from ...errors import LayerDiffuseError
from ...schemas import LayerDiffusionOutput
from ...store.contracts import ApiKey, RequestRecord
from ..admission import admit_in_lane
from ..bodies import budgeted_body, input_body_limit, parse_json_object
from ..info_routes import running_model
from ..run_routes import wait_for_result
from ..services import Services, ServicesDep
from .answers import finished_output, image_entries, images_body
from .errors import OpenAIError, bad_request, error_response, from_ours, from_validation
from .mapping import OUR_FIELD_PARAMS, AnswerShape, answer_shape, check_model, image_count, our_input
from .multipart_form import FilePart, parse_form
from .schemas import ErrorBody, ImageEditRequest, ImageGenerationRequest, ImageOptions, ImagesResponse, ModelList
from .streaming import image_events

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])
OWNER = "layerdiffuse-server"


async def served_models(services: Services) -> list[str]:
    """The model names the routes take: the running model's (the worker's preset), the operator's
    names for it (``openai_model_names``), then the operator's checkpoints (``model_name``)."""
    settings = services.settings
    return list(dict.fromkeys([await running_model(services), *settings.openai_model_names, *settings.checkpoints]))


def with_checkpoint(raw_input: dict[str, object], model: str | None, services: Services) -> dict[str, object]:
    """``model`` naming one of the operator's checkpoints picks it, as ``model_name`` does on fal's routes."""
    return raw_input | {"model_name": model} if model in services.settings.checkpoints else raw_input


async def authenticated(request: Request, services: Services) -> ApiKey:
    """The caller's key: ``Bearer <key id>:<secret>`` (fal's ``Key`` form is taken too)."""
    header = request.headers.get("authorization")
    scheme, _, credentials = (header or "").strip().partition(" ")
    value = f"Key {credentials.strip()}" if scheme.lower() == "bearer" else header
    try:
        return await anyio.to_thread.run_sync(authenticate, services.store.keys, value)
    except AuthenticationError as error:
        message = error.message.replace("'Authorization: Key", "'Authorization: Bearer")
        raise OpenAIError(401, message, code="invalid_api_key") from None


async def _answering(work: Callable[[], Awaitable[Response]]) -> Response:
    """Every failure of a route as OpenAI's error body."""
    try:
        return await work()
    except OpenAIError as error:
        return error_response(error)
    except ValidationError as error:
        return error_response(from_validation(error, params=OUR_FIELD_PARAMS))
    except LayerDiffuseError as error:
        return error_response(from_ours(error, params=OUR_FIELD_PARAMS))


def mask_endpoint() -> Endpoint:
    """The endpoint of an edit with a ``mask``: transparent inpainting, whose input takes the mask
    as ``mask_url`` (alpha 0: regenerate, as OpenAI reads masks)."""
    return endpoint_at("inpainting")


def edit_endpoint(images: list[FilePart], masks: list[FilePart]) -> Endpoint:
    """The endpoint an edit runs on, by its images (see the module's docstring)."""
    if masks:
        return mask_endpoint()
    if len(images) == 1:
        return endpoint_at("image-to-image")
    if len(images) == 2:
        return endpoint_at("background-blended-to-foreground")
    raise bad_request(
        f"Edits take one image (image to image) or two (background, then blended image); got {len(images)}.",
        param="image",
    )


_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"))


def data_uri(part: FilePart) -> str:
    """An uploaded image as the ``data:`` URI our image fields take (its type from its bytes)."""
    media_type = next((kind for magic, kind in _MAGIC if part.data.startswith(magic)), None)
    if media_type is None and part.data[:4] == b"RIFF" and part.data[8:12] == b"WEBP":
        media_type = "image/webp"
    media_type = media_type or part.content_type or "application/octet-stream"
    return f"data:{media_type};base64,{base64.b64encode(part.data).decode('ascii')}"


async def _run(
    request: Request,
    services: Services,
    key: ApiKey,
    endpoint: Endpoint,
    raw_input: dict[str, Any],
    options: ImageOptions,
    shape: AnswerShape,
    event_prefix: str,
) -> Response:
    if shape.stream and shape.partial_images and "partial_images" in endpoint.input_model.model_fields:
        # The engine shows partial images to requests that ask for them, where the input has the field.
        raw_input = raw_input | {"partial_images": shape.partial_images}
    record = await admit_in_lane(services, key.id, raw_input, request.headers, endpoint=endpoint, mode="sync")
    end_user = options.user or options.safety_identifier
    if end_user:
        logger.info("request %s (OpenAI Images) for end user %r", record.id, end_user)
    headers = {"x-request-id": record.id}

    async def finished(final: RequestRecord | None, as_url: bool) -> tuple[LayerDiffusionOutput, list[dict[str, str]]]:
        output = finished_output(final)
        entries = await anyio.to_thread.run_sync(
            lambda: image_entries(services, output, shape, key_id=key.id, as_url=as_url)
        )
        return output, entries

    if shape.stream:
        events = image_events(services, record, request, event_prefix, shape, lambda final: finished(final, False))
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        final = await wait_for_result(services, record, request)
    except BaseException:  # cut off while waiting: nobody waits for the request any more
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(services.manager.cancel, record.id)
        raise
    try:
        output, entries = await finished(final, shape.response_format == "url")
    except OpenAIError as error:
        return error_response(error, record.id)
    return JSONResponse(images_body(output, shape, entries), headers=headers)


_ERROR_STATUSES = {
    400: "Invalid input (`x-should-retry: false`)",
    401: "Missing or invalid key",
    404: "Unknown model",
    408: "The client went away",
    429: "The queue is full (`Retry-After`)",
    500: "The generation failed",
    503: "The server is stopping, or its store is away",
    504: "The request did not start in time",
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _ERROR_STATUSES[status]} for status in statuses}


#: Streams (``stream: true``) answer text/event-stream.
_IMAGE_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The images; with `stream: true`, server-sent events instead",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_responses(400, 401, 404, 408, 429, 500, 503, 504),
}


def _generation_doc() -> dict[str, Any]:
    schema = ImageGenerationRequest.model_json_schema()
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


def _edit_doc() -> dict[str, Any]:
    schema = ImageEditRequest.model_json_schema()
    file = {"type": "string", "format": "binary"}
    schema["properties"] |= {
        "image": {"description": "One RGBA image (or two as image[]: background, then blended).", **file},
        "mask": {
            "description": "Where to regenerate: alpha 0 there, 255 where the image is kept (transparent inpainting; "
            "kept pixels come back exact).",
            **file,
        },
    }
    schema["required"] = ["image", "prompt"]
    return {"requestBody": {"content": {"multipart/form-data": {"schema": schema}}, "required": True}}


@router.post(
    "/images/generations",
    summary="OpenAI Images: generate transparent images",
    openapi_extra=_generation_doc(),
    response_model=ImagesResponse,
    responses=_IMAGE_ANSWERS,
)
async def generations(request: Request, services: ServicesDep) -> Response:
    """``client.images.generate(...)``: straight-alpha PNGs by default (see mapping.py for the fields)."""

    async def work() -> Response:
        key = await authenticated(request, services)
        async with budgeted_body(
            request, input_body_limit(0, services.settings.max_upload_bytes), services.body_budget()
        ) as body:
            raw = parse_json_object(body)
        options = ImageGenerationRequest.model_validate(raw)
        check_model(options.model, await served_models(services))
        shape = answer_shape(options)
        raw_input = with_checkpoint(our_input(options, shape), options.model, services)
        raw_input |= {"num_images": image_count(options)}
        return await _run(request, services, key, ENDPOINTS[0], raw_input, options, shape, "image_generation")

    return await _answering(work)


@router.post(
    "/images/edits",
    summary="OpenAI Images: edit a transparent image",
    openapi_extra=_edit_doc(),
    response_model=ImagesResponse,
    responses=_IMAGE_ANSWERS,
)
async def edits(request: Request, services: ServicesDep) -> Response:
    """``client.images.edit(image=..., prompt=...)``: multipart, one result image."""

    async def work() -> Response:
        key = await authenticated(request, services)
        limit = input_body_limit(3, services.settings.max_upload_bytes)
        async with budgeted_body(request, limit, services.body_budget()) as body:
            form = parse_form(request.headers.get("content-type", ""), body)
        options = ImageEditRequest.model_validate(form.fields)
        check_model(options.model, await served_models(services))
        shape = answer_shape(options)
        images, masks = form.files_named("image", "image[]"), form.files_named("mask")
        if not images:
            raise bad_request("An image is required: send it as the 'image' file.", param="image", code=None)
        if (options.n or 1) != 1:
            raise bad_request("Invalid 'n': edits make one image per request here.", param="n")
        if masks and len(images) > 1:
            raise bad_request("Invalid 'image': an edit with a mask takes one image.", param="image")
        endpoint = edit_endpoint(images, masks)
        raw_input = with_checkpoint(our_input(options, shape), options.model, services)
        raw_input |= {name: data_uri(part) for name, part in zip(endpoint.image_fields, images, strict=False)}
        if masks:
            raw_input["mask_url"] = data_uri(masks[0])
        return await _run(request, services, key, endpoint, raw_input, options, shape, "image_edit")

    return await _answering(work)


@router.get(
    "/models",
    summary="OpenAI: the model names the Images routes take",
    response_model=ModelList,
    responses=_responses(401, 503),
)
async def models(request: Request, services: ServicesDep) -> Response:
    async def work() -> Response:
        await authenticated(request, services)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": OWNER} for name in await served_models(services)
        ]
        return JSONResponse({"object": "list", "data": data})

    return await _answering(work)
