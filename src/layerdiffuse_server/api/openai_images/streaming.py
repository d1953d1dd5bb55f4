"""``stream: true``: the answer as server-sent events the SDKs' ``Stream`` parses —
``image_generation.partial_image`` while the request runs (``image_edit.*`` for edits), then one
``….completed`` per image, each with its ``b64_json``.

Partial images arrive as the worker's log lines name them (see :mod:`...partial_images`): this
stream watches the request's log as the fal status stream does, from whichever API node it is
on. Engines that show no partial images give the completed events only. An error after the
stream started is an ``error`` event, which the SDKs raise as ``APIError``. A client that hangs
up cancels its request, as on ``/run``.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import Request
from PIL import Image

from ...files.image_inputs import own_file
from ...lifecycle import outcomes, wait_for_change
from ...partial_images import parse_partial_image_line
from ...schemas import LayerDiffusionOutput
from ...store.contracts import RequestRecord, RequestState
from ..services import Services
from .answers import ZERO_USAGE, image_size
from .encoding import encoded
from .errors import OpenAIError
from .mapping import AnswerShape


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _common(shape: AnswerShape) -> dict[str, Any]:
    return {
        "background": shape.background,
        "created_at": int(time.time()),
        "output_format": shape.output_format,
        "quality": shape.quality,
    }


def completed_event(prefix: str, output: LayerDiffusionOutput, shape: AnswerShape, b64_json: str) -> dict[str, Any]:
    return {
        "type": f"{prefix}.completed",
        "b64_json": b64_json,
        **_common(shape),
        "size": image_size(output),
        "usage": ZERO_USAGE,
    }


def partial_event(services: Services, prefix: str, shape: AnswerShape, index: int, url: str) -> dict[str, Any] | None:
    """Blocking (the file store): the event of a partial image, None when its file is gone."""
    record = own_file(url, services.files)
    png = services.files.read(record) if record is not None else None
    if png is None:
        return None
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    data = encoded(png, output_format=shape.output_format, background=shape.background, compression=shape.compression)
    return {
        "type": f"{prefix}.partial_image",
        "b64_json": base64.b64encode(data).decode("ascii"),
        **_common(shape),
        "partial_image_index": index,
        "size": f"{width}x{height}",
    }


async def _partials_until_done(
    services: Services, record: RequestRecord, request: Request, prefix: str, shape: AnswerShape
) -> AsyncIterator[bytes | RequestRecord | None]:
    """The partial images' events as their log lines arrive, then the request as it ended (None:
    the client went away, and the request was cancelled)."""
    seen = 0
    async with services.events.watch(record.id, logs=True) as changed:
        while True:
            current = await anyio.to_thread.run_sync(services.manager.get, record.id)
            lines = await anyio.to_thread.run_sync(services.manager.logs, record.id, seen)
            for line in lines:
                seen = line.seq
                parsed = parse_partial_image_line(line.message)
                if parsed is not None and parsed[0] < shape.partial_images:
                    event = await anyio.to_thread.run_sync(partial_event, services, prefix, shape, *parsed)
                    if event is not None:
                        yield sse(event["type"], event)
            if current is None or current.state is RequestState.COMPLETED:
                yield current
                return
            if await request.is_disconnected():
                await anyio.to_thread.run_sync(services.manager.cancel, record.id, outcomes.client_disconnected())
                yield None
                return
            if services.draining.expired():
                await anyio.to_thread.run_sync(services.manager.cancel, record.id)
                yield current
                return
            await wait_for_change(changed, services.draining.timeout(services.events.poll_seconds))


async def image_events(
    services: Services,
    record: RequestRecord,
    request: Request,
    prefix: str,
    shape: AnswerShape,
    finished: Callable[[RequestRecord | None], Awaitable[tuple[LayerDiffusionOutput, list[dict[str, str]]]]],
) -> AsyncIterator[bytes]:
    """The events of one request; ``finished`` turns its ending into its output and base64 images."""
    final: RequestRecord | None = None
    try:
        async for item in _partials_until_done(services, record, request, prefix, shape):
            if isinstance(item, bytes):
                yield item
            else:
                final = item
        output, entries = await finished(final)
    except OpenAIError as error:
        body = {"message": error.message, "type": "server_error", "param": error.param, "code": error.code}
        yield sse("error", {"type": "error", "error": body})
        return
    except BaseException:  # the stream was cut: nobody waits for the request any more
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(services.manager.cancel, record.id)
        raise
    for entry in entries:
        yield sse(f"{prefix}.completed", completed_event(prefix, output, shape, entry["b64_json"]))
