"""The images of a finished request in OpenAI's shape: ``{created, data, background, output_format,
quality, size, usage}``, each image as base64 or as a URL of this server's file store."""

from __future__ import annotations

import base64
import time
from pathlib import PurePosixPath
from typing import Any

from ...files import file_url
from ...files.image_inputs import own_file
from ...schemas import LayerDiffusionOutput
from ...store.contracts import RequestRecord, RequestState
from ..services import Services
from .encoding import MEDIA_TYPES, encoded, needs_encoding
from .errors import OpenAIError, from_failed_result
from .mapping import AnswerShape

#: No tokens are counted here; the SDKs' types want the fields.
ZERO_USAGE: dict[str, Any] = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def finished_output(final: RequestRecord | None) -> LayerDiffusionOutput:
    """The output of a request that completed with images.

    Raises:
        OpenAIError: it ended otherwise (cancelled by the server's stop, failed, refused by the worker).
    """
    if final is None:
        raise OpenAIError(408, "The client went away; the request was cancelled.")
    if final.state is not RequestState.COMPLETED:
        raise OpenAIError(503, "The server is stopping; the request was cancelled. Try again.")
    if final.status_code != 200:
        raise from_failed_result(final.status_code or 500, final.response)
    return LayerDiffusionOutput.model_validate(final.response)


def image_entries(
    services: Services, output: LayerDiffusionOutput, shape: AnswerShape, *, key_id: str, as_url: bool
) -> list[dict[str, str]]:
    """Blocking (the file store): each image as ``{"b64_json": …}`` or ``{"url": …}``.

    A URL names the stored PNG itself when it is answered as stored, else a re-encoded copy stored
    for the same key and kept as long as uploads are (``retention_hours``).
    """
    entries = []
    reencode = needs_encoding(shape.output_format, shape.background)
    for image in output.images:
        if as_url and not reencode:
            entries.append({"url": image.url})
            continue
        data = _image_bytes(services, image.url)
        if reencode:
            data = encoded(
                data, output_format=shape.output_format, background=shape.background, compression=shape.compression
            )
        if not as_url:
            entries.append({"b64_json": base64.b64encode(data).decode("ascii")})
            continue
        hours = services.settings.retention_hours
        stored = services.files.store(
            data,
            file_name=f"{PurePosixPath(image.file_name).stem}.{shape.output_format}",
            content_type=MEDIA_TYPES[shape.output_format],
            key_id=key_id,
            expires_at=services.manager.clock.time() + hours * 3600 if hours else None,
        )
        entries.append({"url": file_url(services.files_url, stored.id, stored.file_name)})
    return entries


def _image_bytes(services: Services, url: str) -> bytes:
    record = own_file(url, services.files)
    data = services.files.read(record) if record is not None else None
    if data is None:
        raise OpenAIError(500, "The generated image could not be read back from the file store.")
    return data


def images_body(output: LayerDiffusionOutput, shape: AnswerShape, data: list[dict[str, str]]) -> dict[str, Any]:
    """The ``ImagesResponse`` the SDKs parse."""
    return {
        "created": int(time.time()),
        "data": data,
        "background": shape.background,
        "output_format": shape.output_format,
        "quality": shape.quality,
        "size": image_size(output),
        "usage": ZERO_USAGE,
    }


def image_size(output: LayerDiffusionOutput) -> str:
    return f"{output.image.width}x{output.image.height}"
