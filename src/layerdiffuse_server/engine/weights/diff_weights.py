"""LayerDiffuse "diff" files: dense UNet weight offsets under SGM names, merged into a diffusers UNet.

Five official files use Forge's frozen-patcher "diff" format, ``diffusion_model.<SGM path>::diff::0`` → Δ:

* ``layer_xl_transparent_conv.safetensors``: the conv-injection alternative to the attention LoRA,
  an offset for every layer that is not an attention q/k/v projection;
* ``layer_xl_fg2ble`` / ``layer_xl_bg2ble`` (conv_in takes 8 channels: latent + one condition latent)
  and ``layer_xl_fgble2bg`` / ``layer_xl_bgble2fg`` (12: latent + two) for conditioned layer generation.

Forge applies each as ``W += strength · Δ``; where a 4-D Δ is larger than W (the widened conv_in) W is
zero-padded to Δ's shape first, so the base model's response to the latent channels is kept and the
condition channels start from zero. Like :mod:`.attention_weights`, a file that does not fit the UNet
exactly is refused with the offending keys named, and the whole file is checked before any weight
changes, so a bad file never leaves a half-patched model.

A file is parsed from its header alone and its offsets are read at merge time, one tensor at a time
from the memory-mapped file: a conditioned model is merged at each switch to it, and keeping its
0.7–3.6 GB of offsets in host memory between switches would hold them for the life of the process.
The file's size, modification time and header are checked again before the first weight changes,
so a file replaced or truncated since it was checked is refused rather than merged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ...errors import WeightFormatError
from .unet_keys import SDXL_LAYOUT, UnetLayout, sgm_to_diffusers_name

DIFF_PREFIX = "diffusion_model."
DIFF_SUFFIX = "::diff::0"
#: The one parameter a "diff" file may widen: the conditioned models' conv_in takes extra input channels.
WIDENED_PARAMETER = "conv_in.weight"


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")


def _describe(source: object) -> str:
    return f"'{source}'" if isinstance(source, (str, Path)) else "The given state dict"


@dataclass(frozen=True)
class DiffFile:
    """Where a "diff" file's offsets are read from at merge time, and what it held when it was checked.

    Attributes:
        path: the safetensors file.
        keys: diffusers parameter name → the file's key.
        header: the file's key → (dtype, shape) as its header gave them.
        stamp: (size in bytes, modification time in ns) when it was checked.
    """

    path: Path
    keys: Mapping[str, str]
    header: Mapping[str, tuple[str, tuple[int, ...]]]
    stamp: tuple[int, int]

    @classmethod
    def open(cls, path: Path, targets: Mapping[str, str]) -> DiffFile:
        stamp = _stamp(path)
        return cls(path, {target: key for key, target in targets.items()}, _header(path), stamp)

    def tensors(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Each Δ of ``names``, read from the mapped file when it is asked for; nothing stays resident.

        Raises:
            WeightFormatError: before the first Δ, when the file changed since it was checked
                (size, modification time or header) or can no longer be read as safetensors.
        """
        changed = f"'{self.path}' changed since it was checked; load the layer model again (restart the worker)"
        if _stamp(self.path) != self.stamp:
            raise WeightFormatError(changed)
        try:
            with safe_open(str(self.path), framework="pt") as file:
                if _header_of(file) != self.header:
                    raise WeightFormatError(changed)
                for name in names:
                    yield name, file.get_tensor(self.keys[name])
        except SafetensorError as error:
            raise WeightFormatError(f"{changed}: {error}") from None


def _stamp(path: Path) -> tuple[int, int]:
    try:
        status = os.stat(path)
    except OSError as error:
        raise WeightFormatError(f"'{path}' can no longer be read: {error}") from None
    return status.st_size, status.st_mtime_ns


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    try:
        with safe_open(str(path), framework="pt") as file:
            return _header_of(file)
    except SafetensorError as error:
        raise WeightFormatError(f"'{path}' is not a readable safetensors file: {error}") from None


def _header_of(file: object) -> dict[str, tuple[str, tuple[int, ...]]]:
    header: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key in file.keys():  # type: ignore[attr-defined]  # noqa: SIM118 (not a dict)
        part = file.get_slice(key)  # type: ignore[attr-defined]
        header[key] = (part.get_dtype(), tuple(part.get_shape()))
    return header


@dataclass(frozen=True)
class DiffWeights:
    """A LayerDiffuse "diff" file, parsed and keyed by diffusers UNet parameter names.

    Attributes:
        shapes: diffusers parameter name → Δ's shape.
        source: where it came from, for error messages.
        file: where the offsets are read at merge time (None: ``state`` holds them).
        state: the offsets of a state dict given in memory, by diffusers name.
    """

    shapes: Mapping[str, torch.Size]
    source: str = "The given state dict"
    file: DiffFile | None = None
    state: Mapping[str, torch.Tensor] | None = None

    @classmethod
    def load(cls, source: str | Path | Mapping[str, torch.Tensor], layout: UnetLayout = SDXL_LAYOUT) -> DiffWeights:
        """Parse a "diff" file (a path or an already loaded state dict).

        A file is parsed from its header alone: names and shapes are checked before any tensor is
        read (a wrong 3.6 GB file fails at once), and the offsets are read at merge time.

        Raises:
            WeightFormatError: keys that are not ``diffusion_model.<SGM parameter path>::diff::0`` of a UNet
                with ``layout``, all of them named; a file that is not safetensors.
        """
        if isinstance(source, (str, Path)):
            path = Path(source)
            diff_file = DiffFile.open(path, _targets(_header(path), source, layout))
            shapes = {name: torch.Size(diff_file.header[key][1]) for name, key in diff_file.keys.items()}
            return cls(shapes, _describe(source), file=diff_file)
        state = dict(source)
        targets = _targets(state, source, layout)
        deltas = {target: state[key] for key, target in targets.items()}
        return cls({name: delta.shape for name, delta in deltas.items()}, _describe(source), state=deltas)

    def deltas(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every (diffusers name, Δ), in name order, read one at a time from the file."""
        if self.file is not None:
            yield from self.file.tensors(self.shapes)
        else:
            assert self.state is not None
            yield from self.state.items()

    def check(self, unet_shapes: Mapping[str, torch.Size]) -> int:
        """Refuse offsets that do not fit this UNet; returns the conditioning channels conv_in gains.

        Every Δ must have its parameter's shape, except that ``conv_in.weight`` may have more input
        channels (the conditioned models), a whole number of latents more. Returns 0 for the
        unconditioned files, 4 for fg2ble/bg2ble and 8 for fgble2bg/bgble2fg on SDXL.

        Raises:
            WeightFormatError: the offending keys, with both shapes.
        """
        unknown = sorted(set(self.shapes) - set(unet_shapes))
        if unknown:
            raise WeightFormatError(f"{self.source} names UNet weights that do not exist: {_listing(unknown)}")
        mismatched = [
            f"{key} {list(shape)} vs UNet {list(unet_shapes[key])}"
            for key, shape in self.shapes.items()
            if shape != unet_shapes[key] and not (key == WIDENED_PARAMETER and _widens(unet_shapes[key], shape))
        ]
        if mismatched:
            raise WeightFormatError(
                f"{self.source} does not fit this UNet (is the base model SDXL? conv_in may only gain whole "
                "latents of input channels): " + _listing(mismatched, 4)
            )
        if WIDENED_PARAMETER not in self.shapes:
            return 0
        return int(self.shapes[WIDENED_PARAMETER][1] - unet_shapes[WIDENED_PARAMETER][1])


def _widens(weight_shape: torch.Size, delta: torch.Size) -> bool:
    """Whether Δ is conv_in widened by whole latents: same outputs and kernel, more input channels."""
    if len(delta) != 4 or len(weight_shape) != 4:
        return False
    extra = delta[1] - weight_shape[1]
    same_otherwise = delta[0] == weight_shape[0] and delta[2:] == weight_shape[2:]
    return same_otherwise and extra > 0 and extra % weight_shape[1] == 0


def _targets(keys: Iterable[str], source: object, layout: UnetLayout) -> dict[str, str]:
    """File key → diffusers name, in diffusers-name order; refuses the file with every bad key named.

    Only ``::diff::0`` is accepted and the SGM ↔ diffusers map is one-to-one, so two keys can never
    offset the same weight.
    """
    keys = list(keys)
    if not keys:
        raise WeightFormatError(f"LayerDiffuse diff file {_describe(source)} holds no tensors.")
    other_format = sorted(key for key in keys if not key.endswith(DIFF_SUFFIX))
    if other_format:
        hint = (
            " (a '::lora::' file is the attention LoRA, layer_xl_transparent_attn.safetensors)"
            if any("::lora::" in key for key in other_format)
            else ""
        )
        raise WeightFormatError(
            f"{_describe(source)} has keys that are not Forge 'diff' offsets "
            f"('diffusion_model.<SGM parameter path>::diff::0'){hint}: {_listing(other_format)}"
        )
    targets: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        name = key.removesuffix(DIFF_SUFFIX)
        try:
            if not name.startswith(DIFF_PREFIX):
                raise KeyError(name)
            targets[key] = sgm_to_diffusers_name(name.removeprefix(DIFF_PREFIX), layout)
        except KeyError:
            unknown.append(key)
    if unknown:
        raise WeightFormatError(
            f"{_describe(source)} has keys that name no parameter of an SDXL UNet: {_listing(sorted(unknown))}"
        )
    return dict(sorted(targets.items(), key=lambda item: item[1]))


def apply_diff(weight: torch.Tensor, delta: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``weight + strength · delta`` as Forge computes it: in float32, returned in ``weight``'s dtype and device.

    A 4-D ``delta`` larger than ``weight`` (conv_in of the conditioned models) first zero-pads
    ``weight`` to its shape: the latent channels keep the base model's filters plus Δ, the new
    condition channels get Δ alone.

    Raises:
        ValueError: the shapes differ in any other way.
    """
    base = weight.detach().float()
    if base.shape != delta.shape:
        larger = delta.ndim == base.ndim == 4 and all(d >= w for d, w in zip(delta.shape, base.shape, strict=True))
        if not larger:
            raise ValueError(f"offset {list(delta.shape)} does not fit weight {list(weight.shape)}")
        padded = base.new_zeros(delta.shape)
        padded[tuple(slice(0, size) for size in base.shape)] = base
        base = padded
    offset = delta.to(device=weight.device, dtype=torch.float32)
    return torch.add(base, offset, alpha=strength).to(weight.dtype)


@torch.no_grad()
def merge_diff_weights(unet: torch.nn.Module, weights: DiffWeights, strength: float = 1.0) -> int:
    """Add the offsets into ``unet``'s weights in place; returns how many tensors were changed.

    The offsets are read one at a time, so the merge holds one Δ (and its float32 sum) at a time.

    A widened conv_in gets a new, larger weight parameter and ``in_channels``; ``unet.config.in_channels``
    stays the latent channel count, which is what the pipeline reads to make latents (the condition
    latents are concatenated to them at every step).
    """
    parameters = dict(unet.named_parameters())
    weights.check({key: parameter.shape for key, parameter in parameters.items()})
    for key, delta in weights.deltas():
        parameter = parameters[key]
        merged = apply_diff(parameter, delta, strength)
        if merged.shape == parameter.shape:
            parameter.copy_(merged)
        else:
            _replace_parameter(unet, key, merged, parameter.requires_grad)
    return len(weights.shapes)


def _replace_parameter(unet: torch.nn.Module, key: str, value: torch.Tensor, requires_grad: bool) -> None:
    module_name, _, attribute = key.rpartition(".")
    module = unet.get_submodule(module_name)
    setattr(module, attribute, torch.nn.Parameter(value, requires_grad=requires_grad))
    if isinstance(module, torch.nn.Conv2d):
        module.in_channels = value.shape[1]
