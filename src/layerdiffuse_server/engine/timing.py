"""Stage timings that are true on accelerators: CUDA work is asynchronous, so each stage
synchronises before reading the clock, or its time would land on whichever stage waits next."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class StageTimer:
    """Adds the wall time of named stages into ``timings`` (seconds; repeated stages accumulate)."""

    def __init__(self, timings: dict[str, float], device: torch.device) -> None:
        self.timings = timings
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started
