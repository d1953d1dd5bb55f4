"""The test helper that starts service processes leaves none behind: not when a start fails, not
when a stop is interrupted (Ctrl-C), not when the interpreter exits with a test in the middle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..server_process import ServerProcess

ROOT = Path(__file__).parents[2]
#: A "service" that never gets ready, ignores SIGTERM and has a child of its own (in its group).
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "time.sleep(600)\n"
)


class Stubborn(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", STUBBORN, str(self.data_dir / "child.pid")]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def started(process: ServerProcess) -> list[int]:
    """The pids of the process and of its child, once the child is running."""
    pid_file = process.data_dir / "child.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the stub never started its child"
        time.sleep(0.05)
    return [process.pid, int(pid_file.read_text())]


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if alive(pid)]}"
        time.sleep(0.05)


def test_a_start_that_fails_ends_the_process_and_its_children(tmp_path: Path) -> None:
    process = Stubborn(tmp_path / "data", dict(os.environ))
    process.data_dir.mkdir(parents=True)
    (process.data_dir / "child.pid").write_text("")
    with pytest.raises(AssertionError, match="not ready"):
        process.start(timeout=10)
    pids = [process.pid, int((process.data_dir / "child.pid").read_text() or 0)]
    assert pids[1], "the stub's child never started"
    assert_gone(pids)


def test_an_interrupted_stop_ends_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    process = Stubborn(tmp_path / "data", dict(os.environ))
    process.start(wait=False)
    pids = started(process)
    assert process.process is not None
    wait = process.process.wait
    calls: list[float | None] = []

    def interrupted(timeout: float | None = None) -> int:
        calls.append(timeout)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the stop waits
        return wait(timeout)

    monkeypatch.setattr(process.process, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process.stop(timeout=60)
    assert_gone(pids)


def test_what_a_run_left_running_ends_with_the_interpreter(tmp_path: Path) -> None:
    """A run cut short (here: KeyboardInterrupt with no teardown at all) still ends its processes."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tests.integration.test_server_process import Stubborn, started\n"
        f"process = Stubborn(Path({str(tmp_path / 'data')!r}), dict(os.environ))\n"
        "process.start(wait=False)\n"
        "print(*started(process), flush=True)\n"
        "raise KeyboardInterrupt\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "KeyboardInterrupt" in done.stderr, done.stderr
    assert_gone([int(pid) for pid in done.stdout.split()])
