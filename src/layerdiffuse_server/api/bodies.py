"""Reading request bodies: never more bytes than allowed, and JSON strictly, so that nothing we
store or echo back can fail to encode.

Python's ``json`` module reads more than JSON: ``NaN`` and ``Infinity``, numbers that overflow to
infinity (``1e309``), strings with lone surrogates (``"\\ud800"``, which have no UTF-8 form) and
nesting deep enough to exhaust the interpreter's stack. Each of those, accepted, later broke a
response or a stored row; here each is a 422 that names the problem, before anything is stored.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request

from ..errors import InvalidInputError, LayerDiffuseError
from .body_budget import BodyBudget, BodyReservation

MAX_JSON_BYTES = 1 * 2**20
#: An image sent inline (a base64 ``data:`` URI) is at most this large; larger ones are uploaded.
MAX_INLINE_IMAGE_BYTES = 16 * 2**20
#: Deeper than any input of ours; far below the interpreter's recursion limit.
MAX_DEPTH = 32
#: Longer integers are refused before Python's int parser spends time on them (seeds fit in 16).
MAX_INTEGER_DIGITS = 64


class BodyTooLargeError(LayerDiffuseError):
    """The request body is larger than this server accepts."""

    status_code = 413
    error_type = "bad_request"


async def read_limited_body(request: Request, limit: int, reservation: BodyReservation | None = None) -> bytes:
    """The whole body, refused as soon as it is known to exceed ``limit`` (before reading it all).

    With a ``reservation``, the declared length is reserved before the first byte is read; a body
    without one reserves ``limit`` at once, since two bodies that each held part of the budget and
    waited to grow could wait for each other until both were refused.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body is {declared} bytes; this server accepts at most {limit}")
    if reservation is not None:
        await reservation.grow_to(int(declared) if declared and declared.isdigit() else limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is larger than {limit} bytes, the most this server accepts")
        if reservation is not None:
            await reservation.grow_to(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse(message: str) -> InvalidInputError:
    return InvalidInputError(f"the body is not valid JSON: {message}")


def _no_constant(name: str) -> Any:
    raise _refuse(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _refuse(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _refuse(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _check_strings_and_depth(value: Any) -> None:
    """Walk the parsed value without recursion: every string (keys too) must be valid Unicode."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _refuse(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _refuse("a string contains a lone surrogate (\\ud800-\\udfff) that is not a character") from None
        elif isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def parse_json(body: bytes) -> Any:
    """The JSON value in ``body``, or :class:`InvalidInputError` saying why it is refused."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise _refuse(f"nested deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _refuse(str(error)) from None
    _check_strings_and_depth(value)
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body's JSON object; an empty body is ``{}`` (the JS client sends none without input)."""
    if not body.strip():
        return {}
    value = parse_json(body)
    if not isinstance(value, dict):
        raise InvalidInputError("the body must be a JSON object with the endpoint's input fields")
    return value


async def read_json_object(
    request: Request, limit: int = MAX_JSON_BYTES, reservation: BodyReservation | None = None
) -> dict[str, Any]:
    body = await read_limited_body(request, limit, reservation)
    if len(body) <= MAX_JSON_BYTES:
        return parse_json_object(body)
    # Megabytes of JSON take a while to parse: not on the event loop, which serves everyone else.
    return await anyio.to_thread.run_sync(parse_json_object, body)


@contextlib.asynccontextmanager
async def budgeted_body(request: Request, limit: int, budget: BodyBudget) -> AsyncIterator[bytes]:
    """The body's bytes, counted against ``budget`` from before the first read until the block
    ends (an upload: until its bytes are checked and stored)."""
    reservation = budget.reservation()
    try:
        yield await read_limited_body(request, limit, reservation)
    finally:
        reservation.release()


@contextlib.asynccontextmanager
async def budgeted_json_object(request: Request, limit: int, budget: BodyBudget) -> AsyncIterator[dict[str, Any]]:
    """The body's JSON object, its bytes counted against ``budget`` from before the first read
    until the block ends (admit the request inside it, then let go of the input)."""
    reservation = budget.reservation()
    try:
        yield await read_json_object(request, limit, reservation)
    finally:
        reservation.release()


def inline_image_limit(max_upload_bytes: int) -> int:
    """The largest image an input carries inline: :data:`MAX_INLINE_IMAGE_BYTES`, or the upload limit if lower."""
    return min(MAX_INLINE_IMAGE_BYTES, max_upload_bytes)


def input_body_limit(image_fields: int, max_upload_bytes: int) -> int:
    """The body limit of an endpoint: 1 MiB, plus room for each image input sent inline as a base64
    ``data:`` URI (4 bytes for 3) of up to :func:`inline_image_limit` bytes."""
    inline = inline_image_limit(max_upload_bytes)
    return MAX_JSON_BYTES + image_fields * (inline * 4 // 3 + 64)
