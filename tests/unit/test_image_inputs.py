"""Image inputs: own file URLs kept, data: URIs stored, everything else refused with the field's name;
and the worker's side, which turns any PNG, JPEG or WebP mode into straight RGBA, upright."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.files import LocalBlobStore, StoredFiles, file_url, new_file_id
from layerdiffuse_server.files.image_inputs import (
    ImageInputPolicy,
    decode_rgba,
    read_image_input,
    store_image_inputs,
)
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store import FileRecord, Store, open_store

BASE_URL = "https://api.example"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> LocalBlobStore:
    return LocalBlobStore(tmp_path_factory.mktemp("files"))


def encode(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def add_file(
    store: Store,
    blobs: LocalBlobStore,
    data: bytes,
    *,
    name: str = "cat.png",
    ready: bool = True,
    content_type: str = "image/png",
) -> str:
    """An uploaded file, as the storage routes catalogue it; its id."""
    file_id = new_file_id()
    if ready:
        blobs.put(file_id, data, content_type)
    size = len(data) if ready else None
    store.files.add(FileRecord(file_id, name, content_type, size, "k", None, 0.0, None, ready))
    return file_id


def materialise(store: Store, blobs: LocalBlobStore, raw: dict[str, Any], **policy: Any) -> dict[str, Any]:
    return store_image_inputs(
        raw,
        ["image_url", "mask_url"],
        files=StoredFiles(blobs, store.files),
        base_url=BASE_URL,
        key_id="key-1",
        policy=ImageInputPolicy(**policy),
        expires_at=1234.0,
    )


def read(store: Store, blobs: LocalBlobStore, url: str) -> np.ndarray:
    return read_image_input(url, files=StoredFiles(blobs, store.files))


def png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand: Pillow reads these but cannot write most of them."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_an_own_file_url_is_kept_whatever_host_named_it(store: Store, blobs: LocalBlobStore) -> None:
    data = encode(Image.new("RGBA", (3, 2), (10, 20, 30, 40)))
    file_id = add_file(store, blobs, data)
    behind_a_proxy = f"http://node-2.internal:8080/prefix/files/{file_id}/cat.png"
    stored = materialise(store, blobs, {"prompt": "x", "image_url": behind_a_proxy})
    assert stored == {"prompt": "x", "image_url": file_url(BASE_URL, file_id, "cat.png")}
    pixels = read(store, blobs, stored["image_url"])
    assert pixels.shape == (2, 3, 4) and pixels.dtype == np.uint8
    assert (pixels == [10, 20, 30, 40]).all()


def test_a_data_uri_is_stored_as_a_file_of_the_key(store: Store, blobs: LocalBlobStore) -> None:
    data = encode(Image.new("RGB", (4, 4), (1, 2, 3)))
    raw = {"image_url": data_uri(data), "mask_url": data_uri(data), "other_url": "ftp://not/an/image/field"}
    stored = materialise(store, blobs, raw)
    assert raw["image_url"].startswith("data:")  # the caller's input is not changed
    assert stored["image_url"] == stored["mask_url"]  # one copy for the same value
    assert stored["other_url"] == raw["other_url"]
    file_id, name = stored["image_url"].removeprefix(f"{BASE_URL}/files/").split("/")
    record = store.files.get(file_id)
    assert record is not None and name == record.file_name == "input.png"
    assert (record.key_id, record.content_type, record.size, record.ready) == ("key-1", "image/png", len(data), True)
    assert record.expires_at == 1234.0 and record.request_id is None
    assert (read(store, blobs, stored["image_url"]) == [1, 2, 3, 255]).all()


def test_uri_schemes_are_case_insensitive(store: Store, blobs: LocalBlobStore) -> None:
    data = encode(Image.new("RGB", (2, 2), (4, 5, 6)))
    for prefix in ("DATA:", "Data:"):
        stored = materialise(store, blobs, {"image_url": prefix + data_uri(data).removeprefix("data:")})
        assert (read(store, blobs, stored["image_url"]) == [4, 5, 6, 255]).all(), prefix
    file_id = add_file(store, blobs, data)
    stored = materialise(store, blobs, {"image_url": f"HTTPS://API.example/files/{file_id}/cat.png"})
    assert stored["image_url"] == file_url(BASE_URL, file_id, "cat.png")


@pytest.mark.parametrize("content_type", ["text/plain", "image/svg+xml", "application/octet-stream"])
def test_an_own_file_that_is_not_an_image_is_refused_naming_the_field(
    store: Store, blobs: LocalBlobStore, content_type: str
) -> None:
    file_id = add_file(store, blobs, b"Hello, World!", name="hello.txt", content_type=content_type)
    with pytest.raises(InvalidInputError, match=re.escape(f"hello.txt is {content_type}, not a PNG")) as refused:
        materialise(store, blobs, {"mask_url": file_url(BASE_URL, file_id, "hello.txt")})
    assert refused.value.field == "mask_url" and refused.value.location == "body"


def test_refusals_speak_of_the_image_url_not_of_webhooks(store: Store, blobs: LocalBlobStore) -> None:
    for url in ("http://user:secret@example.com/a.png", "http://example.com:99999/a.png", "gopher://x/a.png"):
        with pytest.raises(InvalidInputError) as refused:
            materialise(store, blobs, {"image_url": url})
        message = str(refused.value)
        assert "webhook URL" not in message and "the webhook" not in message, message
        assert refused.value.field == "image_url"


def test_absent_and_null_fields_are_left_alone(store: Store, blobs: LocalBlobStore) -> None:
    assert materialise(store, blobs, {"prompt": "x", "mask_url": None}) == {"prompt": "x", "mask_url": None}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "got an empty string"),
        ("   ", "got an empty string"),
        (42, "got int"),
        ("ftp://example.com/a.png", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("JaVaScRiPt:alert(1)", "scheme 'javascript'"),
        ("//example.com/a.png", "must be an http"),
        ("cat.png", "must be an http"),
        ("https://example.com/" + "a" * 3000, "longer than 2048"),
        ("http://user:secret@example.com/a.png", "credentials"),
        ("http://10.0.0.8/a.png", "non-public address"),
        ("http://127.0.0.1:9/a.png", "non-public address"),
        ("http://[::ffff:127.0.0.1]/a.png", "non-public address"),
        ("http://example.com:99999/a.png", "image URL refused"),
        ("data:text/html,<script>alert(1)</script>", "not accepted"),
        ("data:image/png;base64,iVBORw0KGgoAAAAN", "not a readable image/png"),
        ("data:image/png;base64,@@@", "invalid base64"),
    ],
)
def test_anything_else_is_refused_naming_the_field(
    store: Store, blobs: LocalBlobStore, value: object, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message) as refused:
        materialise(store, blobs, {"mask_url": value})
    assert refused.value.field == "mask_url" and refused.value.location == "body"


def test_size_and_pixel_limits_hold_for_data_uris(store: Store, blobs: LocalBlobStore) -> None:
    data = encode(Image.new("L", (64, 64)))
    with pytest.raises(InvalidInputError, match="64×64 pixels") as refused:
        materialise(store, blobs, {"image_url": data_uri(data)}, max_pixels=64 * 63)
    assert refused.value.field == "image_url"
    with pytest.raises(InvalidInputError, match="larger than"):
        materialise(store, blobs, {"image_url": data_uri(data)}, max_bytes=len(data) - 1)


def test_an_upload_that_was_never_written_is_refused(store: Store, blobs: LocalBlobStore) -> None:
    file_id = add_file(store, blobs, b"", name="later.png", ready=False)
    with pytest.raises(InvalidInputError, match="not been uploaded yet"):
        materialise(store, blobs, {"image_url": file_url(BASE_URL, file_id, "later.png")})
    with pytest.raises(InvalidInputError, match="not a file of this server"):
        read(store, blobs, file_url(BASE_URL, file_id, "later.png"))


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "data:image/png;base64,iVBORw0KGgo=",
        f"{BASE_URL}/files/{'x' * 24}/cat.png",  # no such file
        "",
    ],
)
def test_workers_read_only_own_files(store: Store, blobs: LocalBlobStore, url: str) -> None:
    with pytest.raises(InvalidInputError, match="not a file of this server"):
        read_image_input(url, files=StoredFiles(blobs, store.files), field="image_url")


def test_an_own_url_with_another_name_is_not_that_file(store: Store, blobs: LocalBlobStore) -> None:
    file_id = add_file(store, blobs, encode(Image.new("RGB", (1, 1))))
    with pytest.raises(InvalidInputError, match="not a file of this server"):
        read(store, blobs, file_url(BASE_URL, file_id, "dog.png"))


def test_every_mode_becomes_straight_rgba() -> None:
    rgb = Image.new("RGB", (2, 1), (9, 8, 7))
    assert decode_rgba(encode(rgb)).tolist() == [[[9, 8, 7, 255], [9, 8, 7, 255]]]
    assert decode_rgba(encode(rgb, "JPEG", quality=100)).shape == (1, 2, 4)
    assert decode_rgba(encode(Image.new("LA", (1, 1), (100, 50)))).tolist() == [[[100, 100, 100, 50]]]
    assert decode_rgba(encode(Image.new("RGBA", (1, 1), (1, 2, 3, 4)), "WEBP", lossless=True)).tolist() == [
        [[1, 2, 3, 4]]
    ]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    assert decode_rgba(encode(palette, transparency=1)).tolist() == [[[255, 0, 0, 255], [0, 0, 255, 0]]]

    grey = Image.new("L", (2, 1), 200)
    grey.putpixel((0, 0), 7)
    assert decode_rgba(encode(grey, transparency=200)).tolist() == [[[7, 7, 7, 255], [200, 200, 200, 0]]]


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    grey = np.array([[0, 0x8040, 0xFFFF]], dtype=np.uint16)
    expected_grey = [[[v, v, v, 255] for v in (0, 128, 255)]]
    assert decode_rgba(encode(Image.fromarray(grey))).tolist() == expected_grey
    assert decode_rgba(png16(grey, colour_type=0)).tolist() == expected_grey
    grey_alpha = np.array([[[0xFFFF, 0x8040]]], dtype=np.uint16)
    assert decode_rgba(png16(grey_alpha, colour_type=4)).tolist() == [[[255, 255, 255, 128]]]
    colour = np.array([[[0xFFFF, 0x8040, 0]]], dtype=np.uint16)
    assert decode_rgba(png16(colour, colour_type=2)).tolist() == [[[255, 128, 0, 255]]]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (2, 1), (255, 0, 0))
    image.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    upright = decode_rgba(encode(image, exif=exif))
    assert upright.shape == (2, 1, 4)
    assert upright[:, 0].tolist() == [[255, 0, 0, 255], [0, 0, 255, 255]]


def test_the_policy_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        webhook_allowed_networks=["10.0.0.0/8"],
        max_upload_bytes=1000,
        max_upload_pixels=500,
        image_input_timeout_seconds=3,
    )
    policy = ImageInputPolicy.from_settings(settings)
    assert [str(network) for network in policy.allowed_networks] == ["10.0.0.0/8"]
    assert (policy.max_bytes, policy.max_pixels, policy.timeout_seconds) == (1000, 500, 3.0)
    assert Settings(home=tmp_path).image_input_timeout_seconds == 20.0


def wide_png(width: int = 65536, height: int = 1) -> bytes:
    """142 bytes that decode to a 65536×1 strip: few pixels, one very long side."""
    return encode(Image.new("RGBA", (width, height)))


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((65536, 1), "sides of at most 16,384 pixels"),
        ((1, 65536), "sides of at most 16,384 pixels"),
        ((4096, 128), "32:1; this server accepts aspect ratios of at most 16:1"),
    ],
)
def test_long_sides_and_elongated_images_are_refused_at_admission(
    store: Store, blobs: LocalBlobStore, size: tuple[int, int], message: str
) -> None:
    data = wide_png(*size)
    with pytest.raises(InvalidInputError, match=message) as refused:
        materialise(store, blobs, {"mask_url": data_uri(data)})
    assert refused.value.field == "mask_url"
    file_id = add_file(store, blobs, data, name="strip.png")
    own = file_url(BASE_URL, file_id, "strip.png")
    with pytest.raises(InvalidInputError, match=message):  # an upload is checked when a request names it
        materialise(store, blobs, {"image_url": own})
    with pytest.raises(InvalidInputError, match=message):  # and by the worker, whatever admitted it
        read(store, blobs, own)


def test_a_sixteen_to_one_panorama_is_accepted(store: Store, blobs: LocalBlobStore) -> None:
    stored = materialise(store, blobs, {"image_url": data_uri(wide_png(1024, 64))})
    assert read(store, blobs, stored["image_url"]).shape == (64, 1024, 4)


def test_side_and_aspect_limits_follow_the_settings(tmp_path: Path) -> None:
    policy = ImageInputPolicy.from_settings(
        Settings(home=tmp_path, image_input_max_side=4096, image_input_max_aspect_ratio=4)
    )
    assert (policy.max_side, policy.max_aspect_ratio) == (4096, 4.0)
    assert ImageInputPolicy.from_settings(Settings(home=tmp_path)).max_side == 16384
