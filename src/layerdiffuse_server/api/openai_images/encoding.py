"""Our RGBA PNG outputs re-encoded as the client asked: WebP keeps the alpha, opaque images are
composited over white (straight alpha, so a plain "over"), JPEG is always opaque."""

from __future__ import annotations

import io

from PIL import Image

MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
DEFAULT_WEBP_QUALITY = 100
DEFAULT_JPEG_QUALITY = 90


def needs_encoding(output_format: str, background: str) -> bool:
    """Whether the stored PNG must be re-encoded (else it is answered as stored)."""
    return output_format != "png" or background != "transparent"


def encoded(png: bytes, *, output_format: str, background: str, compression: int | None) -> bytes:
    """The image as ``output_format``, over white when ``background`` is opaque.

    Args:
        png: An RGBA PNG as the worker stored it.
        output_format: png, webp or jpeg.
        background: transparent or opaque.
        compression: webp/jpeg quality, 0–100 (None: the defaults above); ignored for png.
    """
    with Image.open(io.BytesIO(png)) as source:
        image = source.convert("RGBA")
    if background == "opaque":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image).convert("RGB")
    out = io.BytesIO()
    if output_format == "png":
        image.save(out, format="PNG")
    elif output_format == "webp":
        quality = DEFAULT_WEBP_QUALITY if compression is None else compression
        # exact=True keeps the colour of fully transparent pixels, as the PNG has them.
        image.save(out, format="WEBP", quality=quality, lossless=quality == 100, exact=True)
    else:
        quality = DEFAULT_JPEG_QUALITY if compression is None else compression
        image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()
