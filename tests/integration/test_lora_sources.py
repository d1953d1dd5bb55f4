"""LoRA paths resolved to local safetensors files, from real sources: a real HTTP server on 127.0.0.1
(under the outbound guard, with a size limit, fetched once), this server's own files (SQLite and
local blobs), the hub cache offline, and the operator's LoRA folder."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest
from huggingface_hub import constants

from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.files import LocalBlobStore, StoredFiles, file_url, open_blob_store
from layerdiffuse_server.loras.cache import LoraCache
from layerdiffuse_server.loras.fetch import LoraFetchPolicy
from layerdiffuse_server.loras.sources import LoraSources
from layerdiffuse_server.outbound import parse_networks
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store import Store

from ..support.loras import PICKLE_BYTES, lora_bytes

LOOPBACK = parse_networks(["127.0.0.1/32"])
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LORA = lora_bytes()
PICKLE = PICKLE_BYTES


class Origin:
    """A real HTTP server's answers by path, and how often each path was asked for."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hits: dict[str, int] = {}
        self.endless: dict[str, bytes] = {}  # paths whose body repeats until the reader goes away
        self.cut_off = threading.Event()
        self.base = ""


@pytest.fixture
def origin() -> Iterator[Origin]:
    seen = Origin()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.hits[self.path] = seen.hits.get(self.path, 0) + 1
            if self.path in seen.endless:
                self.stream_forever(seen.endless[self.path])
                return
            status, body, headers = seen.answers.get(self.path, (404, b"no", {}))
            self.send_response(status)
            self.send_header("Content-Length", headers.pop("Content-Length", str(len(body))))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # the hub library asks for a file's size and commit first
            seen.hits[f"HEAD {self.path}"] = seen.hits.get(f"HEAD {self.path}", 0) + 1
            status, body, headers = seen.answers.get(self.path, (404, b"no", {}))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def stream_forever(self, start: bytes) -> None:
            self.send_response(200)
            self.end_headers()
            try:
                self.wfile.write(start)
                for _ in range(1 << 14):  # 16 GiB: far more than any reader takes
                    self.wfile.write(b"\0" * (1 << 20))
            except OSError:
                seen.cut_off.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    seen.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def files(store: Store, tmp_path: Path) -> StoredFiles:
    return StoredFiles(LocalBlobStore(tmp_path / "files"), store.files)


def sources(tmp_path: Path, files: StoredFiles | None = None, **policy: object) -> LoraSources:
    limits = {"allowed_networks": LOOPBACK, "max_bytes": 1 << 20, "timeout_seconds": 5.0} | policy
    return LoraSources(
        cache=LoraCache(tmp_path / "cache", 1 << 30),
        policy=LoraFetchPolicy(**limits),  # type: ignore[arg-type]
        files=files,
        folder=tmp_path / "loras",
    )


def refusal(resolver: LoraSources, path: str) -> str:
    with pytest.raises(InvalidInputError) as refused:
        resolver(path)
    assert refused.value.field == "loras" and refused.value.status_code == 422
    return str(refused.value)


# URLs


def test_a_url_is_fetched_once_and_then_read_from_the_cache(origin: Origin, tmp_path: Path) -> None:
    origin.answers["/pixel.safetensors"] = (200, LORA, {"Content-Type": "application/octet-stream"})
    resolver = sources(tmp_path)
    url = f"{origin.base}/pixel.safetensors"
    first = resolver(url)
    assert first.read_bytes() == LORA and first.parent == tmp_path / "cache"
    assert resolver(url) == first
    assert sources(tmp_path)(url) == first  # another resolver (a restarted worker) on the same folder
    assert origin.hits == {"/pixel.safetensors": 1}
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary files left


def test_concurrent_resolves_of_one_url_fetch_it_once_and_agree(origin: Origin, tmp_path: Path) -> None:
    origin.answers["/big.safetensors"] = (200, lora_bytes(rank=64), {})
    resolver = sources(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(resolver, [f"{origin.base}/big.safetensors"] * 8))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == lora_bytes(rank=64)
    assert origin.hits == {"/big.safetensors": 1}


def test_loopback_is_refused_unless_the_operator_allows_it(origin: Origin, tmp_path: Path) -> None:
    origin.answers["/pixel.safetensors"] = (200, LORA, {})
    message = refusal(sources(tmp_path, allowed_networks=()), f"{origin.base}/pixel.safetensors")
    assert "non-public address 127.0.0.1" in message and "LoRA URL" in message
    assert origin.hits == {}  # not even asked


def test_the_size_limit_holds_whether_declared_or_not(origin: Origin, tmp_path: Path) -> None:
    big = lora_bytes(rank=256)
    origin.answers["/declared.safetensors"] = (200, big, {})
    origin.answers["/understated.safetensors"] = (200, big, {"Content-Length": "100"})
    resolver = sources(tmp_path, max_bytes=len(big) - 1)
    assert "larger than" in refusal(resolver, f"{origin.base}/declared.safetensors")
    # A server that says less than it sends: the reader stops at the limit (here, at what was declared).
    assert "not a safetensors file" in refusal(resolver, f"{origin.base}/understated.safetensors")
    assert not list((tmp_path / "cache").glob("*.safetensors"))
    assert sources(tmp_path, max_bytes=len(big))(f"{origin.base}/declared.safetensors").read_bytes() == big


def test_redirects_are_followed_each_hop_under_the_guard(origin: Origin, tmp_path: Path) -> None:
    origin.answers["/resolve/main/pixel.safetensors"] = (302, b"", {"Location": "/cdn/pixel"})
    origin.answers["/cdn/pixel"] = (200, LORA, {})
    origin.answers["/away"] = (302, b"", {"Location": "http://10.0.0.1/secret.safetensors"})
    origin.answers["/loop"] = (302, b"", {"Location": "/loop"})
    resolver = sources(tmp_path)
    assert resolver(f"{origin.base}/resolve/main/pixel.safetensors").read_bytes() == LORA
    assert "non-public address 10.0.0.1" in refusal(resolver, f"{origin.base}/away")
    assert "redirected more than 5 times" in refusal(resolver, f"{origin.base}/loop")
    assert origin.hits["/loop"] == 6


def test_what_is_not_safetensors_is_refused_and_not_cached(origin: Origin, tmp_path: Path) -> None:
    origin.answers["/model"] = (200, PICKLE, {})
    origin.answers["/page"] = (200, b"<html>" + b" " * 100, {"Content-Type": "text/html"})
    origin.answers["/gone.safetensors"] = (404, b"no", {})
    origin.answers["/gzipped.safetensors"] = (200, LORA, {"Content-Encoding": "gzip"})
    resolver = sources(tmp_path)
    for path in ("/model", "/page"):
        assert "is not a safetensors file" in refusal(resolver, origin.base + path)
    assert "HTTP 404" in refusal(resolver, f"{origin.base}/gone.safetensors")
    assert "Content-Encoding 'gzip'" in refusal(resolver, f"{origin.base}/gzipped.safetensors")
    assert "pickle format" in refusal(resolver, f"{origin.base}/model.ckpt")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_download_that_is_no_safetensors_file_is_cut_off_at_its_first_bytes(origin: Origin, tmp_path: Path) -> None:
    origin.endless["/checkpoint"] = PICKLE
    origin.endless["/endless.safetensors"] = LORA
    resolver = sources(tmp_path, max_bytes=1 << 40, timeout_seconds=3.0)
    started = time.monotonic()
    assert "not a safetensors file" in refusal(resolver, f"{origin.base}/checkpoint")
    assert time.monotonic() - started < 2.5 and origin.cut_off.wait(5)
    # A body that starts right is read, up to the size limit.
    limited = sources(tmp_path, max_bytes=20 << 20, timeout_seconds=30.0)
    assert "larger than 20,971,520 bytes" in refusal(limited, f"{origin.base}/endless.safetensors")


# This server's own files


def test_an_own_file_url_is_read_from_the_store_whatever_host_named_it(
    origin: Origin, files: StoredFiles, tmp_path: Path
) -> None:
    record = files.store(LORA, file_name="style.safetensors", content_type="application/octet-stream",
                         key_id="key-1", expires_at=None)  # fmt: skip
    resolver = sources(tmp_path, files, allowed_networks=())  # nothing may be fetched
    for host in ("https://api.example", "http://10.1.2.3:8080/prefix", origin.base):
        path = resolver(file_url(host, record.id, record.file_name))
        assert path.read_bytes() == LORA
    assert origin.hits == {}
    assert len(list((tmp_path / "cache").iterdir())) == 1  # cached once, by file id


def test_an_own_file_in_an_object_store_resolves(store: Store, s3_bucket: str, tmp_path: Path) -> None:
    files = StoredFiles(open_blob_store(f"s3://{s3_bucket}/files"), store.files)
    record = files.store(LORA, file_name="style.safetensors", content_type="application/octet-stream",
                         key_id="key-1", expires_at=None)  # fmt: skip
    resolver = sources(tmp_path, files, allowed_networks=())
    assert resolver(file_url("https://api.example", record.id, record.file_name)).read_bytes() == LORA


def test_own_files_that_cannot_be_used_are_named(files: StoredFiles, tmp_path: Path) -> None:
    resolver = sources(tmp_path, files, allowed_networks=())
    pending = files.initiate_upload(
        file_name="later.safetensors", content_type="application/octet-stream", key_id="k", writable_until=1e12
    )
    assert "has not been uploaded yet" in refusal(
        resolver, file_url("https://api.example", pending.id, "later.safetensors")
    )
    notes = files.store(b"just text", file_name="notes.safetensors", content_type="text/plain", key_id="k",
                        expires_at=None)  # fmt: skip
    assert "not a safetensors file" in refusal(resolver, file_url("https://api.example", notes.id, notes.file_name))
    big = files.store(lora_bytes(rank=256), file_name="big.safetensors", content_type="application/octet-stream",
                      key_id="k", expires_at=None)  # fmt: skip
    small = sources(tmp_path, files, allowed_networks=(), max_bytes=1000)
    assert "larger than 1,000 bytes" in refusal(small, file_url("https://api.example", big.id, big.file_name))
    files.discard([big.id])
    # Once deleted, the URL is no file of this server: an external URL, which the guard refuses here.
    assert "refused" in refusal(resolver, file_url("http://127.0.0.1:9", big.id, big.file_name))


# The hub


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache laid out as huggingface_hub stores a downloaded repository."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--artist--pixel-loras" / "snapshots" / COMMIT
    (snapshot / "xl").mkdir(parents=True)
    (snapshot / "xl" / "pixel.safetensors").write_bytes(LORA)
    (snapshot / "fake.safetensors").write_bytes(PICKLE)
    (cache / "models--artist--pixel-loras" / "refs").mkdir()
    (cache / "models--artist--pixel-loras" / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_files_come_from_the_cache_offline(hub_cache: Path, tmp_path: Path) -> None:
    resolver = sources(tmp_path)
    path = resolver("artist/pixel-loras/xl/pixel.safetensors")
    assert path.read_bytes() == LORA and path.is_relative_to(hub_cache)
    message = refusal(resolver, "artist/pixel-loras/missing.safetensors")
    assert "'missing.safetensors' of the hub repository 'artist/pixel-loras'" in message
    assert "HF_HUB_OFFLINE" in message and str(hub_cache) in message
    assert "'other/repo'" in refusal(resolver, "other/repo/a.safetensors")
    assert "not a safetensors file" in refusal(resolver, "artist/pixel-loras/fake.safetensors")


def test_hub_files_are_downloaded_online_unless_too_large(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a local endpoint that answers as the hub does (HEAD for size and commit, then GET)."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", origin.base)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", origin.base + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_headers = {"X-Repo-Commit": COMMIT, "ETag": '"0123abcd"'}
    big = lora_bytes(rank=256)
    origin.answers["/artist/online-loras/resolve/main/xl/pixel.safetensors"] = (200, LORA, dict(hub_headers))
    origin.answers["/artist/online-loras/resolve/main/huge.safetensors"] = (200, big, dict(hub_headers))
    resolver = sources(tmp_path, allowed_networks=(), max_bytes=len(big) - 1)  # the hub is no request's URL
    path = resolver("artist/online-loras/xl/pixel.safetensors")
    assert path.read_bytes() == LORA and path.is_relative_to(cache)
    assert "larger than" in refusal(resolver, "artist/online-loras/huge.safetensors")
    assert "/artist/online-loras/resolve/main/huge.safetensors" not in origin.hits  # never downloaded
    message = refusal(resolver, "artist/online-loras/missing.safetensors")
    assert (
        "'missing.safetensors' of the hub repository 'artist/online-loras'" in message and "download failed" in message
    )


def test_with_the_hub_unreachable_the_cache_still_serves(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Port 9 of loopback refuses connections: the hub is away. (A file not in the cache then takes
    the hub library's own retries, about 30 s, before it is refused; not waited for here.)"""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    )
    resolver = sources(tmp_path)
    assert resolver("artist/pixel-loras/xl/pixel.safetensors").read_bytes() == LORA


# The operator's folder


def test_names_are_files_of_the_operators_folder_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "pixel.safetensors").write_bytes(LORA)
    (folder / "renamed.safetensors").write_bytes(PICKLE)
    (tmp_path / "outside.safetensors").write_bytes(LORA)
    resolver = sources(tmp_path)
    assert resolver("pixel") == folder / "pixel.safetensors" == resolver("pixel.safetensors")
    assert "no LoRA named 'watercolor'" in refusal(resolver, "watercolor")
    assert "not a safetensors file" in refusal(resolver, "renamed")
    for escape in ("../outside", "../outside.safetensors", str(tmp_path / "outside.safetensors"), "~/x", ".."):
        assert "local path" in refusal(resolver, escape)
    assert "pickle format" in refusal(resolver, "pixel.ckpt")
    no_folder = LoraSources(cache=LoraCache(tmp_path / "cache", 1 << 30), policy=LoraFetchPolicy())
    assert "LAYERDIFFUSE_LORA_FOLDER" in refusal(no_folder, "pixel")


# The cache's bound


def test_the_least_recently_used_files_go_when_the_cache_is_full(origin: Origin, tmp_path: Path) -> None:
    bodies = {name: lora_bytes(rank=16, seed=seed) for seed, name in enumerate(("a", "b", "c"))}
    for name, body in bodies.items():
        origin.answers[f"/{name}.safetensors"] = (200, body, {})
    size = len(bodies["a"])
    cache = LoraCache(tmp_path / "cache", max_bytes=2 * size)
    resolver = LoraSources(cache=cache, policy=LoraFetchPolicy(allowed_networks=LOOPBACK))
    a = resolver(f"{origin.base}/a.safetensors")
    b = resolver(f"{origin.base}/b.safetensors")
    os.utime(a, (1_000_000, 1_000_000))
    os.utime(b, (2_000_000, 2_000_000))
    assert resolver(f"{origin.base}/a.safetensors") == a  # used again: now the newest
    c = resolver(f"{origin.base}/c.safetensors")
    assert a.exists() and c.exists() and not b.exists()
    resolver(f"{origin.base}/b.safetensors")
    assert origin.hits == {"/a.safetensors": 1, "/b.safetensors": 2, "/c.safetensors": 1}
    assert sum(path.stat().st_size for path in (tmp_path / "cache").iterdir()) <= 2 * size


def test_a_file_larger_than_the_cache_is_still_handed_out(origin: Origin, tmp_path: Path) -> None:
    origin.answers["/a.safetensors"] = (200, LORA, {})
    resolver = LoraSources(
        cache=LoraCache(tmp_path / "cache", max_bytes=10), policy=LoraFetchPolicy(allowed_networks=LOOPBACK)
    )
    assert resolver(f"{origin.base}/a.safetensors").read_bytes() == LORA


# Settings


def test_the_workers_resolver_follows_the_settings(tmp_path: Path, files: StoredFiles) -> None:
    settings = Settings(
        home=tmp_path, data_dir=tmp_path / "data", lora_folder=tmp_path / "loras", max_lora_bytes=1234,
        lora_disk_bytes=5678, webhook_allowed_networks=["127.0.0.1/32"],
    )  # fmt: skip
    resolver = LoraSources.from_settings(settings, files)
    assert resolver.cache.folder == tmp_path / "data" / "loras" and resolver.cache.max_bytes == 5678
    assert resolver.policy.max_bytes == 1234 and resolver.policy.allowed_networks == LOOPBACK
    assert resolver.folder == tmp_path / "loras" and resolver.files is files
    defaults = Settings(home=tmp_path)
    assert defaults.max_lora_bytes == 2 * 2**30 and defaults.lora_folder is None


def test_leftovers_of_a_writer_that_died_are_swept_and_refused_files_leave_none(tmp_path: Path) -> None:
    cache = LoraCache(tmp_path / "cache", max_bytes=1 << 30)
    cache.folder.mkdir()
    abandoned = cache.folder / "0ab.safetensors.123.456.part"
    abandoned.write_bytes(b"half")
    os.utime(abandoned, (1_000_000, 1_000_000))
    in_progress = cache.folder / "0cd.safetensors.123.789.part"
    in_progress.write_bytes(b"being written")

    def refuse(target: BinaryIO) -> None:
        target.write(b"some bytes")
        raise InvalidInputError("refused")

    with pytest.raises(InvalidInputError):
        cache.store("https://example.com/a.safetensors", refuse)
    assert cache.lookup("https://example.com/a.safetensors") is None

    def write_lora(target: BinaryIO) -> None:
        target.write(LORA)

    stored = cache.store("https://example.com/b.safetensors", write_lora)
    assert sorted(path.name for path in cache.folder.iterdir()) == sorted([stored.name, in_progress.name])


def test_a_cache_hit_keeps_the_files_identity(tmp_path: Path) -> None:
    """The engine knows a read LoRA by path, size and modification time: a use must not change them."""
    cache = LoraCache(tmp_path / "cache", 1 << 20)
    stored = cache.store("https://example.com/a.safetensors", lambda target: target.write(b"x" * 64))
    before = stored.stat().st_mtime_ns
    time.sleep(0.01)
    again = cache.lookup("https://example.com/a.safetensors")
    assert again == stored and again.stat().st_mtime_ns == before
