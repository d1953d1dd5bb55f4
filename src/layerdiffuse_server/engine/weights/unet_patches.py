"""One UNet on the device, carrying whichever LayerDiffuse weights the request in hand needs.

Text to image and image to image run SDXL with the transparent attention (or conv) weights merged
in; each conditioned-layer model is SDXL plus its own "diff" file (conv_in widened); "stop at"
switches to plain SDXL mid-run. Keeping a UNet per model would multiply device memory (2.6 B
parameters each), so the one UNet is switched in place: the base values of every weight a patch
touches are kept on the host once, and switching copies them back, then merges the next patch.
Restoring copies exact values and merging repeats the same arithmetic, so a model gives the same
pixels however often it was switched away from and back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from .diff_weights import _replace_parameter

logger = logging.getLogger(__name__)

#: Merges a patch into the UNet in place.
Merge = Callable[[torch.nn.Module], object]

BASE = "base"


class UNetPatches:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.active: str | None = BASE  # None while a switch is under way (or failed half way)
        self._base: dict[str, torch.Tensor] = {}  # host copies of the base values of every touched weight
        self._changed: set[str] = set()
        self._merges: dict[str, Merge] = {}
        self._keys: dict[str, set[str]] = {}

    def register(self, name: str, keys: set[str], merge: Merge) -> None:
        """Make a patch available; ``keys`` are the weights it changes (their base values are kept)."""
        self._merges[name] = merge
        self._keys[name] = set(keys)

    def has(self, name: str) -> bool:
        return name == BASE or name in self._merges

    def base_shapes(self) -> dict[str, torch.Size]:
        """Every weight's shape in the base UNet, whichever patch is active (a widened conv_in is not)."""
        shapes = {key: parameter.shape for key, parameter in self.unet.named_parameters()}
        return shapes | {key: self._base[key].shape for key in self._changed}

    @property
    def host_bytes(self) -> int:
        """Host memory the kept base values take."""
        return sum(value.numel() * value.element_size() for value in self._base.values())

    @torch.no_grad()
    def use(self, name: str) -> None:
        """Switch the UNet to patch ``name`` (or :data:`BASE`); nothing to do when it is active."""
        if name == self.active:
            return
        if not self.has(name):
            raise KeyError(name)
        started, previous = time.perf_counter(), self.active
        self.active = None
        try:
            self._restore()
            if name != BASE:
                self._keep_base(self._keys[name])
                self._changed = self._keys[name]
                self._merges[name](self.unet)
        except BaseException:
            # Half merged (out of memory, say): back to the base weights, so the next request's
            # switch starts from a known state rather than trusting a name the weights no longer match.
            self._restore()
            self.active = BASE
            raise
        logger.debug("UNet switched from %s to %s in %.2f s", previous, name, time.perf_counter() - started)
        self.active = name

    def _keep_base(self, keys: set[str]) -> None:
        parameters = dict(self.unet.named_parameters())
        for key in keys - set(self._base):
            self._base[key] = parameters[key].detach().to("cpu", copy=True)

    def _restore(self) -> None:
        parameters = dict(self.unet.named_parameters())
        for key in self._changed:
            parameter, base = parameters[key], self._base[key]
            if parameter.shape == base.shape:
                parameter.copy_(base)
            else:  # a widened conv_in goes back to the latent channels alone
                _replace_parameter(self.unet, key, base.to(parameter.device), parameter.requires_grad)
        self._changed = set()
