"""Progress and cancel at step boundaries, as diffusers' ``callback_on_step_end`` runs them.

Every pipeline (text to image, image to image, the conditioned layers) reports steps and checks for
cancellation the same way, so the hook lives here rather than in any one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import GenerationCancelled

#: Called as ``on_step(step, total)`` after every denoising step.
StepCallback = Callable[[int, int], None]
#: Polled between steps; True raises :class:`GenerationCancelled`.
CancelCheck = Callable[[], bool]


#: Run after a step with (pipe, step index from 0, the step's tensors); reads them, changes nothing.
StepHook = Callable[[Any, int, dict[str, Any]], None]


def step_callback(
    total: int, on_step: StepCallback | None, should_cancel: CancelCheck | None, after_step: StepHook | None = None
) -> Any:
    """diffusers' ``callback_on_step_end``: ``after_step`` (partial images), progress after every
    step, cancel between steps."""

    def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if after_step is not None:
            after_step(pipe, step, tensors)
        if on_step is not None:
            on_step(step + 1, total)
        if should_cancel is not None and should_cancel() and step + 1 < total:
            raise GenerationCancelled(f"cancelled after step {step + 1} of {total}")
        return tensors

    return step_end
