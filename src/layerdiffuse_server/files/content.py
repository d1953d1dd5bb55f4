"""Which uploads are accepted, and how each is served.

As on fal, an upload may be any file (a text file, a LoRA's ``.safetensors``, an SVG) of a
syntactically valid content type, within the upload size limit. A file declared as PNG, JPEG or
WebP must decode as that format within a pixel limit (a PNG header on garbage, or a 30000×30000
image packed into 100 KB, is refused before anyone decodes it for real): those raster images are
the only files served ``inline``.

Files may be served from the same origin as the playground, so a file that a browser would run
(SVG, HTML, a PDF with script) could read the API key the playground keeps: everything but the
checked raster images is served as ``Content-Disposition: attachment``, and every file carries
``nosniff`` and a sandboxing CSP (:data:`..api.storage_routes.FILE_HEADERS`).

Image *inputs* of the endpoints are stricter: :func:`check_image` accepts only the raster types.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import unquote_to_bytes

from PIL import Image, UnidentifiedImageError

from ..errors import LayerDiffuseError

#: Declared type → the Pillow format the bytes must decode as.
RASTER_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
#: 64 megapixels: larger than any camera image an endpoint would be given, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 8192 * 8192

_TOKEN = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


class UnsupportedContentError(LayerDiffuseError):
    """The file's content type is not accepted."""

    status_code = 415
    error_type = "bad_request"


def normalize_content_type(value: str | None) -> str:
    media_type = (value or "application/octet-stream").split(";")[0].strip().lower()
    if not _TOKEN.match(media_type):
        raise UnsupportedContentError(f"invalid content type {value!r}")
    return "image/jpeg" if media_type == "image/jpg" else media_type


def check_content_type(content_type: str | None) -> str:
    """The normalized media type of an upload: any syntactically valid one (none: octet-stream)."""
    return normalize_content_type(content_type)


def check_upload(content_type: str | None, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The normalized media type of an upload's bytes: raster types must decode as declared, others pass."""
    media_type = normalize_content_type(content_type)
    if media_type in RASTER_FORMATS:
        check_image(media_type, data, max_pixels=max_pixels)
    return media_type


def is_inline(content_type: str) -> bool:
    """Whether a stored file is shown in the browser: only the raster images, which uploads decoded."""
    return content_type in RASTER_FORMATS


def content_disposition(content_type: str, file_name: str) -> str:
    """``inline`` for raster images, ``attachment`` for everything else (``file_name`` is a safe name)."""
    return f'{"inline" if is_inline(content_type) else "attachment"}; filename="{file_name}"'


def check_image(content_type: str | None, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The normalized media type, once ``data`` has decoded as that format within ``max_pixels``."""
    media_type = normalize_content_type(content_type)
    if media_type not in RASTER_FORMATS:
        accepted = ", ".join(RASTER_FORMATS)
        raise UnsupportedContentError(f"content type {media_type!r} is not accepted as an image; use one of {accepted}")
    expected = RASTER_FORMATS[media_type]
    try:
        with Image.open(io.BytesIO(data), formats=[expected]) as image:
            width, height = image.size  # read from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise UnsupportedContentError(
                    f"the image is {width}×{height} pixels; this server accepts at most {max_pixels:,} pixels"
                )
            image.load()  # decodes every pixel: truncated or corrupt data fails here
    except UnsupportedContentError:
        raise
    except UnidentifiedImageError:
        raise UnsupportedContentError(f"the file is not a readable {media_type} image") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise UnsupportedContentError(f"the file is not a readable {media_type} image ({error})") from None
    return media_type


def decode_data_uri(uri: str, max_bytes: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, bytes]:
    """(media type, bytes) of a ``data:`` URI, checked like an upload; fal accepts these wherever a file URL goes."""
    if uri[:5].lower() != "data:" or "," not in uri:
        raise UnsupportedContentError("not a data URI")
    header, payload = uri[5:].split(",", 1)
    parts = header.split(";")
    is_base64 = parts[-1].lower() == "base64"
    media_type = parts[0] or "text/plain"
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise UnsupportedContentError(f"data URI larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as error:
        raise UnsupportedContentError(f"invalid base64 in data URI: {error}") from None
    if len(data) > max_bytes:
        raise UnsupportedContentError(f"data URI larger than {max_bytes} bytes")
    return check_image(media_type, data, max_pixels=max_pixels), data


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str | None, fallback: str = "upload.bin") -> str:
    """The last path segment of ``name`` with anything but letters, digits, ``.``, ``_`` and ``-``
    replaced, at most 200 characters: a file name that is safe in URLs and headers."""
    cleaned = _UNSAFE_NAME.sub("_", (name or "").rsplit("/", 1)[-1]).strip("._")
    return cleaned[:200] or fallback
