"""Real service processes on 127.0.0.1 for the suites that need them: the embedded ``serve``, an
``api`` node, a ``worker``. Each can be started, stopped (SIGTERM) and killed (SIGKILL) again and
again on the same data directory.

No process outlives its test: each runs in a process group of its own, is registered while it
runs, and is ended with its group when its start fails, when a stop is interrupted (Ctrl-C) and,
as a backstop, at the end of the test session and at interpreter exit (:func:`end_all`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from layerdiffuse_server.settings import Settings

FAL_HOSTS = ("fal.run", "queue.fal.run", "rest.fal.ai", "v3.fal.media")
#: What an API host without torch looks like to Python: these imports fail.
ENGINE_MODULES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub")
WITHOUT_ENGINE = (
    "import sys\n"
    f"for name in {ENGINE_MODULES!r}:\n"
    "    sys.modules[name] = None\n"
    "from layerdiffuse_server.cli import main\n"
    "main()\n"
)


#: The processes started and not yet seen to exit.
RUNNING: set[ServerProcess] = set()


def end_group(process: subprocess.Popen[str], grace: float = 5.0) -> None:
    """End ``process`` and everything in its process group: SIGTERM, then SIGKILL after ``grace``."""
    for number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, number)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the leader left behind
        return


def end_all() -> None:
    """End every process still running (the session's last teardown, and at interpreter exit)."""
    for server in list(RUNNING):
        if server.process is not None:
            end_group(server.process)
        RUNNING.discard(server)


atexit.register(end_all)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerdiffuse_server", *args], env=env, capture_output=True, text=True, timeout=120
    )


@dataclass(eq=False)
class ServerProcess:
    """One process of the service. ``role`` is serve (API + worker), api or worker."""

    data_dir: Path
    env: dict[str, str]
    role: str = "serve"
    without_engine: bool = False  # run as on a host where torch and diffusers cannot be imported
    model: str = "tiny"
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def create_key(self, name: str, *, admin: bool = False) -> str:
        done = cli(
            "keys",
            "create",
            "--name",
            name,
            *(["--admin"] if admin else []),
            "--data-dir",
            str(self.data_dir),
            env=self.env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def command(self) -> list[str]:
        common = ["--data-dir", str(self.data_dir), *self.extra_args]
        if self.role == "worker":
            arguments = ["worker", "--model", self.model, "--device", "cpu", "--port", str(self.port), *common]
        else:
            arguments = [
                self.role, "--port", str(self.port), "--tls-port", str(self.tls_port),
                "--webhook-allow-network", "127.0.0.1/32",
                *[argument for host in FAL_HOSTS for argument in ("--tls-name", host)], *common,
            ]  # fmt: skip
            if self.role == "serve":
                arguments += ["--model", self.model, "--device", "cpu"]
        if self.without_engine:
            return [sys.executable, "-c", WITHOUT_ENGINE, *arguments]
        return [sys.executable, "-m", "layerdiffuse_server", *arguments]

    def start(self, timeout: float = 180, *, wait: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.role}-{self.port}-{time.monotonic_ns()}.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                process_group=0,  # the terminal's Ctrl-C reaches the tests, which end it (see end_all)
            )
        RUNNING.add(self)
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.end()
                raise

    def end(self) -> None:
        """End the process and its group now (SIGTERM, SIGKILL after 5 s)."""
        if self.process is not None:
            end_group(self.process)
        RUNNING.discard(self)

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.role} exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.role} not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM, then wait; returns the seconds the process took to exit (SIGKILL after ``timeout``)."""
        started = time.monotonic()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                end_group(self.process, grace=0)
            except BaseException:  # the wait was interrupted (Ctrl-C): the process goes with it
                end_group(self.process, grace=0)
                RUNNING.discard(self)
                raise
        RUNNING.discard(self)
        return time.monotonic() - started

    def kill(self) -> None:
        """Die like a crash: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        RUNNING.discard(self)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@contextlib.contextmanager
def running_server(data_dir: Path, env: dict[str, str], **options: Any) -> Iterator[ServerProcess]:
    """A ``serve`` process, started and stopped around the block. A key exists before it starts,
    so the server creates (and prints) no admin key of its own."""
    process = ServerProcess(data_dir, env, **options)
    process.create_key("bootstrap")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def server_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("FAL_", "LAYERDIFFUSE_"))}
    env |= {
        "LAYERDIFFUSE_HOME": str(settings.home),
        "HF_HUB_OFFLINE": "1",
        "LAYERDIFFUSE_WEBHOOK_RETRY_SECONDS": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    return env | overrides
