"""Telling, without waiting for a lease to run out, that a worker on this very machine has died.

After a crash the embedded server restarts within seconds; its previous worker's requests would
otherwise wait a whole lease. A worker records the scope its pid means something in (the kernel's
boot id and its pid namespace); a process of the same scope whose pid no longer runs is dead. Any
doubt (another scope, an unknown one, a pid that runs — even if reused) leaves the lease to expire.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


@cache
def process_scope() -> str | None:
    """``boot id:pid namespace`` of this process, or None where Linux does not tell."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot_id}:{namespace}"


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True
