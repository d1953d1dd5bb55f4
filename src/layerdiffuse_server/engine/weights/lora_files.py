"""Style LoRA files in the layouts people have, read into low-rank updates of SDXL's weights.

kohya/A1111 (``lora_unet_…``, ``lora_te1_…``, ``lora_te2_…`` with ``alpha``), diffusers (``….lora.down``,
``lora_linear_layer``, old attention-processor names) and PEFT (``….lora_A``/``lora_B``, with diffusers'
adapter metadata) are all brought to PEFT key names by diffusers' own converters, in the order its SDXL
LoRA loader applies them, so a file means here what it means to ``load_lora_weights``. What they yield
is checked against the models' weights: a file that fits none of the three, or was made for another
model, is refused naming its keys. Only the low-rank factors are kept (a few MB, where the dense
updates would be the size of the weights they change); each merge multiplies them out on the device.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ...errors import InvalidInputError

#: The models a style LoRA may change, by the prefix diffusers gives their keys.
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
#: Kohya/A1111 key prefixes (``lora_te_`` is SD 1.x's single text encoder, read as the first).
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
#: Metadata key under which diffusers stores each component's ``LoraConfig`` (``unet.lora_alpha`` …).
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
_FIELD = "loras"


@dataclass(frozen=True)
class LowRankUpdate:
    """``weight += scale · up @ down`` (conv LoRAs: ``down`` holds the kernel, ``up`` is 1×1)."""

    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    down: torch.Tensor  # [rank, in] or [rank, in, k, k]
    scale: float  # alpha / rank (alpha / √rank for rsLoRA)

    def delta(self, shape: torch.Size, *, device: torch.device, factor: float = 1.0) -> torch.Tensor:
        """The dense update of a weight of ``shape``, in float32 on ``device``."""
        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        return (up @ down).reshape(shape) * (self.scale * factor)

    @property
    def nbytes(self) -> int:
        return self.up.numel() * self.up.element_size() + self.down.numel() * self.down.element_size()


@dataclass(frozen=True)
class StyleLora:
    """A style LoRA file's updates: component (:data:`COMPONENTS`) → weight key → update."""

    name: str
    updates: dict[str, dict[str, LowRankUpdate]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(update.nbytes for part in self.updates.values() for update in part.values())

    @property
    def weight_count(self) -> int:
        return sum(len(part) for part in self.updates.values())


@dataclass(frozen=True)
class LoraTargets:
    """What a style LoRA file is checked against: each component's weight shapes, and the UNet's
    config (kohya's SDXL block numbers are remapped with it, as diffusers does)."""

    shapes: dict[str, dict[str, torch.Size]]
    unet_config: Any = None

    @classmethod
    def of(cls, sdxl: Any) -> LoraTargets:
        """The targets of a diffusers SDXL pipeline's UNet and text encoders."""
        shapes = {
            name: {key: value.shape for key, value in getattr(sdxl, name).named_parameters()}
            for name in COMPONENTS
            if getattr(sdxl, name, None) is not None
        }
        return cls(shapes, sdxl.unet.config)


def read_style_lora(path: Path, targets: LoraTargets) -> StyleLora:
    """Read a style LoRA safetensors file (kohya/A1111, diffusers or PEFT) into low-rank updates.

    Raises:
        InvalidInputError: a file that is no safetensors file, fits none of the layouts, or does
            not fit these models; the message names some of its keys.
    """
    raw, metadata = _load(path)
    if not raw:
        raise InvalidInputError(f"LoRA {path.name} holds no tensors", field=_FIELD)
    dora = [key for key in raw if "dora_scale" in key or "lora_magnitude_vector" in key]
    if dora:
        raise InvalidInputError(
            f"LoRA {path.name} is a DoRA ({_some(dora)}); only plain LoRAs can be merged", field=_FIELD
        )
    if all(key.startswith(KOHYA_PREFIXES) for key in raw):
        raw = _with_kohya_alphas_applied(raw)
    state_dict = _to_diffusers_layout(raw, targets, path)
    updates: dict[str, dict[str, LowRankUpdate]] = {}
    unplaced: list[str] = [key for key in state_dict if not key.startswith(tuple(f"{c}." for c in COMPONENTS))]
    for component in COMPONENTS:
        prefix = f"{component}."
        part = {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}
        if not part:
            continue
        if component not in targets.shapes:
            unplaced.extend(f"{prefix}{key}" for key in part)
            continue
        peft = _to_peft_names(component, part, targets.shapes[component])
        config = _adapter_config(metadata, component)
        placed, left = _pair_factors(peft, targets.shapes[component], config)
        unplaced.extend(f"{prefix}{key}" for key in left)
        if placed:
            updates[component] = placed
    if unplaced:
        raise InvalidInputError(
            f"LoRA {path.name} has keys that match no weight of this SDXL model: {_some(unplaced)} "
            "(kohya/A1111, diffusers and PEFT LoRAs for SDXL are read)",
            field=_FIELD,
        )
    if not updates:
        raise InvalidInputError(f"LoRA {path.name} changes no weight of this model", field=_FIELD)
    return StyleLora(path.name, updates)


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    try:
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidInputError(f"LoRA {path.name} is not a readable safetensors file: {error}", field=_FIELD) from None
    try:
        metadata = json.loads(header[ADAPTER_METADATA_KEY]) if ADAPTER_METADATA_KEY in header else None
    except json.JSONDecodeError:
        metadata = None  # diffusers ignores what it cannot parse too; the ranks then set the scale
    return tensors, metadata


def _with_kohya_alphas_applied(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kohya's ``alpha`` folded into each up factor (``alpha / rank``, per module, as kohya scales).

    diffusers turns alphas into one ``lora_alpha`` plus patterns keyed by names that, for kohya's
    attention modules, need not match a module, so files with mixed alphas could lose them; folded in, every
    module keeps its own, and a file with one alpha gives diffusers' numbers exactly.
    """
    scaled = dict(raw)
    for key in [key for key in raw if key.endswith(".alpha")]:
        name = key.removesuffix(".alpha")
        down, up = raw.get(f"{name}.lora_down.weight"), raw.get(f"{name}.lora_up.weight")
        if down is None or up is None:
            continue  # not a LoRA's (a LyCORIS module's, say): diffusers' converter names what it cannot read
        alpha = float(scaled.pop(key).float().item())
        scaled[f"{name}.lora_up.weight"] = up * (alpha / down.shape[0])
    return scaled


def _to_diffusers_layout(raw: dict[str, torch.Tensor], targets: LoraTargets, path: Path) -> dict[str, torch.Tensor]:
    """diffusers' own first step: kohya/A1111 keys renamed to diffusers', prefixed by component."""
    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin

    try:
        state_dict, _ = StableDiffusionXLLoraLoaderMixin.lora_state_dict(dict(raw), unet_config=targets.unet_config)
    except (ValueError, KeyError, IndexError) as error:
        raise InvalidInputError(
            f"LoRA {path.name} is in no layout this server reads ({_some(list(raw))}): {error}", field=_FIELD
        ) from None
    return dict(state_dict)


def _to_peft_names(
    component: str, part: dict[str, torch.Tensor], shapes: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """A component's keys in PEFT names (``<module>.lora_A.weight``), by diffusers' converters."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if component == "unet":
        return dict(convert_unet_state_dict_to_peft(part))
    try:
        converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    except ValueError:
        converted = part  # no layout diffusers knows: left as named, so the check below names the keys
    if not any(key.startswith("text_model.") for key in shapes):
        # transformers 5 flattened CLIPTextModel; files name its weights with the older "text_model." prefix
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    return dict(converted)


def _adapter_config(metadata: dict[str, Any] | None, component: str) -> dict[str, Any]:
    prefix = f"{component}."
    return {key.removeprefix(prefix): value for key, value in (metadata or {}).items() if key.startswith(prefix)}


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module name or its end."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern.removeprefix('^')})$", module):
            return value
    return None


def _module_scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """``alpha / rank`` as PEFT's ``LoraConfig`` sets it; without a config, alpha is the rank (1.0)."""
    if not config:
        return 1.0
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
    alpha = float(config.get("lora_alpha", rank) if alpha is None else alpha)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _pair_factors(
    peft: dict[str, torch.Tensor], shapes: Mapping[str, torch.Size], config: Mapping[str, Any]
) -> tuple[dict[str, LowRankUpdate], list[str]]:
    """Each module's ``lora_A``/``lora_B`` as the update of ``<module>.weight``; the keys that fit none."""
    placed: dict[str, LowRankUpdate] = {}
    left: list[str] = []
    for key, down in peft.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                left.append(key)
            continue
        module = key.removesuffix(".lora_A.weight")
        up = peft.get(f"{module}.lora_B.weight")
        target = f"{module}.weight"
        shape = shapes.get(target)
        if up is None or shape is None or not _fits(up, down, shape):
            left.append(key)
            continue
        placed[target] = LowRankUpdate(up, down, _module_scale(config, module, down.shape[0]))
    left.extend(
        key
        for key in peft
        if key.endswith(".lora_B.weight") and f"{key.removesuffix('.lora_B.weight')}.weight" not in placed
    )
    return placed, left


def _fits(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> bool:
    if up.ndim != down.ndim or up.ndim not in (2, 4) or len(shape) != up.ndim or up.shape[1] != down.shape[0]:
        return False
    if up.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
        return False
    return (up.shape[0], *down.shape[1:]) == tuple(shape)


def _some(keys: list[str], count: int = 4) -> str:
    shown = ", ".join(sorted(keys)[:count])
    return f"{shown} and {len(keys) - count} more" if len(keys) > count else shown
