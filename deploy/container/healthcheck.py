"""The image's HEALTHCHECK: GET /healthz of whichever role runs in the container.

One image runs three roles, and only the worker listens elsewhere (its health port), so the role
is read from the running ``layerdiffuse`` process's command line rather than fixed at build time.
Ports come from the same ``LAYERDIFFUSE_*`` variables the roles read; set them there, not as flags.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

ROLES = ("serve", "api", "worker")


def running_role() -> str:
    """The role of the oldest ``layerdiffuse`` process (PID 1 unless an init runs first), not that of
    a command run beside it (``podman exec … layerdiffuse keys create``); ``serve`` when none is found."""
    processes = sorted(Path("/proc").glob("[0-9]*/cmdline"), key=lambda path: int(path.parent.name))
    for cmdline in processes:
        try:
            words = [word.decode(errors="replace") for word in cmdline.read_bytes().split(b"\0") if word]
        except OSError:
            continue
        for index, word in enumerate(words[:-1]):
            if Path(word).name == "layerdiffuse" and words[index + 1] in ROLES:
                return words[index + 1]
    return "serve"


def main() -> int:
    if running_role() == "worker":
        port = int(os.environ.get("LAYERDIFFUSE_WORKER_PORT", "9090"))
        if port == 0:  # no health port: the process being up is all there is to check
            return 0
    else:
        port = int(os.environ.get("LAYERDIFFUSE_PORT", "8080"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as error:
        print(f"http://127.0.0.1:{port}/healthz: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
