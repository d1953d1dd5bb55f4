"""CPU threads that keep working on a busy machine.

torch's CPU kernels run on OpenMP threads, and the OpenMP runtime torch ships (GNU libgomp) lets a
thread that waits for the others spin for a while before it sleeps. On cores that another process
competes for, the spinning threads take the time slices the working ones need: the demo model's 20
steps at 128² took 120 s instead of 2 s on 2 cores beside one other busy process. With the passive
wait policy waiting threads sleep at once, which costs nothing measurable on an idle machine (see
the README's CPU figures).

The runtime reads its policy once, when torch is loaded, so :func:`prepare_environment` must run
before anything imports torch: the command's entry point and the engine package call it first.
A user's own ``OMP_WAIT_POLICY`` (or ``GOMP_SPINCOUNT``) wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"


def prepare_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ask OpenMP for sleeping, not spinning, waits, unless the user already chose (before torch loads)."""
    if WAIT_POLICY not in environ and "GOMP_SPINCOUNT" not in environ:
        environ[WAIT_POLICY] = "PASSIVE"


def describe_threads(threads: int, environ: Mapping[str, str] = os.environ) -> str:
    """How the CPU work runs, for log lines: ``2 CPU threads, passive waits``."""
    policy = environ.get(WAIT_POLICY, "").lower() or "default"
    return f"{threads} CPU thread{'' if threads == 1 else 's'}, {policy} waits"
