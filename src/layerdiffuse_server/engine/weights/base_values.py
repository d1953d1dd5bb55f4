"""The base values of the UNet weights the LayerDiffuse patches change, kept on disk, not in host memory.

Switching the one UNet between models restores the base value of every weight the active patch
changed, exactly (subtracting an fp16 offset again would not be). Once a conditioned-layer model has
been used that is most of the UNet, about 5 GB for SDXL in fp16; held as host tensors it would stay
resident for the life of the worker on top of the UNet on the device. Here each value is written once
to an anonymous temporary file and read back, one tensor at a time, when it is restored: it costs
disk space and page cache, which the kernel gives back under memory pressure, instead of process
memory. The file has no name (``O_TMPFILE`` where the system has it), so nothing is left behind when
the process ends and no temporary-file cleaner can remove it while it is in use. Values are written
and read as their raw bytes with their dtype and shape, so what comes back is bit-identical.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch


@dataclass(frozen=True)
class _Place:
    offset: int
    shape: torch.Size
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.shape.numel() * self.dtype.itemsize


class BaseValues:
    """Tensors by name, written once to a temporary file and read back as new host tensors.

    Args:
        folder: where the temporary file goes (default: the system's, ``TMPDIR``); it needs room for
            the kept values, up to the UNet's size. A folder on a RAM-backed file system (tmpfs) keeps
            them in memory after all.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self._folder = folder
        self._file: IO[bytes] | None = None
        self._places: dict[str, _Place] = {}
        self._end = 0

    def __contains__(self, key: object) -> bool:
        return key in self._places

    def shape(self, key: str) -> torch.Size:
        return self._places[key].shape

    @property
    def nbytes(self) -> int:
        """Bytes the kept values take on disk."""
        return self._end

    def keep(self, key: str, value: torch.Tensor) -> None:
        """Write ``value`` (from any device) under ``key``; a key kept before keeps its first value."""
        if key in self._places:
            return
        host = value.detach().to("cpu").contiguous()
        file = self._open()
        file.seek(self._end)
        file.write(_bytes_of(host).numpy().data)
        self._places[key] = _Place(self._end, host.shape, host.dtype)
        self._end += self._places[key].nbytes

    def read(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, a new host tensor with the kept value) for each of ``keys``, in file order, one at a time."""
        for key in sorted(keys, key=lambda name: self._places[name].offset):
            place = self._places[key]
            value = torch.empty(place.shape, dtype=place.dtype)
            self._read_into(place, _bytes_of(value).numpy().data)
            yield key, value

    def _open(self) -> IO[bytes]:
        if self._file is None:
            # Held open for the object's life (closed, and so freed, with it): no context manager fits.
            self._file = tempfile.TemporaryFile(prefix="layerdiffuse-base-", dir=self._folder)  # noqa: SIM115
        return self._file

    def _read_into(self, place: _Place, target: memoryview) -> None:
        file = self._open()
        file.seek(place.offset)
        done = 0
        while done < place.nbytes:
            count = file.readinto(target[done:])  # type: ignore[attr-defined]
            if not count:
                raise OSError(f"the file of kept base weights ends {place.nbytes - done} bytes early")
            done += count


def _bytes_of(value: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous host tensor, as a flat uint8 view of the same memory."""
    return value.reshape(-1).view(torch.uint8)
