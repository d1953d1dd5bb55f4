"""LayerDiffuse attention weights: both official file formats, turned into UNet weight deltas.

Two files carry the same 560 attention-projection updates of the SDXL UNet:

* ``layer_xl_transparent_attn.safetensors`` (Forge/ComfyUI): a rank-256 LoRA in Forge's
  "frozen patcher" format, ``diffusion_model.<SGM path>.weight::lora::0`` (up, ``[out, r]``) and
  ``::lora::1`` (down, ``[r, in]``), applied as ``W += strength * up @ down`` with no alpha scaling;
* ``ld_diffusers_sdxl_attn.safetensors`` (official diffusers CLI): dense offsets under diffusers
  names, applied as ``W += strength * offset``.

Both are merged once into the UNet weights, so generation pays nothing per step. Unlike the
reference loaders, a file that does not fit the UNet exactly is refused with the offending keys
named: a silently ignored key produces opaque images that look like a model problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

from ...errors import WeightFormatError

#: SGM (original Stability) transformer-block paths → diffusers module prefixes, for SDXL's
#: UNet (layers_per_block=2, attention on the two inner levels). Checked against diffusers' own
#: SGM→diffusers LoRA converter. One widely copied port swaps input_blocks 7.1 and 8.1; the shapes
#: agree, so that mistake loads silently — this table is the one that matches the real topology.
SGM_TO_DIFFUSERS_BLOCKS: Mapping[str, str] = {
    "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1",
    "input_blocks.7.1": "down_blocks.2.attentions.0",
    "input_blocks.8.1": "down_blocks.2.attentions.1",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.0.1": "up_blocks.0.attentions.0",
    "output_blocks.1.1": "up_blocks.0.attentions.1",
    "output_blocks.2.1": "up_blocks.0.attentions.2",
    "output_blocks.3.1": "up_blocks.1.attentions.0",
    "output_blocks.4.1": "up_blocks.1.attentions.1",
    "output_blocks.5.1": "up_blocks.1.attentions.2",
}

_ATTENTION_SUFFIX = r"transformer_blocks\.\d+\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0)\.weight"
_SGM_KEY = re.compile(rf"^diffusion_model\.(?P<block>.+?\.\d+\.\d+|middle_block\.1)\.(?P<suffix>{_ATTENTION_SUFFIX})$")
_DIFFUSERS_ATTENTION_KEY = re.compile(rf"^(?:down_blocks|up_blocks|mid_block)\..+\.{_ATTENTION_SUFFIX}$")

AttentionFormat = Literal["forge_lora", "diffusers_offsets"]


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")


def sgm_to_diffusers_key(sgm_key: str) -> str:
    """Translate ``diffusion_model.<SGM block>.transformer_blocks.…weight`` to its diffusers name.

    Raises:
        KeyError: the key is not an attention projection of a block in :data:`SGM_TO_DIFFUSERS_BLOCKS`.
    """
    match = _SGM_KEY.match(sgm_key)
    if not match or match["block"] not in SGM_TO_DIFFUSERS_BLOCKS:
        raise KeyError(sgm_key)
    return f"{SGM_TO_DIFFUSERS_BLOCKS[match['block']]}.{match['suffix']}"


def attention_projection_keys(unet_shapes: Mapping[str, torch.Size]) -> set[str]:
    """The UNet weights LayerDiffuse updates: every attn1/attn2 q, k, v and output projection."""
    return {key for key in unet_shapes if _DIFFUSERS_ATTENTION_KEY.match(key)}


@dataclass(frozen=True)
class AttentionWeights:
    """A LayerDiffuse attention file, parsed and keyed by diffusers UNet names.

    ``factors`` holds ``(up, down)`` for the LoRA format and ``(offset, None)`` for dense offsets.
    """

    format: AttentionFormat
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]

    @classmethod
    def load(cls, source: str | Path | Mapping[str, torch.Tensor]) -> AttentionWeights:
        """Parse either official file (a path or an already loaded state dict)."""
        state = load_file(str(source)) if isinstance(source, (str, Path)) else dict(source)
        if not state:
            raise WeightFormatError(f"LayerDiffuse attention file {_describe(source)} holds no tensors.")
        if any("::" in key for key in state):
            return cls._from_forge(state, source)
        return cls._from_diffusers(state, source)

    @classmethod
    def _from_forge(cls, state: Mapping[str, torch.Tensor], source: object) -> AttentionWeights:
        halves: dict[str, dict[str, torch.Tensor]] = {}
        unknown: list[str] = []
        for key, tensor in state.items():
            model_key, _, rest = key.partition("::")
            patch_type, _, index = rest.partition("::")
            if patch_type == "diff":
                raise WeightFormatError(
                    f"{_describe(source)} is a LayerDiffuse conv-injection ('::diff::') file; this server "
                    "uses the attention-injection weights (layer_xl_transparent_attn.safetensors)."
                )
            try:
                target = sgm_to_diffusers_key(model_key)
            except KeyError:
                unknown.append(key)
                continue
            if patch_type != "lora" or index not in ("0", "1"):
                unknown.append(key)
                continue
            halves.setdefault(target, {})[index] = tensor
        if unknown:
            raise WeightFormatError(
                f"{_describe(source)} has keys that are not SDXL attention LoRA weights "
                f"('diffusion_model.<block>.transformer_blocks.N.attnM.to_x.weight::lora::0|1'): {_listing(unknown)}"
            )
        incomplete = sorted(t for t, pair in halves.items() if set(pair) != {"0", "1"})
        if incomplete:
            raise WeightFormatError(
                f"{_describe(source)} lacks the up (::lora::0) or down (::lora::1) half for: {_listing(incomplete)}"
            )
        bad_rank = sorted(
            t
            for t, pair in halves.items()
            if pair["0"].ndim != 2 or pair["1"].ndim != 2 or pair["0"].shape[1] != pair["1"].shape[0]
        )
        if bad_rank:
            raise WeightFormatError(
                f"{_describe(source)} has LoRA halves whose shapes do not multiply ([out, r] @ [r, in]): "
                f"{_listing(bad_rank)}"
            )
        return cls("forge_lora", {t: (pair["0"], pair["1"]) for t, pair in sorted(halves.items())})

    @classmethod
    def _from_diffusers(cls, state: Mapping[str, torch.Tensor], source: object) -> AttentionWeights:
        unknown = sorted(key for key in state if not _DIFFUSERS_ATTENTION_KEY.match(key))
        if unknown:
            raise WeightFormatError(
                f"{_describe(source)} has keys that are not diffusers UNet attention projection weights: "
                f"{_listing(unknown)}"
            )
        return cls("diffusers_offsets", {key: (tensor, None) for key, tensor in sorted(state.items())})

    def delta_shape(self, key: str) -> torch.Size:
        first, second = self.factors[key]
        return first.shape if second is None else torch.Size((first.shape[0], second.shape[1]))

    def validate_against(self, unet_shapes: Mapping[str, torch.Size]) -> None:
        """Refuse weights that would not update exactly this UNet's attention projections."""
        expected = attention_projection_keys(unet_shapes)
        unknown = sorted(set(self.factors) - set(unet_shapes))
        if unknown:
            raise WeightFormatError(f"LayerDiffuse weights name UNet weights that do not exist: {_listing(unknown)}")
        mismatched = [
            f"{key} {list(self.delta_shape(key))} vs UNet {list(unet_shapes[key])}"
            for key in self.factors
            if self.delta_shape(key) != unet_shapes[key]
        ]
        if mismatched:
            raise WeightFormatError(
                "LayerDiffuse weights do not fit this UNet (is the base model SDXL?): " + _listing(mismatched, 4)
            )
        missing = sorted(expected - set(self.factors))
        if missing:
            raise WeightFormatError(
                f"LayerDiffuse weights cover {len(self.factors)} of the UNet's {len(expected)} attention "
                f"projections; missing: {_listing(missing)}"
            )

    def deltas(self, strength: float = 1.0) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(diffusers key, dense float32 delta)``, one at a time to bound memory."""
        for key, (first, second) in self.factors.items():
            delta = first.float() if second is None else first.float() @ second.float()
            yield key, delta if strength == 1.0 else delta * strength


def attention_deltas(source: str | Path | Mapping[str, torch.Tensor], strength: float = 1.0) -> dict[str, torch.Tensor]:
    """Turn either LayerDiffuse attention file (path or state dict) into diffusers-named UNet deltas."""
    return dict(AttentionWeights.load(source).deltas(strength))


@torch.no_grad()
def merge_attention_weights(unet: torch.nn.Module, weights: AttentionWeights, strength: float = 1.0) -> int:
    """Add the LayerDiffuse deltas into ``unet``'s weights in place; returns how many were changed.

    The whole file is validated before the first weight is touched, so a bad file never leaves a
    half-patched model behind. Sums are done in float32 and cast back to the weight's dtype.
    """
    parameters = dict(unet.named_parameters())
    weights.validate_against({key: p.shape for key, p in parameters.items()})
    for key, delta in weights.deltas(strength):
        parameter = parameters[key]
        merged = parameter.float() + delta.to(parameter.device)
        parameter.copy_(merged.to(parameter.dtype))
    return len(weights.factors)


def _describe(source: object) -> str:
    return f"'{source}'" if isinstance(source, (str, Path)) else "The given state dict"
