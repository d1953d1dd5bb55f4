"""Fakes shipped with the product, for tests of everything around the model: a protocol test, a
schema fuzzer or a load test needs an engine that answers at once, not a diffusion model.

:class:`FakeEngine` keeps the engine's contract — one image per request of the requested size,
the seed it ran with, a step callback per step and cancellation between steps — and draws a
semi-transparent disc whose colour follows the seed, so its images are real straight-alpha PNGs.
For endpoints with image inputs the disc takes the mean colour of the first input's visible
pixels and the output its size, so a test sees that the image it sent was the one read.

:class:`FakeClock` is a :class:`~layerdiffuse_server.clock.Clock` whose time moves only when a test
calls :meth:`FakeClock.advance`: a lease runs out, a heartbeat beats and a deadline passes the
moment the test says so, instead of after a real sleep that a loaded machine may stretch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .clock import SYSTEM_CLOCK, Clock
from .engine.pipelines.image_sizing import size_from_image
from .errors import GenerationCancelled
from .images import TransparentImage
from .results import GenerationResult
from .schemas import GenerationParams, LayerDiffusionInput, image_fields, partial_steps


class FakeEngine:
    """``step_seconds``: how long each denoising step takes (a slow device, for tests of stopping),
    on ``clock``: with a :class:`FakeClock` a step ends only when the test moves that clock on."""

    device = "cpu"
    dtype = "float32"
    native_size = 1024

    def __init__(self, step_seconds: float = 0.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.step_seconds = step_seconds
        self.clock = clock

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_partial: Callable[[int, list[Any]], None] | None = None,
    ) -> list[GenerationResult]:
        requests = [params.with_size(self.native_size).with_seed() for params in requests]
        total = requests[0].num_inference_steps if requests else 0
        previews = partial_steps(total, max((params.partial_images for params in requests), default=0))
        for step in range(1, total + 1):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled after step {step - 1} of {total}")
            if self.step_seconds:
                self.clock.sleep(self.step_seconds)
            if on_partial is not None and step in previews:
                on_partial(step, [_disc(p, p.fixed_seed + i).rgba for p in requests for i in range(p.num_images)])
            if on_step is not None:
                on_step(step, total)
        return [
            GenerationResult(
                images=[_disc(params, params.fixed_seed + index) for index in range(params.num_images)],
                seed=params.fixed_seed,
                params=params,
                has_nsfw_concepts=[False] * params.num_images if params.enable_safety_checker else None,
                timings={"denoising": 0.0, "decoding": 0.0},
                batch_size=len(requests),
            )
            for params in requests
        ]

    def generate_from_images(
        self,
        params: LayerDiffusionInput,
        images: dict[str, Any],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_partial: Callable[[int, list[Any]], None] | None = None,
    ) -> GenerationResult:
        first = images[image_fields(params)[0]]
        width, height = size_from_image(params.width, params.height, first.shape[1], first.shape[0])
        params = params.model_copy(update={"width": width, "height": height}).with_seed()
        steps = GenerationParams(
            num_inference_steps=params.num_inference_steps, partial_images=params.partial_images, width=64, height=64
        )
        self.generate_batch([steps], on_step=on_step, should_cancel=should_cancel, on_partial=on_partial)
        visible = first[..., 3] > 0
        colour = first[..., :3][visible].mean(axis=0) if visible.any() else np.zeros(3)
        image = _disc(params, params.fixed_seed, colour=colour)
        return GenerationResult(
            images=[image],
            seed=params.fixed_seed,
            params=params,
            has_nsfw_concepts=[False] if params.enable_safety_checker else None,
            timings={"denoising": 0.0, "decoding": 0.0},
        )


def _disc(params: LayerDiffusionInput, seed: int, colour: Any = None) -> TransparentImage:
    width, height = params.size
    rows, columns = np.ogrid[:height, :width]
    radius = min(width, height) / 3
    distance = np.hypot(rows - height / 2, columns - width / 2)
    alpha = np.clip((radius - distance) / 4 + 0.5, 0, 1)
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., :3] = [(seed * 67) % 256, (seed * 131) % 256, (seed * 197) % 256] if colour is None else colour
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    return TransparentImage(rgba=rgba, seed=seed)


#: How often a wait on a :class:`FakeClock` looks at its event: a :class:`threading.Event` cannot
#: tell the clock that it was set, so a waiter sees ``set()`` this long after it at most.
EVENT_POLL_SECONDS = 0.005


class FakeClock:
    """A clock for tests: time stands still until :meth:`advance` moves it.

    :meth:`time` starts at ``start`` (the real time when absent, so what a test stores looks like a
    date) and :meth:`monotonic` at 0; both move together, by exactly what :meth:`advance` says.
    :meth:`sleep` and :meth:`wait` block until the clock has been moved past their end (or, for
    :meth:`wait`, until its event is set). :meth:`advance` returns once every thread whose wait it
    ended has woken, and :meth:`wait_for_sleepers` until a number of threads are waiting on the
    clock, so a test can tell when a thread has gone back to sleep: no race with real time is left.
    """

    def __init__(self, start: float | None = None) -> None:
        self._changed = threading.Condition()
        self._epoch = time.time() if start is None else start
        self._elapsed = 0.0
        self._deadlines: dict[int, float] = {}  # per waiting call: the monotonic time it waits until
        self._next_waiter = 0

    def time(self) -> float:
        with self._changed:
            return self._epoch + self._elapsed

    def monotonic(self) -> float:
        with self._changed:
            return self._elapsed

    @property
    def sleepers(self) -> int:
        """How many threads wait on this clock now."""
        with self._changed:
            return len(self._deadlines)

    def sleep(self, seconds: float) -> None:
        self.wait(threading.Event(), seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._changed:
            waiter, self._next_waiter = self._next_waiter, self._next_waiter + 1
            self._deadlines[waiter] = self._elapsed + timeout
            self._changed.notify_all()
            try:
                while not event.is_set() and self._elapsed < self._deadlines[waiter]:
                    self._changed.wait(EVENT_POLL_SECONDS)
                return event.is_set()
            finally:
                del self._deadlines[waiter]
                self._changed.notify_all()

    async def wait_async(self, event: asyncio.Event, timeout: float) -> bool:
        """Like :meth:`wait`, but not counted by :meth:`advance` or :meth:`wait_for_sleepers`: the
        coroutine may share its event loop with the test that moves the clock, so nothing blocks on it."""
        deadline = self.monotonic() + timeout
        while not event.is_set() and self.monotonic() < deadline:
            await asyncio.sleep(EVENT_POLL_SECONDS)
        return event.is_set()

    def advance(self, seconds: float, *, within: float = 10.0) -> None:
        """Move the clock on by ``seconds``; returns when each wait that ends by then has returned
        (``within`` real seconds at most, else AssertionError: a thread never woke)."""
        with self._changed:
            self._elapsed += seconds
            self._changed.notify_all()
            woken = self._changed.wait_for(lambda: all(end > self._elapsed for end in self._deadlines.values()), within)
            if not woken:
                raise AssertionError(f"a wait on the fake clock did not end within {within} s of its time")

    def wait_for_sleepers(self, count: int, *, within: float = 10.0) -> None:
        """Block until at least ``count`` threads wait on this clock (``within`` real seconds at most)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._deadlines) >= count, within):
                raise AssertionError(f"{len(self._deadlines)} thread(s) wait on the fake clock, not {count}")
