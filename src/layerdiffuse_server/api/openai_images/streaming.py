"""``stream: true``: the answer as server-sent events the SDKs' ``Stream`` parses —
``image_generation.completed`` (``image_edit.completed`` for edits), one per image, each with its
``b64_json``.

Partial images (``partial_images`` 1–3) need the engine to hand its intermediate latents out;
until it does, the stream carries the completed events only. An error after the stream started is
an ``error`` event, which the SDKs raise as ``APIError``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ...schemas import LayerDiffusionOutput
from .answers import ZERO_USAGE, image_size
from .errors import OpenAIError
from .mapping import AnswerShape


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def completed_event(prefix: str, output: LayerDiffusionOutput, shape: AnswerShape, b64_json: str) -> dict[str, Any]:
    return {
        "type": f"{prefix}.completed",
        "b64_json": b64_json,
        "background": shape.background,
        "created_at": int(time.time()),
        "output_format": shape.output_format,
        "quality": shape.quality,
        "size": image_size(output),
        "usage": ZERO_USAGE,
    }


async def image_events(
    prefix: str,
    shape: AnswerShape,
    finished: Callable[[], Awaitable[tuple[LayerDiffusionOutput, list[dict[str, str]]]]],
) -> AsyncIterator[bytes]:
    """The events of one request: ``finished`` waits for it and gives its output and base64 images."""
    try:
        output, entries = await finished()
    except OpenAIError as error:
        yield sse(
            "error",
            {
                "type": "error",
                "error": {"message": error.message, "type": "server_error", "param": error.param, "code": error.code},
            },
        )
        return
    for entry in entries:
        yield sse(f"{prefix}.completed", completed_event(prefix, output, shape, entry["b64_json"]))
