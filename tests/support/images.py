"""Small real images for upload tests: the server decodes what it accepts."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int, int] = (200, 40, 40, 128)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, colour).save(buffer, "PNG")
    return buffer.getvalue()
