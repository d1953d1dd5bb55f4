"""LoRA files fetched for requests, kept on the worker's disk so each is fetched once.

A file is written under a temporary name in the cache folder and renamed into place when it is
whole and checked, so a reader (another thread, another worker on the same disk) sees the whole
file or none: two fetches of one key at once each write their own temporary file, and the last
rename wins with identical content. Within one process a key is fetched by one thread at a time.

The folder is kept under a size bound by deleting the files used longest ago. Use is recorded by
setting a file's access time when it is handed out (mounts with ``noatime`` do not record reads,
an explicit ``utime`` they do), so eviction does not depend on how the disk is mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
_PART_SUFFIX = ".part"
#: Temporary files older than this are leftovers of a writer that died.
_ABANDONED_SECONDS = 6 * 3600.0


class LoraCache:
    """A folder of LoRA files by key (a URL, a stored file's id), bounded in size.

    Args:
        folder: Where the files live (made when first needed).
        max_bytes: The most the folder holds; beyond it the least recently used files are
            deleted, never the one just handed out (so one file larger than the bound still works).
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path_of(self, key: str) -> Path:
        """Where the file of ``key`` lives: a digest, so any URL makes a safe file name."""
        return self.folder / (hashlib.sha256(key.encode()).hexdigest() + _SUFFIX)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold ``key`` against other threads of this process, so one of them fetches it."""
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def lookup(self, key: str) -> Path | None:
        """The cached file of ``key``, marked as used now, or None."""
        path = self.path_of(key)
        try:
            # The access time alone: the modification time is the file's identity to the engine's
            # cache of read LoRAs, which would otherwise read and merge it anew at every use.
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
        except FileNotFoundError:
            return None
        return path

    def store(self, key: str, write: Callable[[BinaryIO], None]) -> Path:
        """Put the file ``write`` writes (to a file open for reading too) in place for ``key``; its path.

        ``write`` may raise to refuse the file; nothing is left behind then.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path_of(key)
        temporary = final.with_name(f"{final.name}.{os.getpid()}.{threading.get_ident()}{_PART_SUFFIX}")
        try:
            with temporary.open("w+b") as target:
                write(target)
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.evict(keep=final)
        return final

    def evict(self, *, keep: Path | None = None) -> list[Path]:
        """Delete the least recently used files until the folder fits its bound; the paths deleted."""
        entries: list[tuple[float, int, Path]] = []
        now = time.time()
        for path in self._listing():
            try:
                status = path.stat()
            except FileNotFoundError:
                continue  # deleted meanwhile by another worker
            if path.name.endswith(_PART_SUFFIX):
                if now - status.st_mtime > _ABANDONED_SECONDS:
                    path.unlink(missing_ok=True)
                continue
            entries.append((status.st_atime, status.st_size, path))
        total = sum(size for _, size, _ in entries)
        deleted = []
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            deleted.append(path)
            logger.info("deleted the cached LoRA %s (cache over %d bytes)", path.name, self.max_bytes)
        return deleted

    def _listing(self) -> list[Path]:
        try:
            return [path for path in self.folder.iterdir() if path.is_file()]
        except FileNotFoundError:
            return []
