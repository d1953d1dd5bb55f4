"""Which uploads are accepted: a declared content type from an allow-list, and bytes that match it.

A file that claims to be an image is sniffed, so a PNG URL served from our origin is a PNG.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

from ..errors import LayerDiffuseError

ALLOWED_PREFIXES = ("image/", "audio/", "video/")
ALLOWED_TYPES = frozenset(
    {"application/octet-stream", "application/json", "application/pdf", "application/zip", "text/plain", "text/csv"}
)
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/jpg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


class UnsupportedContentError(LayerDiffuseError):
    """The file's content type is not accepted."""

    status_code = 415
    error_type = "bad_request"


def normalize_content_type(value: str | None) -> str:
    media_type = (value or "application/octet-stream").split(";")[0].strip().lower()
    if not _TOKEN.match(media_type):
        raise UnsupportedContentError(f"invalid content type {value!r}")
    return media_type


def check_content(content_type: str | None, data: bytes | None = None) -> str:
    """The normalized media type, or an error naming why the file is refused."""
    media_type = normalize_content_type(content_type)
    if not (media_type in ALLOWED_TYPES or media_type.startswith(ALLOWED_PREFIXES)):
        raise UnsupportedContentError(
            f"content type {media_type!r} is not accepted; use an image, audio or video type, "
            f"or one of {', '.join(sorted(ALLOWED_TYPES))}"
        )
    signatures = _SIGNATURES.get(media_type)
    if data is not None and signatures and not data.startswith(signatures):
        raise UnsupportedContentError(f"the file's bytes are not {media_type}")
    if media_type == "image/webp" and data is not None and data[8:12] != b"WEBP":
        raise UnsupportedContentError("the file's bytes are not image/webp")
    return media_type


def decode_data_uri(uri: str, max_bytes: int) -> tuple[str, bytes]:
    """(media type, bytes) of a ``data:`` URI, checked like an upload; fal accepts these wherever a file URL goes."""
    if not uri.startswith("data:") or "," not in uri:
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
    return check_content(media_type, data), data
