"""Partial images: what the engine shows of an image while it denoises, carried from a worker to
the API nodes the way log lines are — each stored as a short-lived file, then named by a line of
the request's log (the store keeps it, its notice wakes the API's watchers). The line is plain
text for fal's clients too ("Partial image 1 (step 10): <url>"); :func:`partial_image_line` and
:func:`parse_partial_image_line` are its one format."""

from __future__ import annotations

import re

#: How long a partial image's file is kept: the stream that shows it reads it at once.
PARTIAL_IMAGE_SECONDS = 3600.0
#: The most partial images one request gets (OpenAI's ``partial_images`` is 0–3).
MAX_PARTIAL_IMAGES = 3

_LINE = re.compile(r"^Partial image (\d+) \(step (\d+)\): (\S+)$")


def partial_image_line(index: int, step: int, url: str) -> str:
    """The log line naming partial image ``index`` (0-based, shown 1-based) made at ``step``."""
    return f"Partial image {index + 1} (step {step}): {url}"


def parse_partial_image_line(message: str) -> tuple[int, str] | None:
    """(0-based index, file URL) of a partial image's log line; None for any other line."""
    match = _LINE.match(message)
    return (int(match[1]) - 1, match[3]) if match else None
