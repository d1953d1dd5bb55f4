"""The process's own story: uvicorn's start and finish lines once, in order, with two listeners;
``layerdiffuse status`` without a separator left dangling at a line's end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rich.console import Console

from layerdiffuse_server.observability.status import StatusReport, render_status

SERVE_AND_STOP = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from fastapi import FastAPI
    from layerdiffuse_server.observability import configure_logging
    from layerdiffuse_server.server.listeners import bind
    from layerdiffuse_server.server.serve import serve_app
    from layerdiffuse_server.server.tls import local_tls

    configure_logging("text", "info")
    asked = []

    def readiness():
        if not asked:
            asked.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return "ready"

    serve_app(FastAPI(), http=bind("127.0.0.1", 0, "HTTP"), https=bind("127.0.0.1", 0, "HTTPS"),
              tls=local_tls(Path(sys.argv[1]), []), log_level="info", grace_seconds=0, on_stop=lambda: None,
              readiness=readiness)
    """
)


def test_uvicorn_tells_the_process_story_once_in_order(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_STOP, str(tmp_path / "tls")],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split("uvicorn.error: ", 1)[1] for line in done.stderr.splitlines() if "uvicorn.error: " in line]
    story = [line.split(" [")[0].split(" on ")[0] for line in lines]
    assert story == [
        "Started server process",
        "Waiting for application startup.",
        "Application startup complete.",
        "Shutting down",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
        "Finished server process",
    ], done.stderr
    # Both listeners by the bound sockets' own addresses, once, before the readiness line.
    listening = [line for line in done.stderr.splitlines() if "Listening on " in line]
    assert len(listening) == 1, done.stderr
    assert "http://127.0.0.1:" in listening[0] and "https://127.0.0.1:" in listening[0]
    assert done.stderr.index("Listening on ") < done.stderr.index("server: ready")


def test_status_leaves_no_separator_at_a_line_end() -> None:
    report = StatusReport(
        database="postgresql://layerdiffuse@db.internal.example.com:5432/layerdiffuse_production",
        files="s3://a-bucket-with-a-long-name/and/a/long/prefix/for/the/files",
        queued={"normal": 0, "low": 0},
        running=[],
        workers=[],
        completed_last_hour={},
        generated_at=0.0,
    )
    for width in (40, 60, 80, 120):
        console = Console(width=width, record=True, color_system=None)
        render_status(report, console)
        text = console.export_text()
        assert not [line for line in text.splitlines() if line.rstrip().endswith("·")], text
        assert report.database in text.replace("\n", "") and report.files in text.replace("\n", "")
