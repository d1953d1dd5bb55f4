"""Style LoRAs read once and kept in host memory, least recently used out first, within a byte budget.

Requests in a style come in runs, and reading a file (parsing, converting its keys, checking them
against the models) costs more than merging it. An entry is named by the file's path, size and
modification time, so a file replaced under the same name is read again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from .lora_files import StyleLora

#: Host memory the cached factors may take by default (an SDXL LoRA's factors: 10–400 MB).
DEFAULT_CACHE_BYTES = 1 << 30

FileIdentity = tuple[str, int, int]


def file_identity(path: Path) -> FileIdentity:
    """What names a file's content here: its resolved path, size and modification time (ns)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


class StyleLoraCache:
    """Read style LoRAs, least recently used first out once they pass ``max_bytes`` together."""

    def __init__(self, read: Callable[[Path], StyleLora], max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._read = read
        self.max_bytes = max_bytes
        self._entries: OrderedDict[FileIdentity, StyleLora] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Host memory the cached factors take."""
        return sum(lora.nbytes for lora in self._entries.values())

    def __contains__(self, path: Path) -> bool:
        return file_identity(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: Path) -> StyleLora:
        """The LoRA in ``path``, read now unless cached; one larger than the whole budget is not kept."""
        identity = file_identity(path)
        lora = self._entries.get(identity)
        if lora is not None:
            self._entries.move_to_end(identity)
            return lora
        lora = self._read(path)
        if lora.nbytes <= self.max_bytes:
            self._entries[identity] = lora
            while self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)
        return lora
