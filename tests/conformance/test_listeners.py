"""A process that cannot listen where it is told to ends at once, before loading a model, with
status 1 and the address in its message — for each listener of each role."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerdiffuse_server.settings import Settings

from ..server_process import ServerProcess, cli, free_port, server_env

pytestmark = pytest.mark.conformance

#: Starting Python and the CLI on a busy machine, then failing: far below a model's load time.
EXIT_BOUND_SECONDS = 20.0


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process holds (listening, as a previous server still exiting would)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("role", "listener"), [("serve", "port"), ("serve", "tls_port"), ("api", "port"), ("worker", "port")]
)
def test_a_taken_port_ends_the_process_at_once(
    role: str, listener: str, taken_port: int, settings: Settings, tiny_folder: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "signing-key.pem"
    env = server_env(settings, LAYERDIFFUSE_SIGNING_KEY_FILE=str(key_file))
    assert cli("signing-key", str(key_file), env=env).returncode == 0
    process = ServerProcess(tmp_path / "data", env, role=role, **{listener: taken_port})
    started = time.monotonic()
    process.start(wait=False)
    assert process.process is not None
    try:
        status = process.process.wait(EXIT_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{role} still running with its port taken:\n{process.log()}") from None
    seconds = time.monotonic() - started
    log = process.log()
    assert status == 1, log
    assert f"127.0.0.1:{taken_port}" in log and "address already in use" in log.lower(), log
    assert "Traceback" not in log and " ready on " not in log, log  # no model was loaded
    print(f"{role} ({listener} taken) exited {status} after {seconds:.1f} s")
