"""The standard Stable Diffusion safety checker, applied to transparent images.

The checker is a CLIP model that knows nothing of alpha, so each image is shown to it composited
over mid grey, the neutral background LayerDiffuse itself is trained around. A flagged image is
replaced by a fully transparent one of the same size and reported, as hosted endpoints do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...images import composite

#: Grey the checker sees behind transparent pixels.
CHECK_BACKGROUND = 0.5


class SafetyChecker:
    """``CompVis/stable-diffusion-safety-checker`` (or any folder in its format)."""

    def __init__(self, model: torch.nn.Module, processor: object) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> SafetyChecker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        model = StableDiffusionSafetyChecker.from_pretrained(folder, dtype=dtype)
        processor = CLIPImageProcessor.from_pretrained(folder)
        return cls(model.to(device), processor)  # type: ignore[arg-type]  # transformers' to() stub

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def flags(self, images: list[np.ndarray]) -> list[bool]:
        """For each RGBA ``uint8`` image, whether the checker flags it."""
        if not images:
            return []
        shown = [(composite(rgba, CHECK_BACKGROUND) * 255.0).round().astype(np.uint8) for rgba in images]
        pixel_values = self.processor(images=shown, return_tensors="pt").pixel_values  # type: ignore[operator]
        dtype = next(self.model.parameters()).dtype
        _, flagged = self.model(
            clip_input=pixel_values.to(self.device, dtype), images=np.stack(shown).astype(np.float32) / 255.0
        )
        return [bool(flag) for flag in flagged]

    def apply(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
        """Replace flagged images by fully transparent ones; returns (images, flags)."""
        flags = self.flags(images)
        return [np.zeros_like(rgba) if flag else rgba for rgba, flag in zip(images, flags, strict=True)], flags
