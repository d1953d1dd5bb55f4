"""One UNet on the device, carrying whichever LayerDiffuse weights the request in hand needs.

Text to image and image to image run SDXL with the transparent attention (or conv) weights merged
in; each conditioned-layer model is SDXL plus its own "diff" file (conv_in widened); "stop at"
switches to plain SDXL mid-run. Keeping a UNet per model would multiply device memory (2.6 B
parameters each), so the one UNet is switched in place: the base values of every weight a patch
touches are kept once, in a temporary file rather than host memory (see :mod:`.base_values`), and
switching reads them back, then merges the next patch.
Restoring copies exact values and merging repeats the same arithmetic, so a model gives the same
pixels however often it was switched away from and back.

A request's style LoRAs are a second layer, merged on top of whichever patch is active and kept
across switches (a conditioned model's "stop at" hands over to plain SDXL with the style still in);
changing or removing them restores the base values and merges the patch again, never subtracting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base_values import BaseValues
from .diff_weights import _replace_parameter

logger = logging.getLogger(__name__)

#: Merges a patch into the UNet in place.
Merge = Callable[[torch.nn.Module], object]

BASE = "base"


@dataclass(frozen=True)
class Style:
    """Weights merged on top of the active patch: a name (equal names: equal weights), the weights it
    changes, and how to merge it."""

    name: str
    keys: frozenset[str]
    merge: Merge


class UNetPatches:
    def __init__(self, unet: torch.nn.Module, base: BaseValues | None = None) -> None:
        self.unet = unet
        self.active: str | None = BASE  # None while a switch is under way (or failed half way)
        self._base = base or BaseValues()  # the base values of every touched weight
        self._changed: set[str] = set()
        self._merges: dict[str, Merge] = {}
        self._keys: dict[str, set[str]] = {}
        self._style: Style | None = None

    def register(self, name: str, keys: set[str], merge: Merge) -> None:
        """Make a patch available; ``keys`` are the weights it changes (their base values are kept)."""
        self._merges[name] = merge
        self._keys[name] = set(keys)

    def has(self, name: str) -> bool:
        return name == BASE or name in self._merges

    def base_shapes(self) -> dict[str, torch.Size]:
        """Every weight's shape in the base UNet, whichever patch is active (a widened conv_in is not)."""
        shapes = {key: parameter.shape for key, parameter in self.unet.named_parameters()}
        return shapes | {key: self._base.shape(key) for key in self._changed}

    @property
    def kept_bytes(self) -> int:
        """Disk space the kept base values take."""
        return self._base.nbytes

    @property
    def style(self) -> str | None:
        """The name of the style merged on top of the active patch (None: none)."""
        return self._style.name if self._style else None

    @torch.no_grad()
    def use(self, name: str) -> None:
        """Switch the UNet to patch ``name`` (or :data:`BASE`); nothing to do when it is active."""
        if name == self.active:
            return
        if not self.has(name):
            raise KeyError(name)
        self._switch(name, self._style)

    @torch.no_grad()
    def use_style(self, style: Style | None) -> None:
        """Merge ``style`` on top of the active patch in place of the one there (None: remove it)."""
        if (style.name if style else None) == self.style:
            return
        self._switch(self.active or BASE, style)

    def _switch(self, name: str, style: Style | None) -> None:
        started, previous = time.perf_counter(), self.active
        self.active = None
        try:
            self._restore()
            self._style = style
            keys = (self._keys[name] if name != BASE else set()) | (style.keys if style else set())
            self._keep_base(keys)
            self._changed = keys
            if name != BASE:
                self._merges[name](self.unet)
            if style is not None:
                style.merge(self.unet)
        except BaseException:
            # Half merged (out of memory, say): back to the base weights, so the next request's
            # switch starts from a known state rather than trusting a name the weights no longer match.
            self._style = None
            self._restore()
            self.active = BASE
            raise
        elapsed = time.perf_counter() - started
        logger.debug("UNet switched from %s to %s (style %s) in %.2f s", previous, name, self.style, elapsed)
        self.active = name

    def _keep_base(self, keys: set[str]) -> None:
        parameters = dict(self.unet.named_parameters())
        for key in sorted(keys):
            self._base.keep(key, parameters[key])

    def _restore(self) -> None:
        parameters = dict(self.unet.named_parameters())
        for key, base in self._base.read(self._changed):
            parameter = parameters[key]
            if parameter.shape == base.shape:
                parameter.copy_(base)
            else:  # a widened conv_in goes back to the latent channels alone (a new tensor, never the kept one)
                _replace_parameter(self.unet, key, base.to(parameter.device), parameter.requires_grad)
        self._changed = set()
