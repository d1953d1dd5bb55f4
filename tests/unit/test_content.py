"""Upload rules: any file, images decoded to prove it within a pixel limit; image inputs raster only."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from layerdiffuse_server.files.content import (
    UnsupportedContentError,
    check_content_type,
    check_image,
    check_upload,
    content_disposition,
    decode_data_uri,
)


def encoded(image_format: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA" if image_format != "JPEG" else "RGB", size, (10, 20, 30)).save(buffer, image_format)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` pixels (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("declared", "image_format"), [("image/png", "PNG"), ("Image/JPEG; q=1", "JPEG"), ("image/webp", "WEBP")]
)
def test_raster_images_that_decode_are_accepted(declared: str, image_format: str) -> None:
    assert check_image(declared, encoded(image_format)) == declared.split(";")[0].lower()


@pytest.mark.parametrize(
    "declared", ["image/svg+xml", "text/html", "application/pdf", "image/gif", "application/octet-stream", "text/plain"]
)
def test_anything_the_endpoints_cannot_read_is_refused_as_an_image(declared: str) -> None:
    with pytest.raises(UnsupportedContentError, match="not accepted as an image"):
        check_image(declared, b"<svg/>")


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("text/plain; charset=utf-8", "text/plain"),
        ("application/octet-stream", "application/octet-stream"),
        (None, "application/octet-stream"),
        ("image/svg+xml", "image/svg+xml"),
        ("Text/HTML", "text/html"),
    ],
)
def test_uploads_may_be_any_file_and_only_checked_raster_images_are_inline(declared: str | None, expected: str) -> None:
    assert check_content_type(declared) == expected
    assert check_upload(declared, b"Hello, World!") == expected
    assert content_disposition(expected, "hello.txt") == 'attachment; filename="hello.txt"'
    assert check_upload("image/png", encoded("PNG")) == "image/png"
    assert content_disposition("image/png", "a.png") == 'inline; filename="a.png"'
    with pytest.raises(UnsupportedContentError, match="not a readable image/png"):
        check_upload("image/png", b"Hello, World!")  # declared as an image: it must be one


def test_bytes_must_decode_as_the_declared_format() -> None:
    with pytest.raises(UnsupportedContentError, match="not a readable image/png"):
        check_image("image/png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(UnsupportedContentError, match="not a readable image/png"):
        check_image("image/png", encoded("JPEG"))  # a JPEG that claims to be a PNG
    with pytest.raises(UnsupportedContentError, match="not a readable image/png"):
        check_image("image/png", encoded("PNG", (64, 64))[:-40])  # truncated
    with pytest.raises(UnsupportedContentError, match="invalid content type"):
        check_content_type("nonsense")


def test_decompression_bombs_are_refused_before_decoding() -> None:
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 200
    with pytest.raises(UnsupportedContentError):
        check_image("image/png", bomb)
    with pytest.raises(UnsupportedContentError, match="at most 100 pixels"):
        check_image("image/png", encoded("PNG", (20, 20)), max_pixels=100)


def test_data_uris_decode_with_the_same_checks() -> None:
    png = encoded("PNG")
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_data_uri(uri, max_bytes=4096) == ("image/png", png)
    assert decode_data_uri("DATA:image/png;base64," + uri[22:], max_bytes=4096) == ("image/png", png)
    with pytest.raises(UnsupportedContentError, match="larger than"):
        decode_data_uri(uri, max_bytes=8)
    with pytest.raises(UnsupportedContentError, match="invalid base64"):
        decode_data_uri("data:image/png;base64,***", max_bytes=1024)
    with pytest.raises(UnsupportedContentError, match="not accepted"):
        decode_data_uri("data:,hello%20world", max_bytes=64)
    with pytest.raises(UnsupportedContentError, match="not a readable"):
        decode_data_uri("data:image/png;base64," + base64.b64encode(b"nope").decode(), max_bytes=1024)
