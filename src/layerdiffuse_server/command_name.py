"""How to type the ``layerdiffuse`` command on this host, for messages that tell the user to run it.

``./scripts/setup`` installs it in the checkout's ``.venv/bin``, which is not on ``PATH``; pip in an
activated environment, a container or a user install puts it where ``PATH`` finds it. Messages name
the command that works: ``layerdiffuse`` where ``PATH`` finds this installation's, else its path
(relative to the working directory when it lies under it, as ``.venv/bin/layerdiffuse`` does).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

NAME = "layerdiffuse"


@functools.cache
def command_name() -> str:
    """``layerdiffuse``, or the path it must be called by (``.venv/bin/layerdiffuse``)."""
    script = Path(sys.executable).parent / NAME  # pip puts console scripts beside the interpreter
    if not script.is_file():
        return NAME
    found = shutil.which(NAME)
    if found and os.path.samefile(found, script):
        return NAME
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def command(arguments: str) -> str:
    """A command line to suggest: ``command("keys create")`` → ``.venv/bin/layerdiffuse keys create``."""
    return f"{command_name()} {arguments}"
