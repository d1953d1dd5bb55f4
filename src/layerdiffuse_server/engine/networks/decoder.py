"""The transparent decoder: SDXL latents + SDXL VAE → straight-alpha RGBA, as the reference does it.

Semantics follow the official implementation exactly, because each detail shows in the pixels:
the VAE-decoded RGB is clipped to [0, 1]; the network also gets the *un-scaled* latent; every
test-time-augmentation pass is clipped, undone and combined by the **lower** median (what
``torch.median`` returns for an even count); channels come out as ``[alpha, R, G, B]``; colour is
straight, not premultiplied; uint8 by truncation. What we change is only how the passes are run:
batched in chunks instead of one by one, which is where the official decoder spends its time, and
on a CPU as a frozen trace of the network (:func:`cpu_forward`) combined by a sorting network
(:func:`lower_median`), both giving the same values as the plain module and ``torch.median``.
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file

from ...errors import InvalidInputError, WeightFormatError
from ..timing import StageTimer
from .decoder_network import TransparentDecoderNetwork

#: (horizontal flip, quarter turns) for each test-time pass, in the reference's order.
Augmentation = tuple[bool, int]
AUGMENTATIONS: dict[int, tuple[Augmentation, ...]] = {
    8: ((False, 0), (False, 1), (False, 2), (False, 3), (True, 0), (True, 1), (True, 2), (True, 3)),
    # Fewer passes keep the image's orientation so all of them share one batch, also when H != W.
    4: ((False, 0), (False, 2), (True, 0), (True, 2)),
    2: ((False, 0), (True, 0)),
    1: ((False, 0),),
}

#: H and W must be multiples of this: the network halves the resolution six times.
SIZE_MULTIPLE = 64

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Per network: (what its parameters were when traced, the trace or None where tracing failed).
_cpu_traces: weakref.WeakKeyDictionary[TransparentDecoderNetwork, tuple[tuple[object, ...], Forward | None]] = (
    weakref.WeakKeyDictionary()
)


def _parameter_signature(network: torch.nn.Module) -> tuple[object, ...]:
    """Changes when a parameter is replaced, moved, cast or written in place."""
    return tuple((p.data_ptr(), p.dtype, p._version) for p in network.parameters())


def cpu_forward(network: TransparentDecoderNetwork) -> Forward:
    """The network as a frozen TorchScript trace, made once per network (again if its weights change).

    On a CPU a large share of each pass is Python: with the tiny preset's few channels a pass at
    64², where the kernels have almost nothing to do, still costs about 20 ms of module calls and
    dispatch, against about 70 ms for a pass at 256² (one thread); traced, 8 passes at 256² took
    450 ms of CPU instead of 550, and freezing it (parameters read as constants) about 1 % more.
    The trace runs the same aten ops in the same order, less the divisions by one
    (:func:`drop_divisions_by_one`), so its output equals the module's bit for bit. It is taken
    once on the smallest input (64², one pass) and serves every size and batch: the network's only
    size-dependent branches (diffusers' ``contiguous()`` guards against CUDA kernel limits) do not
    change values. Where tracing is unavailable or fails, the module itself runs.
    """
    signature = _parameter_signature(network)
    cached = _cpu_traces.get(network)
    if cached is not None and cached[0] == signature:
        return cached[1] or network
    pixel_weight, latent_weight = network.conv_in.weight, network.latent_conv_in.weight
    pixels = torch.zeros(1, pixel_weight.shape[1], SIZE_MULTIPLE, SIZE_MULTIPLE, dtype=pixel_weight.dtype)
    latent = torch.zeros(1, latent_weight.shape[1], SIZE_MULTIPLE // 8, SIZE_MULTIPLE // 8, dtype=latent_weight.dtype)
    traced: Forward | None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notices
            frozen = torch.jit.freeze(torch.jit.trace(network, (pixels, latent), check_trace=False))
            drop_divisions_by_one(frozen.graph)
            traced = frozen
    except Exception as error:  # any failure leaves the eager module, which is always right
        logger.warning("transparent decoder: CPU trace failed (%s); running the module", error)
        traced = None
    _cpu_traces[network] = (signature, traced)
    return traced or network


def drop_divisions_by_one(graph: torch.Graph) -> int:
    """Remove ``x / 1.0`` from a traced graph; how many there were.

    diffusers' ResNet blocks and attention divide their output by a rescale factor, 1.0 in this
    network: 30 divisions of whole activations per pass, each a read, a write and an allocation
    (about 3 % of a CPU pass at 256²). Dividing a floating-point tensor by one gives it back bit
    for bit in IEEE arithmetic, and the network's activations are all floating point.
    """
    dropped = 0
    for node in list(graph.nodes()):
        if node.kind() != "aten::div" or node.inputsSize() != 2:
            continue
        dividend, divisor = node.inputsAt(0), node.inputsAt(1)
        constant: object = divisor.toIValue() if divisor.node().kind() == "prim::Constant" else None
        if type(constant) is float and constant == 1.0 and dividend.type().kind() == "TensorType":
            node.output().replaceAllUsesWith(dividend)
            node.destroy()
            dropped += 1
    return dropped


class SDXLVae(Protocol):
    """What the decoder needs of diffusers' ``AutoencoderKL``."""

    config: object
    dtype: torch.dtype

    def decode(self, z: torch.Tensor) -> object: ...


def to_vae_space(latent: torch.Tensor, vae: SDXLVae) -> torch.Tensor:
    """Model-space latents (what the sampler works on) → the VAE's own, "un-scaled" latents."""
    config = vae.config
    return latent / float(config.scaling_factor) + float(getattr(config, "shift_factor", None) or 0.0)  # type: ignore[attr-defined]


def to_model_space(unscaled: torch.Tensor, vae: SDXLVae) -> torch.Tensor:
    """The inverse of :func:`to_vae_space`: VAE latents → what the sampler works on."""
    config = vae.config
    return (unscaled - float(getattr(config, "shift_factor", None) or 0.0)) * float(config.scaling_factor)  # type: ignore[attr-defined]


def augment(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k=turns, dims=(2, 3))


def unaugment(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    x = torch.rot90(x, k=-turns, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x


def sorting_network(count: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for ``count`` wires, as (lower, upper) comparator pairs.

    19 comparators for 8 wires, against 28 for odd-even transposition, in the same kind of
    elementwise min/max steps; any count works, not only powers of two.
    """
    comparators: list[tuple[int, int]] = []
    run = 1
    while run < count:
        step = run
        while step >= 1:
            for start in range(step % run, count - step, 2 * step):
                for offset in range(min(step, count - start - step)):
                    lower = start + offset
                    if lower // (2 * run) == (lower + step) // (2 * run):
                        comparators.append((lower, lower + step))
            step //= 2
        run *= 2
    return comparators


@functools.cache
def median_plan(count: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """The sorting network cut down to what the lower median needs: per comparator, its wires and
    whether its minimum and its maximum are used later (27 elementwise ops for 8 values; sorting all 8 takes 38)."""
    needed = {(count - 1) // 2}
    plan: list[tuple[int, int, bool, bool]] = []
    for lower, upper in reversed(sorting_network(count)):
        minimum, maximum = lower in needed, upper in needed
        if minimum or maximum:
            plan.append((lower, upper, minimum, maximum))
            needed |= {lower, upper}
    return tuple(reversed(plan))


def lower_median(values: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of equally shaped tensors; for an even count the lower middle value, as
    the reference (``torch.median`` over a stacked dim).

    A sorting network of elementwise minima and maxima (:func:`median_plan`) selects exactly the
    same values as ``torch.median`` but streams through memory: ``torch.median`` over the pass dim
    gathers each pixel's 8 values and selects among them one pixel at a time, which at 256² on a
    CPU took as long as a whole decoder pass. A NaN reaches the result as in ``torch.median``: the
    median depends on every input, and ``torch.minimum``/``maximum`` pass NaN on. Off the CPU
    ``torch.median`` stays, already fast there.
    """
    if values[0].device.type != "cpu":
        return torch.median(torch.stack(values), dim=0).values
    wires = list(values)
    for lower, upper, minimum, maximum in median_plan(len(wires)):
        low, high = wires[lower], wires[upper]
        if minimum:
            wires[lower] = torch.minimum(low, high)
        if maximum:
            wires[upper] = torch.maximum(low, high)
    return wires[(len(wires) - 1) // 2]


def to_rgba_uint8(estimate: torch.Tensor) -> list[np.ndarray]:
    """``[B, (alpha, R, G, B), H, W]`` in [0, 1] → straight RGBA ``uint8 [H, W, 4]`` per image.

    The ×255 happens in the estimate's dtype and the conversion truncates, as the reference does.
    """
    estimate = estimate.clip(0, 1)
    rgba = torch.cat([estimate[:, 1:4], estimate[:, 0:1]], dim=1).movedim(1, -1)
    scaled = (rgba * 255.0).detach().float().cpu().numpy()
    return [image.clip(0, 255).astype(np.uint8) for image in scaled]


class TransparentDecoder:
    """Turns SDXL latents into RGBA images with the LayerDiffuse transparent decoder.

    Args:
        network: the decoder network, already on its device and dtype.
        passes: test-time augmentation passes, 8 (reference quality), 4, 2 or 1 (fastest).
        max_batch: at most this many passes per forward call; bounds activation memory.
    """

    def __init__(self, network: TransparentDecoderNetwork, *, passes: int = 8, max_batch: int = 8) -> None:
        if passes not in AUGMENTATIONS:
            raise ValueError(f"passes must be one of {sorted(AUGMENTATIONS)}, got {passes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.network = network.eval().requires_grad_(False)
        self.passes = passes
        self.max_batch = max_batch

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        passes: int = 8,
        max_batch: int = 8,
    ) -> TransparentDecoder:
        """Load ``vae_transparent_decoder.safetensors`` (or its diffusers-CLI twin), strictly."""
        state = {key: tensor.to(dtype) for key, tensor in load_file(str(path)).items()}
        config = TransparentDecoderNetwork.config_from_state_dict(state)
        with torch.device("meta"):
            network = TransparentDecoderNetwork(**config)
        try:
            network.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise WeightFormatError(f"'{path}' does not match the transparent decoder: {error}") from None
        return cls(network.to(device), passes=passes, max_batch=max_batch)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TransparentDecoder:
        self.network.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # ModelMixin.to's stub
        return self

    @torch.no_grad()
    def estimate(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Run the augmented passes for each image and combine them.

        Args:
            pixels: ``[B, 3, H, W]`` SDXL-VAE output mapped to [0, 1].
            latent: ``[B, 4, H/8, W/8]`` un-scaled latent (model-space latent / scaling factor).

        Returns:
            ``[B, 4, H, W]``: alpha then straight RGB, in [0, 1].
        """
        height, width = pixels.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise InvalidInputError(
                f"image size {width}x{height} is not a multiple of {SIZE_MULTIPLE}, which the transparent decoder needs"
            )
        pixels = pixels.to(self.device, self.dtype)
        latent = latent.to(self.device, self.dtype)
        return torch.cat([self._estimate_one(pixels[i : i + 1], latent[i : i + 1]) for i in range(len(pixels))])

    def _forward(self) -> Forward:
        """The network, on a CPU as its trace (:func:`cpu_forward`); elsewhere the module as it is."""
        if self.device.type == "cpu" and isinstance(self.network, TransparentDecoderNetwork):
            return cpu_forward(self.network)
        return self.network

    def _estimate_one(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        augmentations = AUGMENTATIONS[self.passes]
        forward = self._forward()
        results: list[torch.Tensor | None] = [None] * len(augmentations)
        # Passes run batched; on a non-square image the odd quarter turns swap H and W, so those
        # passes form a batch of their own.
        square = pixels.shape[-1] == pixels.shape[-2]
        groups = (
            [list(range(len(augmentations)))]
            if square
            else [[i for i, (_, turns) in enumerate(augmentations) if turns % 2 == odd] for odd in (0, 1)]
        )
        for indices in groups:
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                feed_pixels = torch.cat([augment(pixels, *augmentations[i]) for i in chunk])
                feed_latent = torch.cat([augment(latent, *augmentations[i]) for i in chunk])
                outputs = forward(feed_pixels, feed_latent).clip(0, 1)
                for i, output in zip(chunk, outputs.split(1), strict=True):
                    results[i] = unaugment(output, *augmentations[i])
        return lower_median([r for r in results if r is not None]).clip(0, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, vae: SDXLVae, timer: StageTimer | None = None) -> list[np.ndarray]:
        """SDXL latents as the sampler returns them (model space) → RGBA ``uint8 [H, W, 4]`` arrays.

        ``timer`` splits the time into ``vae_decode`` and ``transparent_decode``.
        """
        timer = timer or StageTimer({}, self.device)
        images: list[np.ndarray] = []
        for latent in latents.split(1):
            # One image at a time: the SDXL VAE's activations at 1024² dominate peak memory.
            unscaled = to_vae_space(latent, vae)
            with timer("vae_decode"):
                decoded = vae.decode(unscaled.to(vae.dtype)).sample  # type: ignore[attr-defined]
                pixels = (decoded * 0.5 + 0.5).clip(0, 1)
            with timer("transparent_decode"):
                images.extend(to_rgba_uint8(self.estimate(pixels, unscaled)))
        return images
