"""External image URLs fetched from a real HTTP server on 127.0.0.1: through the webhook guard (loopback
is refused unless allowed), pinned to the checked address with the URL's Host header, no redirects,
the size limit enforced while streaming, one deadline for the whole exchange, the content checked."""

from __future__ import annotations

import gzip
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.files import LocalBlobStore, StoredFiles
from layerdiffuse_server.files.image_inputs import ImageInputPolicy, read_image_input, store_image_inputs
from layerdiffuse_server.outbound import parse_networks
from layerdiffuse_server.store import Store

BASE_URL = "https://api.example"
LOOPBACK = ImageInputPolicy(allowed_networks=parse_networks(["127.0.0.1/32"]), max_bytes=200_000, timeout_seconds=2)


def png(size: tuple[int, int] = (5, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, (200, 40, 40, 128)).save(buffer, "PNG")
    return buffer.getvalue()


class Origin:
    """What the test server saw: requests by path with their Host header, and how endless bodies ended."""

    def __init__(self) -> None:
        self.hosts: dict[str, str] = {}
        self.cut_off = threading.Event()
        self.sent = 0


def make_handler(origin: Origin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            origin.hosts[self.path] = self.headers["Host"]
            getattr(self, "answer_" + self.path.strip("/").split(".")[0].replace("-", "_"))()

        def send(self, status: int, body: bytes, content_type: str | None = "image/png", **headers: str) -> None:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", headers.pop("length", str(len(body))))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def answer_cat(self) -> None:
            self.send(200, png())

        def answer_untyped(self) -> None:
            self.send(200, png(), "binary/octet-stream")

        def answer_page(self) -> None:
            self.send(200, b"<script>alert(1)</script>", "text/html")

        def answer_fake(self) -> None:
            self.send(200, png()[:40] + b"garbage" * 10)

        def answer_wide(self) -> None:
            self.send(200, png((600, 600)))

        def answer_gzipped(self) -> None:
            """Compressed whatever the client asked for (it asks for identity)."""
            origin.hosts["accept-encoding"] = self.headers["Accept-Encoding"]
            self.send(200, gzip.compress(png()), Content_Encoding="gzip")

        def answer_gzip_bomb(self) -> None:
            """A kilobyte or so on the wire, far beyond the size limit once decoded."""
            self.send(200, gzip.compress(b"\0" * 10**6), Content_Encoding="gzip")

        def answer_missing(self) -> None:
            self.send(404, b"no", "text/plain")

        def answer_moved(self) -> None:
            self.send(302, b"", None, Location="/cat.png")

        def answer_declared_huge(self) -> None:
            self.send(200, png(), length=str(10**9))

        def answer_endless(self) -> None:
            """No length: the body ends when the connection does; stops only when the reader goes away."""
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = png() + b"\0" * 65536
            try:
                while origin.sent < 1 << 30:
                    self.wfile.write(chunk)
                    origin.sent += len(chunk)
            except OSError:
                origin.cut_off.set()

        def answer_trickle(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for byte in png():
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                origin.cut_off.set()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def origin() -> Iterator[tuple[str, Origin]]:
    """The base URL of a real HTTP server on 127.0.0.1, and what it saw."""
    seen = Origin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(seen))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "files")


def materialise(store: Store, blobs: LocalBlobStore, url: str, policy: ImageInputPolicy = LOOPBACK) -> dict[str, Any]:
    return store_image_inputs(
        {"image_url": url},
        ["image_url"],
        files=StoredFiles(blobs, store.files),
        base_url=BASE_URL,
        key_id="key-1",
        policy=policy,
        expires_at=None,
    )


def refusal(store: Store, blobs: LocalBlobStore, url: str, policy: ImageInputPolicy = LOOPBACK) -> str:
    with pytest.raises(InvalidInputError) as refused:
        materialise(store, blobs, url, policy)
    assert refused.value.field == "image_url"
    return str(refused.value)


def test_an_allowed_url_is_fetched_at_the_checked_address_and_stored(
    store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]
) -> None:
    base, seen = origin
    port = base.rsplit(":", 1)[1]
    stored = materialise(store, blobs, f"http://localhost:{port}/cat.png")
    assert seen.hosts["/cat.png"] == f"localhost:{port}"  # connected to 127.0.0.1, named as the URL does
    assert stored["image_url"].startswith(f"{BASE_URL}/files/") and stored["image_url"].endswith("/cat.png")
    pixels = read_image_input(stored["image_url"], files=StoredFiles(blobs, store.files))
    assert pixels.shape == (3, 5, 4) and (pixels == np.array([200, 40, 40, 128], dtype=np.uint8)).all()


def test_an_untyped_image_is_recognised_by_its_bytes(
    store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]
) -> None:
    stored = materialise(store, blobs, f"{origin[0]}/untyped")
    file_id = stored["image_url"].split("/")[-2]
    record = store.files.get(file_id)
    assert record is not None and record.content_type == "image/png" and record.file_name == "input.png"


def test_loopback_is_refused_unless_allowed(store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]) -> None:
    base, seen = origin
    message = refusal(store, blobs, f"{base}/cat.png", ImageInputPolicy())
    assert "image URL refused" in message and "non-public address 127.0.0.1" in message
    assert seen.hosts == {}  # not even asked


def test_a_redirect_is_not_followed(store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]) -> None:
    base, seen = origin
    assert "redirect (HTTP 302)" in refusal(store, blobs, f"{base}/moved")
    assert list(seen.hosts) == ["/moved"]


def test_an_oversized_body_is_refused_while_it_streams(
    store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]
) -> None:
    base, seen = origin
    started = time.monotonic()
    assert "larger than 200,000 bytes" in refusal(store, blobs, f"{base}/endless")
    assert seen.cut_off.wait(5), "the server should have found the connection closed"
    assert seen.sent < 64 * 2**20 and time.monotonic() - started < 5
    assert "larger than 200,000 bytes" in refusal(store, blobs, f"{base}/declared-huge")


def test_one_deadline_covers_the_whole_exchange(
    store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]
) -> None:
    started = time.monotonic()
    message = refusal(
        store, blobs, f"{origin[0]}/trickle", ImageInputPolicy(LOOPBACK.allowed_networks, 10**6, 10**6, 0.5)
    )
    assert "did not arrive within 0.5 s" in message
    assert time.monotonic() - started < 1.5  # each byte came well within any per-read timeout


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/page", "'text/html' is not accepted"),
        ("/fake.png", "not a readable image/png"),
        ("/wide.png", "600×600 pixels"),
        ("/missing.png", "failed with HTTP 404"),
    ],
)
def test_what_is_not_an_acceptable_image_is_refused(
    store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin], path: str, message: str
) -> None:
    policy = ImageInputPolicy(LOOPBACK.allowed_networks, 10**6, 500 * 500, 2)
    assert message in refusal(store, blobs, origin[0] + path, policy)


def test_a_closed_port_is_an_input_error(store: Store, blobs: LocalBlobStore) -> None:
    assert "could not fetch" in refusal(store, blobs, "http://127.0.0.1:9/cat.png")


def test_encoded_answers_are_refused_not_decoded(
    store: Store, blobs: LocalBlobStore, origin: tuple[str, Origin]
) -> None:
    base, seen = origin
    message = refusal(store, blobs, f"{base}/gzipped")
    assert seen.hosts["accept-encoding"] == "identity"
    assert "Content-Encoding 'gzip'" in message and "identity" in message
    assert "Content-Encoding 'gzip'" in refusal(store, blobs, f"{base}/gzip-bomb")
