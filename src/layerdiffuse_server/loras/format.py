"""Telling a safetensors file from anything else by its first bytes: an 8-byte little-endian
header length, then that many bytes of a JSON object, within the file.

Pickle files (``.ckpt``, ``.pt``, most ``.bin``) run code when loaded, so a LoRA is loaded only
once its bytes prove it a safetensors file. A download is checked on its first bytes already
(:func:`plausible_prefix`), so a pickle or a web page is refused before the rest of it is read.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

from .paths import refusal

#: How many bytes :func:`plausible_prefix` looks at: the length and the header's first byte.
PREFIX_BYTES = 9
#: A safetensors header longer than this is no LoRA's (theirs are kilobytes to a few megabytes).
MAX_HEADER_BYTES = 100 * 2**20


def plausible_prefix(prefix: bytes, size: int | None) -> bool:
    """Whether a file of ``size`` bytes (None: not known yet) that starts so can be a safetensors file."""
    if len(prefix) < PREFIX_BYTES:
        return False
    length = struct.unpack("<Q", prefix[:8])[0]
    limit = MAX_HEADER_BYTES if size is None else min(MAX_HEADER_BYTES, size - 8)
    return 2 <= length <= limit and prefix[8:9] == b"{"


def check_safetensors(source: BinaryIO, size: int, shown: str, *, rewind: bool = True) -> None:
    """Refuse a file that is not a safetensors file (its whole header is read and parsed).

    Args:
        source: The file, open for reading.
        size: Its length in bytes.
        shown: The path as the message names it.
        rewind: Seek to the start first (a file just written through ``source``).

    Raises:
        InvalidInputError: Not a safetensors file (naming ``shown``).
    """
    if rewind:
        source.flush()
        source.seek(0)
    prefix = source.read(PREFIX_BYTES)
    valid = plausible_prefix(prefix, size)
    if valid:
        length = struct.unpack("<Q", prefix[:8])[0]
        header = prefix[8:] + source.read(length - 1)
        try:
            valid = isinstance(json.loads(header), dict)
        except (UnicodeDecodeError, ValueError):
            valid = False
    if not valid:
        raise refusal(not_safetensors(shown))


def not_safetensors(shown: str) -> str:
    return f"the LoRA file {shown} is not a safetensors file; only safetensors LoRAs are loaded"
