"""Real ``layerdiffuse serve`` processes on 127.0.0.1 (``--model tiny``; ``demo`` for the README's
promises), and the plumbing that lets the official clients reach them unmodified: env-var hosts +
the server's local CA for ``fal_client``, a CONNECT proxy for its hard-coded storage hosts,
``proxyUrl`` for ``@fal-ai/client``."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from layerdiffuse_server.settings import Settings

from ..server_process import ServerProcess, running_server, server_env

HERE = Path(__file__).parent
JS_DIR = HERE / "js"


@pytest.fixture(scope="session")
def server(settings: Settings, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("server") / "data", server_env(settings)) as process:
        yield process


@pytest.fixture(scope="session")
def api_key(server: ServerProcess) -> str:
    return server.create_key("client")


@pytest.fixture(scope="session")
def demo_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``serve --model demo``: the README's first command, with the model that ships in the package."""
    with running_server(tmp_path_factory.mktemp("demo-server") / "data", server_env(settings), model="demo") as process:
        yield process


@pytest.fixture(scope="session")
def demo_key(demo_server: ServerProcess) -> str:
    return demo_server.create_key("client")


class _ConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    target_port: int


class _ConnectHandler(socketserver.BaseRequestHandler):
    """``CONNECT host:443`` → a tunnel to the server's TLS port: fal's host names, resolved to us."""

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        if not head.startswith(b"CONNECT "):
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        upstream = socket.create_connection(("127.0.0.1", self.server.target_port))  # type: ignore[attr-defined]
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        sockets = [self.request, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.request else self.request).sendall(data)
        finally:
            upstream.close()


@pytest.fixture(scope="session")
def connect_proxy(server: ServerProcess) -> Iterator[str]:
    proxy = _ConnectProxy(("127.0.0.1", 0), _ConnectHandler)
    proxy.target_port = server.tls_port
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}"
    proxy.shutdown()


def python_client_env(server: ServerProcess, key: str | None, *, via_proxy: str | None = None) -> dict[str, str]:
    return fal_client_env(server.ca_file, server.tls_port, key, via_proxy=via_proxy)


def fal_client_env(ca_file: Path, tls_port: int, key: str | None, *, via_proxy: str | None = None) -> dict[str, str]:
    """The environment that points an unmodified ``fal_client`` at a server on 127.0.0.1:``tls_port``
    whose certificate ``ca_file`` signs (a process here, or a container's published port)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FAL_") and "PROXY" not in name}
    env["SSL_CERT_FILE"] = str(ca_file)
    if key is not None:
        env["FAL_KEY"] = key
    if via_proxy:
        env["HTTPS_PROXY"] = via_proxy  # every https call, rest.fal.ai and v3.fal.media included, comes to us
    else:
        env["FAL_RUN_HOST"] = f"127.0.0.1:{tls_port}/run"
        env["FAL_QUEUE_RUN_HOST"] = f"127.0.0.1:{tls_port}/queue"
    return env


def run_python(scenario: str, args: dict[str, Any], env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "python_scenario.py"), scenario, json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def node() -> str:
    executable = shutil.which("node")
    if executable is None or not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        pytest.fail("node and tests/conformance/js/node_modules are needed: run ./scripts/setup (it runs npm ci)")
    return executable


def run_js(
    node: str, server: ServerProcess, key: str, scenario: str, args: dict[str, Any], timeout: float = 300
) -> dict:
    done = subprocess.run(
        [node, str(JS_DIR / "scenario.mjs"), scenario, f"{server.http_url}/api/fal/proxy", key, json.dumps(args)],
        capture_output=True, text=True, timeout=timeout, cwd=JS_DIR,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class WebhookSink:
    url: str
    received: list[tuple[dict[str, str], bytes]]
    fail_first: int

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {len(self.received)} webhooks arrived"
            time.sleep(0.05)
        return self.received


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    """Answers the first delivery with 500 (to exercise retries), then records and accepts."""
    attempts: list[int] = []
    sink = WebhookSink(url="", received=[], fail_first=1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            attempts.append(1)
            if len(attempts) <= sink.fail_first:
                self.send_response(500)
            else:
                sink.received.append(({name: value for name, value in self.headers.items()}, body))
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/fal"
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield sink
    receiver.shutdown()
