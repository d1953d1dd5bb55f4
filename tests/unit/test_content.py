"""Upload content checks and data URIs."""

from __future__ import annotations

import base64

import pytest

from layerdiffuse_server.files.content import UnsupportedContentError, check_content, decode_data_uri

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_declared_types_are_normalised_and_images_sniffed() -> None:
    assert check_content("Image/PNG; charset=x", PNG) == "image/png"
    assert check_content(None) == "application/octet-stream"
    with pytest.raises(UnsupportedContentError, match="not image/png"):
        check_content("image/png", b"GIF89a....")
    with pytest.raises(UnsupportedContentError, match="not accepted"):
        check_content("text/html", b"<script>")
    with pytest.raises(UnsupportedContentError, match="invalid content type"):
        check_content("nonsense", b"")


def test_data_uris_decode_with_the_same_checks() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert decode_data_uri(uri, max_bytes=1024) == ("image/png", PNG)
    assert decode_data_uri("data:,hello%20world", max_bytes=64) == ("text/plain", b"hello world")
    with pytest.raises(UnsupportedContentError, match="larger than"):
        decode_data_uri(uri, max_bytes=8)
    with pytest.raises(UnsupportedContentError, match="invalid base64"):
        decode_data_uri("data:image/png;base64,***", max_bytes=1024)
    with pytest.raises(UnsupportedContentError, match="not image/png"):
        decode_data_uri("data:image/png;base64," + base64.b64encode(b"nope").decode(), max_bytes=1024)
