"""The engines a worker holds, by checkpoint name (``None``: the server's own model), at most so many.

An SDXL engine takes most of a GPU, so a worker holds few (one by default) and loads another when a
request names it: the least recently used is unloaded first, its device memory freed before the next
one loads (a GPU could not hold both).
"""

from __future__ import annotations

import gc
import sys
from collections import OrderedDict
from typing import Generic, TypeVar

EngineT = TypeVar("EngineT")


def free_device_memory() -> None:
    """Give the memory of unloaded models back: collected now, and the CUDA cache emptied where torch runs it."""
    gc.collect()
    torch = sys.modules.get("torch")  # a worker without the engine imported (a test's fake one) has none to free
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelShelf(Generic[EngineT]):
    """Loaded engines by name, least recently used first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a worker holds at least one model, not {capacity}")
        self.capacity = capacity
        self._engines: OrderedDict[str | None, EngineT] = OrderedDict()

    @property
    def names(self) -> list[str | None]:
        """What is loaded, least recently used first."""
        return list(self._engines)

    def take(self, name: str | None) -> EngineT | None:
        """The engine of ``name`` if loaded (now the most recently used), else None."""
        engine = self._engines.get(name)
        if engine is not None:
            self._engines.move_to_end(name)
        return engine

    def put(self, name: str | None, engine: EngineT) -> None:
        """Hold ``engine`` as ``name``'s, the most recently used (room made first, see :meth:`make_room`)."""
        self._engines[name] = engine
        self._engines.move_to_end(name)

    def make_room(self) -> list[str | None]:
        """Unload the least recently used engines until one more fits; the names unloaded.

        The caller drops its own references to them before :func:`free_device_memory` can free them.
        """
        unloaded = []
        while len(self._engines) >= self.capacity:
            name, _ = self._engines.popitem(last=False)
            unloaded.append(name)
        return unloaded
