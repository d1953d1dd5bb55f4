"""``generate --lora PATH[:SCALE]``: style LoRAs from the command line.

On the command line a LoRA is most often a file on this machine, which a request may never name
(requests name URLs, hub files and the operator's folder; see :mod:`..loras.paths`). So each local
file is given to the request under a name of its own, and the resolver the pipeline reads LoRAs
through answers those names with the files; every other path is found as a worker finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..settings import Settings
from .console import fail

LOCAL_NAME = "local-lora-{index}"


def split_scale(value: str) -> tuple[str, float]:
    """``PATH[:SCALE]``: the scale is what follows the last colon when it is a number (URLs have colons)."""
    path, colon, scale = value.rpartition(":")
    if colon and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return value, 1.0


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def command_line_loras(values: list[str], settings: Settings) -> tuple[list[dict[str, Any]], Callable[[str], Path]]:
    """The request's ``loras`` for the ``--lora`` values, and the resolver that finds their files.

    Raises:
        typer.Exit: status 2 when a local file is missing or is no safetensors file.
    """
    from ..loras.sources import LoraSources

    loras: list[dict[str, Any]] = []
    local: dict[str, Path] = {}
    for value in values:
        path, scale = split_scale(value)
        if _looks_local(path):
            file = Path(path).expanduser()
            if not file.is_file():
                raise fail(f"--lora: no such LoRA file: {path}", 2)
            if file.suffix.lower() != ".safetensors":
                raise fail(f"--lora: {path} is not a .safetensors file (pickled weights are never loaded)", 2)
            path = LOCAL_NAME.format(index=len(local))
            local[path] = file
        loras.append({"path": path, "scale": scale})
    sources = LoraSources.from_settings(settings, files=None)

    def resolve(path: str) -> Path:
        return local[path] if path in local else sources.resolve(path)

    return loras, resolve
