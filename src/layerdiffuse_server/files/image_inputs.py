"""Image inputs of the endpoints (``image_url``, ``foreground_image_url`` …) as checked files of this server.

The API node *materialises* every image field when it admits a request: the image is fetched or
decoded, checked like an upload and stored among this server's own files, and the field is rewritten
to that file's URL. Workers then read only own files (:func:`read_image_input`): they may sit in a
private network and never fetch from the internet, and a request that waits in the queue for hours
no longer depends on a URL that may have changed or gone.

A field may hold:

- a file URL of this server (an output, or what the fal clients' auto-upload returned), recognised
  by the download route's path ``…/files/{id}/{name}`` and a ready catalogued file of that id and
  name, not by host (API nodes may sit behind a load balancer under several names); it is kept,
  rewritten to ``base_url``, not copied, if it is a PNG, JPEG or WebP (uploads may be any file;
  those three were decoded when they were uploaded);
- a ``data:`` URI, decoded and checked like an upload;
- any other http(s) URL, fetched under the outbound-URL guard (:mod:`..outbound`: public
  addresses only unless the operator allows a network, connected to the checked address with the
  URL's Host header and TLS server name, no redirects, no credentials, no proxy from the
  environment), with the size limit enforced while streaming and one deadline for the whole
  exchange.

Anything else is an :class:`~..errors.InvalidInputError` that names the field (fal's 422).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InvalidInputError
from ..outbound import (
    MAX_URL_LENGTH,
    IPNetwork,
    TargetRefused,
    WebhookTarget,
    parse_networks,
    pinned_get,
    resolve_webhook_target,
)
from ..schemas import ACCEPTED_IMAGE_URLS, describe_refused_url
from ..store.contracts import FileRecord
from .blobs import file_url
from .content import (
    DEFAULT_MAX_PIXELS,
    RASTER_FORMATS,
    UnsupportedContentError,
    check_image,
    decode_data_uri,
    safe_file_name,
)
from .stored_files import StoredFiles

if TYPE_CHECKING:
    import numpy

    from ..settings import Settings

#: The download route's path (``files.file_url``), after whatever prefix a proxy puts in front of it.
_FILE_PATH = re.compile(r"/files/(?P<id>[A-Za-z0-9_-]{8,64})/(?P<name>[^/]+)$")
_EXTENSIONS = {"image/png": (".png",), "image/jpeg": (".jpg", ".jpeg"), "image/webp": (".webp",)}
#: Types object stores give files nobody typed: the bytes say what the image is.
_UNTYPED = {"", "application/octet-stream", "binary/octet-stream"}
_SIXTEEN_BIT_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
#: Longest side of an image input. A side is what fitting scales by, so it bounds the work more
#: than the pixel count does (a 65536×1 strip has 65 K pixels).
DEFAULT_MAX_SIDE = 16384
#: Most elongated image input (long side : short side); a panorama of 16:1 still fits.
DEFAULT_MAX_ASPECT_RATIO = 16.0
#: How much of a stored file is read to find its size in the header, before reading it all.
_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class ImageInputPolicy:
    """How far the server goes to get an image input: where it may connect, how much it reads and for how long."""

    allowed_networks: Sequence[IPNetwork] = ()
    max_bytes: int = 50 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_seconds: float = 20.0
    max_side: int = DEFAULT_MAX_SIDE
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageInputPolicy:
        """Image inputs are uploads made by the server: the upload limits apply, and the webhook
        networks, since both guard the same thing (the server connecting where a key holder says)."""
        return cls(
            allowed_networks=parse_networks(settings.webhook_allowed_networks),
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_upload_pixels,
            timeout_seconds=settings.image_input_timeout_seconds,
            max_side=settings.image_input_max_side,
            max_aspect_ratio=settings.image_input_max_aspect_ratio,
        )


@dataclass(frozen=True)
class _Destination:
    files: StoredFiles
    base_url: str
    key_id: str
    expires_at: float | None
    created: list[str]  # ids of the copies stored, so a refused request can take them back


def store_image_inputs(
    raw_input: Mapping[str, Any],
    fields: Sequence[str],
    *,
    files: StoredFiles,
    base_url: str,
    key_id: str,
    policy: ImageInputPolicy,
    expires_at: float | None,
    transport: httpx.AsyncBaseTransport | None = None,
    created: list[str] | None = None,
    fetch: bool = True,
) -> dict[str, Any]:
    """A copy of ``raw_input`` where each present image field is the URL of a checked file of this server.

    Absent and null fields are left to the endpoint's validation. The same URL in two fields is
    stored once. Blocking (DNS, the store, and downloads that run their own event loop): call it off
    the event loop.

    Args:
        raw_input: The request's input as received.
        fields: The endpoint's image fields.
        files: Where the copies are stored (and where own file URLs are looked up).
        base_url: This server's public URL, the base of the URLs written into the fields.
        key_id: The API key the copies belong to.
        policy: Limits of fetching and decoding.
        expires_at: When the copies may be deleted (None: never).
        transport: The HTTP transport of external fetches (tests); default: real connections.
        created: Receives the ids of the copies stored (also those of a call that then fails), for
            the caller to discard (``files.discard``) if the request is refused.
        fetch: Whether external URLs may be fetched (False: admitted as inline, see
            :func:`needs_fetching`; an external URL is then refused).

    Returns:
        The rewritten input; ``raw_input`` is not changed.

    Raises:
        InvalidInputError: A field holds something that is not a usable image (``field`` names it).
    """
    destination = _Destination(files, base_url, key_id, expires_at, created if created is not None else [])
    stored = dict(raw_input)
    done: dict[str, str] = {}
    for field in fields:
        value = raw_input.get(field)
        if value is None:
            continue
        url = _checked_string(value, field)
        if url not in done:
            done[url] = _materialise(url, field, destination, policy, transport, fetch=fetch)
        stored[field] = done[url]
    return stored


def needs_fetching(raw_input: Mapping[str, Any], fields: Sequence[str], *, files: StoredFiles) -> bool:
    """Whether :func:`store_image_inputs` would fetch anything: an http(s) URL in a field that is not a
    file of this server. Blocking (the catalog): call it off the event loop."""
    for field in fields:
        value = raw_input.get(field)
        external = isinstance(value, str) and value.lower().startswith(("http://", "https://"))
        if external and own_file(str(value), files) is None:
            return True
    return False


def read_image_input(
    url: str, *, files: StoredFiles, field: str | None = None
) -> numpy.ndarray[Any, numpy.dtype[numpy.uint8]]:
    """An own file's image as straight-alpha RGBA ``uint8`` of shape ``[H, W, 4]``, upright per its EXIF.

    Workers call this with the URLs :func:`store_image_inputs` wrote; they never fetch anything
    else, so any other URL is refused rather than fetched. Images beyond the default side and
    aspect-ratio limits are refused here too (settings may only lower those).

    Raises:
        InvalidInputError: The URL is not a ready file of this server, or the file is gone or unreadable.
    """
    record = own_file(url, files)
    if record is None or not record.ready:
        raise InvalidInputError(f"{_shorten(url)} is not a file of this server", field=field)
    data = files.read(record)
    if data is None:
        raise InvalidInputError(f"the file {record.file_name} is no longer stored", field=field)
    _check_shape(data, ImageInputPolicy(), field)  # queued before these limits, or an upload never admitted
    try:
        return decode_rgba(data)
    except UnsupportedContentError as error:
        raise InvalidInputError(str(error), field=field) from None


def decode_rgba(data: bytes) -> numpy.ndarray[Any, numpy.dtype[numpy.uint8]]:
    """PNG, JPEG or WebP bytes as straight-alpha RGBA ``uint8`` ``[H, W, 4]``, with EXIF orientation applied.

    Every mode these formats decode to ends up the same: RGB gets alpha 255, grey and palette
    images their transparency (``tRNS``), 16-bit grey is scaled (Pillow would clip it to 255).
    """
    try:
        with Image.open(io.BytesIO(data), formats=list(RASTER_FORMATS.values())) as image:
            ImageOps.exif_transpose(image, in_place=True)  # no copy of the pixels when upright already
            return _rgba_pixels(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise UnsupportedContentError(f"the file is not a readable image ({error})") from None


def fetch_image(
    url: str, policy: ImageInputPolicy, *, field: str, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[str, bytes, str]:
    """(media type, bytes, file name) of an external image, fetched and checked under ``policy``.

    Blocking: DNS is resolved here, and the download runs in its own event loop so that one
    deadline covers the whole exchange (a sender that trickles bytes is cut off, as webhook
    receivers are). Call it off the event loop.
    """
    with _refusal_for(field):
        target = resolve_webhook_target(url, policy.allowed_networks)
    try:
        declared, data = asyncio.run(_download(target, policy, field, transport))
    except TimeoutError:
        raise InvalidInputError(
            f"the image at {_shorten(url)} did not arrive within {policy.timeout_seconds:g} s", field=field
        ) from None
    except httpx.HTTPError as failure:
        raise InvalidInputError(
            f"could not fetch the image at {_shorten(url)} ({type(failure).__name__}: {failure})", field=field
        ) from None
    media_type = _checked_image(declared, data, policy, field)
    _check_shape(data, policy, field)
    return media_type, data, _file_name(target.url.path, media_type)


def _materialise(
    url: str,
    field: str,
    destination: _Destination,
    policy: ImageInputPolicy,
    transport: httpx.AsyncBaseTransport | None,
    *,
    fetch: bool,
) -> str:
    """The own-file URL one field value comes down to."""
    if url[:5].lower() == "data:":
        with _content_refusal(field):
            media_type, data = decode_data_uri(url, policy.max_bytes, max_pixels=policy.max_pixels)
        _check_shape(data, policy, field)
        return _store_copy(destination, media_type, data, _file_name("", media_type))
    _check_url_form(url, field)
    record = own_file(url, destination.files)
    if record is not None:
        if not record.ready:
            raise InvalidInputError(f"the file {record.file_name} has not been uploaded yet", field=field)
        if record.content_type not in RASTER_FORMATS:
            raise InvalidInputError(
                f"the file {record.file_name} is {record.content_type}, not a PNG, JPEG or WebP image", field=field
            )
        _check_stored_shape(record, destination.files, policy, field)
        return file_url(destination.base_url, record.id, record.file_name)
    if not fetch:  # found to be an own file when the lane was chosen, and deleted since
        raise InvalidInputError(f"{_shorten(url)} is no longer a file of this server", field=field)
    media_type, data, name = fetch_image(url, policy, field=field, transport=transport)
    return _store_copy(destination, media_type, data, name)


def _checked_string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"must be {ACCEPTED_IMAGE_URLS}, got {type(value).__name__}", field=field)
    if not value.strip():
        raise InvalidInputError(f"must be {ACCEPTED_IMAGE_URLS}, got an empty string", field=field)
    return value


def _check_url_form(url: str, field: str) -> None:
    """Refuse what is not an http(s) URL with a message that says what is accepted (not the webhook's)."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInputError(f"URLs longer than {MAX_URL_LENGTH} characters are refused", field=field)
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidInputError(f"must be {ACCEPTED_IMAGE_URLS}, got {describe_refused_url(url)}", field=field)


def own_file(url: str, files: StoredFiles) -> FileRecord | None:
    """The catalogued file a URL names by the download route's path, whatever host it names."""
    try:
        path = httpx.URL(url).path
    except (httpx.InvalidURL, ValueError):
        return None
    match = _FILE_PATH.search(path)
    if match is None:
        return None
    return files.named(match["id"], match["name"])


async def _download(
    target: WebhookTarget, policy: ImageInputPolicy, field: str, transport: httpx.AsyncBaseTransport | None
) -> tuple[str | None, bytes]:
    """(declared content type, body) of a GET to the checked address, as webhooks are delivered."""
    headers = {
        "User-Agent": "layerdiffuse-server image inputs",
        "Accept": ", ".join(RASTER_FORMATS),
        "Accept-Encoding": "identity",  # what is counted is what arrives: no decompression bombs
    }
    async with (
        asyncio.timeout(policy.timeout_seconds),
        pinned_get(target, headers, timeout=policy.timeout_seconds, transport=transport) as response,
    ):
        _check_answer(response, policy.max_bytes, field)
        return response.headers.get("content-type"), await _read_at_most(response, policy.max_bytes, field)


def _check_answer(response: httpx.Response, max_bytes: int, field: str) -> None:
    """Refuse from the status line and headers, before any of the body is read."""
    if response.is_redirect:
        raise InvalidInputError(
            f"the image URL answered with a redirect (HTTP {response.status_code}), which is not followed; "
            "give the URL it redirects to",
            field=field,
        )
    if not response.is_success:
        raise InvalidInputError(f"fetching the image failed with HTTP {response.status_code}", field=field)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Asked for identity; decoding anyway would let a few kilobytes on the wire become gigabytes.
        raise InvalidInputError(
            f"the image URL answered with Content-Encoding {encoding[:40]!r}; this server asks for and accepts "
            "only unencoded bodies (identity)",
            field=field,
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInputError(_too_large(max_bytes), field=field)


async def _read_at_most(response: httpx.Response, max_bytes: int, field: str) -> bytes:
    """The body as it came over the wire (never decoded), refused as soon as it passes ``max_bytes``
    (the rest is never read)."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidInputError(_too_large(max_bytes), field=field)
    return bytes(body)


def _too_large(max_bytes: int) -> str:
    return f"the image is larger than {max_bytes:,} bytes, the most this server accepts"


def _checked_image(declared: str | None, data: bytes, policy: ImageInputPolicy, field: str) -> str:
    """The media type, once the bytes decoded as it within the pixel limit (an untyped body is sniffed)."""
    media_type = (declared or "").split(";")[0].strip().lower()
    if media_type in _UNTYPED:
        media_type = _sniffed_type(data) or "application/octet-stream"
    with _content_refusal(field):
        return check_image(media_type, data, max_pixels=policy.max_pixels)


def _check_shape(data: bytes, policy: ImageInputPolicy, field: str | None) -> None:
    """Refuse an image whose header gives a side or an aspect ratio beyond ``policy`` (nothing is decoded).

    Bytes that are no readable image pass: the content checks and the decoder say why.
    """
    try:
        with Image.open(io.BytesIO(data), formats=list(RASTER_FORMATS.values())) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    refusal = _shape_refusal(width, height, policy)
    if refusal is not None:
        raise InvalidInputError(refusal, field=field)


def _shape_refusal(width: int, height: int, policy: ImageInputPolicy) -> str | None:
    longest, shortest = max(width, height), max(1, min(width, height))
    if longest > policy.max_side:
        return f"the image is {width}×{height} pixels; this server accepts sides of at most {policy.max_side:,} pixels"
    if longest / shortest > policy.max_aspect_ratio:
        return (
            f"the image is {width}×{height} pixels, {longest / shortest:.4g}:1; this server accepts aspect "
            f"ratios of at most {policy.max_aspect_ratio:g}:1"
        )
    return None


def _check_stored_shape(record: FileRecord, files: StoredFiles, policy: ImageInputPolicy, field: str) -> None:
    """:func:`_check_shape` for an own file (an upload), from its header: the first megabyte, else all of it."""
    blob = files.open(record)
    if blob is None:
        raise InvalidInputError(f"the file {record.file_name} is no longer stored", field=field)
    head = bytearray()
    chunks = blob.chunks
    for chunk in chunks:
        head += chunk
        if len(head) >= _HEADER_BYTES:
            break
    try:
        with Image.open(io.BytesIO(head), formats=list(RASTER_FORMATS.values())):
            pass  # the header was enough
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        head += b"".join(chunks)  # a JPEG with a large EXIF block before its size, say
    finally:
        close = getattr(chunks, "close", None)  # a generator's file is closed with it
        if close is not None:
            close()
    _check_shape(bytes(head), policy, field)


def _sniffed_type(data: bytes) -> str | None:
    """The accepted type whose header the bytes carry, if any (read from the header only)."""
    try:
        with Image.open(io.BytesIO(data), formats=list(RASTER_FORMATS.values())) as image:
            found = image.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return next((media for media, name in RASTER_FORMATS.items() if name == found), None)


def _file_name(url_path: str, media_type: str) -> str:
    """The URL's base name when it is safe and ends as the type does, else ``input.png`` and the like."""
    name = safe_file_name(url_path, fallback="")
    extensions = _EXTENSIONS[media_type]
    return name if name.lower().endswith(extensions) else f"input{extensions[0]}"


def _store_copy(destination: _Destination, media_type: str, data: bytes, file_name: str) -> str:
    """Store checked bytes as a ready file, like an upload (a failed write leaves no bytes that no
    row names); its URL."""
    record = destination.files.store(
        data,
        file_name=file_name,
        content_type=media_type,
        key_id=destination.key_id,
        expires_at=destination.expires_at,
    )
    destination.created.append(record.id)
    return file_url(destination.base_url, record.id, record.file_name)


def _rgba_pixels(image: Image.Image) -> numpy.ndarray[Any, numpy.dtype[numpy.uint8]]:
    import numpy as np  # the engine's dependency: the API node never decodes pixels

    if image.mode in _SIXTEEN_BIT_GRAY:
        return _sixteen_bit_gray_rgba(image)
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    return np.array(rgba, dtype=np.uint8)  # writable: the engine may work on it in place


def _sixteen_bit_gray_rgba(image: Image.Image) -> numpy.ndarray[Any, numpy.dtype[numpy.uint8]]:
    """16-bit grey scaled to 8 bits (rounded), transparent where it equals the ``tRNS`` grey."""
    import numpy as np

    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    alpha = np.full_like(grey, 255)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha[values == transparent] = 0
    return np.stack([grey, grey, grey, alpha], axis=-1)


@contextlib.contextmanager
def _refusal_for(field: str) -> Iterator[None]:
    """The webhook guard's refusals, told about this field (its reasons hold: same rules, same setting)."""
    try:
        yield
    except TargetRefused as refused:
        raise InvalidInputError(f"image URL refused: {refused.reason}", field=field) from None


@contextlib.contextmanager
def _content_refusal(field: str) -> Iterator[None]:
    """Content errors are 415 for uploads; in a field of the input they are invalid input (422)."""
    try:
        yield
    except UnsupportedContentError as error:
        raise InvalidInputError(str(error), field=field) from None


def _shorten(url: str) -> str:
    return url if len(url) <= 100 else f"{url[:97]}..."
