"""A batch's style LoRAs merged into the resident models, and taken out again exactly.

The UNet's part goes on top of its active LayerDiffuse patch, as a :class:`~.unet_patches.Style`
of :class:`~.unet_patches.UNetPatches`; each text encoder keeps the base values of the weights a
LoRA changed on the host and copies them back before the next LoRAs merge (never subtracting), so
a request without LoRAs after one with them gives the bytes it gave before. LoRAs at scale 0 are
left out entirely, so they too give those bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import InvalidInputError
from ...schemas import LoraWeight
from .lora_cache import DEFAULT_CACHE_BYTES, StyleLoraCache, file_identity
from .lora_files import COMPONENTS, LoraTargets, LowRankUpdate, StyleLora, read_style_lora
from .unet_patches import Style, UNetPatches

#: Turns a request's LoRA ``path`` into a local file.
LoraResolver = Callable[[str], Path]
#: Scaled updates to merge: a LoRA's updates of one model, each with its request's scale.
ScaledUpdates = list[tuple[dict[str, LowRankUpdate], float]]


def no_lora_files(path: str) -> Path:
    """The resolver of a pipeline nobody gave one: a request's LoRA paths are names, URLs and hub
    files, never local paths, so without a source (the worker's :class:`~...loras.sources.LoraSources`)
    there is no file to read."""
    raise InvalidInputError(
        f"this model has no source of LoRA files, so the LoRA {path!r} cannot be read", field="loras"
    )


@torch.no_grad()
def add_updates(module: torch.nn.Module, updates: ScaledUpdates) -> None:
    """Add each ``scale · update`` to the module's weights in place, in order.

    A conditioned-layer model's conv_in is wider than the base one (condition channels after the
    latent ones); a LoRA of the base conv_in changes its latent channels.
    """
    parameters = dict(module.named_parameters())
    for part, scale in updates:
        for key, update in part.items():
            parameter = parameters[key]
            shape = torch.Size((update.up.shape[0], *update.down.shape[1:]))
            delta = update.delta(shape, device=parameter.device, factor=scale).to(parameter.dtype)
            if parameter.shape == shape:
                parameter.add_(delta)
            else:
                parameter[:, : shape[1]].add_(delta)


class WeightOverlay:
    """Updates merged into one model, whose touched base values are kept on the host for an exact restore."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.name: str | None = None
        self._base: dict[str, torch.Tensor] = {}
        self._changed: set[str] = set()

    @torch.no_grad()
    def use(self, name: str | None, updates: ScaledUpdates) -> None:
        """Restore the base values, then merge ``updates`` (named ``name``; None: restore only)."""
        if name == self.name:
            return
        self.name = None  # a half-done merge leaves no name that the weights do not match
        self._restore()
        keys = {key for part, _ in updates for key in part}
        parameters = dict(self.module.named_parameters())
        for key in keys - set(self._base):
            self._base[key] = parameters[key].detach().to("cpu", copy=True)
        self._changed = keys
        try:
            add_updates(self.module, updates)
        except BaseException:
            self._restore()
            raise
        self.name = name

    def _restore(self) -> None:
        parameters = dict(self.module.named_parameters())
        for key in self._changed:
            parameters[key].copy_(self._base[key])
        self._changed = set()


class StyleLoras:
    """Merges the style LoRAs a batch asks for into the UNet and both text encoders.

    Args:
        sdxl: diffusers' SDXL pipeline whose models are changed in place.
        patches: the UNet's LayerDiffuse patches, on top of which the UNet's part goes.
        resolve: turns a request's ``path`` into a local file.
        cache_bytes: host memory for read LoRAs (:class:`~.lora_cache.StyleLoraCache`).
    """

    def __init__(
        self,
        sdxl: Any,
        patches: UNetPatches,
        *,
        resolve: LoraResolver = no_lora_files,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.sdxl = sdxl
        self.patches = patches
        self.resolve = resolve
        self.cache = StyleLoraCache(self.read, cache_bytes)
        self._text_encoders = {
            name: WeightOverlay(getattr(sdxl, name)) for name in COMPONENTS[1:] if getattr(sdxl, name, None) is not None
        }

    @functools.cached_property
    def targets(self) -> LoraTargets:
        """What files are checked against: the base UNet's shapes (not a widened conv_in), the encoders'."""
        targets = LoraTargets.of(self.sdxl)
        return LoraTargets(targets.shapes | {"unet": self.patches.base_shapes()}, targets.unet_config)

    def read(self, path: Path) -> StyleLora:
        return read_style_lora(path, self.targets)

    def apply(self, loras: Sequence[LoraWeight]) -> None:
        """Merge ``loras`` (in order) in place of the ones merged now; none: the models as loaded."""
        chosen: list[tuple[StyleLora, float, str]] = []
        for lora in loras:
            if lora.scale == 0:
                continue
            path = self.resolve(lora.path)
            identity = file_identity(path)
            chosen.append((self.cache.get(path), lora.scale, f"{identity}*{lora.scale!r}"))
        name = " + ".join(label for _, _, label in chosen) or None
        for component, overlay in self._text_encoders.items():
            overlay.use(name, _scaled(chosen, component))
        unet_updates = _scaled(chosen, "unet")
        keys = frozenset(key for part, _ in unet_updates for key in part)
        style = Style(name, keys, lambda unet: add_updates(unet, unet_updates)) if name else None
        self.patches.use_style(style)


def _scaled(chosen: list[tuple[StyleLora, float, str]], component: str) -> ScaledUpdates:
    return [(lora.updates[component], scale) for lora, scale, _ in chosen if component in lora.updates]
