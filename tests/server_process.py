"""A real ``layerdiffuse serve --model tiny`` process on 127.0.0.1, for the suites that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from layerdiffuse_server.settings import Settings

FAL_HOSTS = ("fal.run", "queue.fal.run", "rest.fal.ai", "v3.fal.media")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerdiffuse_server", *args], env=env, capture_output=True, text=True, timeout=120
    )


@dataclass
class ServerProcess:
    """One server; ``start``/``stop``/``kill`` can be repeated on the same data directory."""

    data_dir: Path
    env: dict[str, str]
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

    def start(self, timeout: float = 180) -> None:
        self.log_path = self.data_dir.parent / f"server-{time.monotonic_ns()}.log"
        command = [
            sys.executable, "-m", "layerdiffuse_server", "serve", "--model", "tiny", "--device", "cpu",
            "--port", str(self.port), "--tls-port", str(self.tls_port), "--data-dir", str(self.data_dir),
            "--webhook-allow-network", "127.0.0.1/32",
            *[argument for host in FAL_HOSTS for argument in ("--tls-name", host)],
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Die like a crash: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def server_env(settings: Settings) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("FAL_", "LAYERDIFFUSE_"))}
    env |= {
        "LAYERDIFFUSE_HOME": str(settings.home),
        "HF_HUB_OFFLINE": "1",
        "LAYERDIFFUSE_WEBHOOK_RETRY_SECONDS": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    return env
