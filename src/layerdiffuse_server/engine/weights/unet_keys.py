"""SGM (original Stability / LDM) ↔ diffusers parameter names of an SDXL-topology UNet.

Forge and ComfyUI name UNet weights as the original ``sgm`` code does (``input_blocks.4.1.proj_in.weight``);
diffusers names the same tensors after its own modules (``down_blocks.1.attentions.0.proj_in.weight``).
LayerDiffuse files use the former, our UNet the latter. The map is derived from the UNet's block layout
rather than typed out per key, so it covers SDXL and any smaller model with SDXL's block structure (the
``tiny`` preset) alike, and it is strict: a name that is not a parameter path of such a UNet raises
instead of being guessed at, because a silently dropped weight shows up only as bad images.

Layout (``L`` = layers per block, levels ``i`` counted from the top)::

    input_blocks.0.0                        conv_in
    input_blocks.{1+i(L+1)+j}.0 / .1        down_blocks.i.resnets.j / .attentions.j      (j < L)
    input_blocks.{1+i(L+1)+L}.0.op          down_blocks.i.downsamplers.0.conv            (not the last level)
    middle_block.0 / .1 / .2                mid_block.resnets.0 / .attentions.0 / .resnets.1
    output_blocks.{i(L+1)+j}.0 / .1         up_blocks.i.resnets.j / .attentions.j        (j ≤ L)
    output_blocks.{i(L+1)+L}.{1|2}.conv     up_blocks.i.upsamplers.0.conv                (index 2 after an attention)
    time_embed.0 / .2, label_emb.0.0 / .2   time_embedding.linear_1 / _2, add_embedding.linear_1 / _2
    out.0 / out.2                           conv_norm_out / conv_out

Inside a resnet ``in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection`` are
``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut``; inside a transformer the names are identical.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: What the parameter names below a mapped module look like, and whether they are renamed.
ModuleKind = Literal["plain", "resnet", "transformer"]

_DOWN_BLOCKS = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
_UP_BLOCKS = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
_RESNET_LAYERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_REVERSED_RESNET_LAYERS = {name: sgm for sgm, name in _RESNET_LAYERS.items()}
_TRANSFORMER_PARAMETER = re.compile(
    r"^(?:norm|proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(?:norm[123]|attn[12]\.to_(?:q|k|v|out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
    r"\.(?:weight|bias)$"
)
_TOP_LEVEL = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


@dataclass(frozen=True)
class UnetLayout:
    """The part of a UNet's configuration that decides its SGM names.

    Attributes:
        down_attention: per level, from the top: whether its down block has transformers.
        up_attention: per level, from the bottom (diffusers' ``up_blocks`` order).
        layers_per_block: resnets per down block (up blocks have one more).
    """

    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    layers_per_block: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UnetLayout:
        """Read the layout off a ``UNet2DConditionModel`` config (or the keyword arguments that build one).

        Raises:
            ValueError: the UNet is not built like SDXL's, so SGM names would not describe it.
        """
        down = tuple(config.get("down_block_types", ()))
        up = tuple(config.get("up_block_types", ()))
        layers = config.get("layers_per_block", 2)
        problems = [f"down block type {t!r}" for t in down if t not in _DOWN_BLOCKS]
        problems += [f"up block type {t!r}" for t in up if t not in _UP_BLOCKS]
        if not down or len(down) != len(up):
            problems.append(f"{len(down)} down and {len(up)} up blocks")
        if not isinstance(layers, int):
            problems.append(f"layers_per_block={layers!r} (one number for every level is needed)")
        if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
            problems.append(f"mid_block_type={config['mid_block_type']!r}")
        if config.get("class_embed_type") is not None:
            problems.append(f"class_embed_type={config['class_embed_type']!r}")
        if config.get("addition_embed_type") not in (None, "text_time"):
            problems.append(f"addition_embed_type={config['addition_embed_type']!r}")
        if problems:
            raise ValueError("this UNet does not have SDXL's block structure: " + ", ".join(problems))
        return cls(
            down_attention=tuple(_DOWN_BLOCKS[t] for t in down),
            up_attention=tuple(_UP_BLOCKS[t] for t in up),
            layers_per_block=layers,
        )


#: SDXL base's layout: attention on the two inner levels, two resnets per down block.
SDXL_LAYOUT = UnetLayout(down_attention=(False, True, True), up_attention=(True, True, False), layers_per_block=2)


@functools.cache
def module_table(layout: UnetLayout) -> Mapping[str, tuple[str, ModuleKind]]:
    """SGM module path → (diffusers module path, kind), for every module that holds parameters."""
    table: dict[str, tuple[str, ModuleKind]] = {sgm: (name, "plain") for sgm, name in _TOP_LEVEL.items()}
    per_level = layout.layers_per_block + 1
    levels = len(layout.down_attention)
    for level, attention in enumerate(layout.down_attention):
        for layer in range(layout.layers_per_block):
            index = 1 + level * per_level + layer
            table[f"input_blocks.{index}.0"] = (f"down_blocks.{level}.resnets.{layer}", "resnet")
            if attention:
                table[f"input_blocks.{index}.1"] = (f"down_blocks.{level}.attentions.{layer}", "transformer")
        if level < levels - 1:
            table[f"input_blocks.{1 + level * per_level + layout.layers_per_block}.0.op"] = (
                f"down_blocks.{level}.downsamplers.0.conv",
                "plain",
            )
    table["middle_block.0"] = ("mid_block.resnets.0", "resnet")
    table["middle_block.1"] = ("mid_block.attentions.0", "transformer")
    table["middle_block.2"] = ("mid_block.resnets.1", "resnet")
    for level, attention in enumerate(layout.up_attention):
        for layer in range(per_level):
            index = level * per_level + layer
            table[f"output_blocks.{index}.0"] = (f"up_blocks.{level}.resnets.{layer}", "resnet")
            if attention:
                table[f"output_blocks.{index}.1"] = (f"up_blocks.{level}.attentions.{layer}", "transformer")
        if level < levels - 1:
            last = level * per_level + layout.layers_per_block
            table[f"output_blocks.{last}.{2 if attention else 1}.conv"] = (
                f"up_blocks.{level}.upsamplers.0.conv",
                "plain",
            )
    return table


@functools.cache
def _reverse_table(layout: UnetLayout) -> Mapping[str, tuple[str, ModuleKind]]:
    return {name: (sgm, kind) for sgm, (name, kind) in module_table(layout).items()}


def _translate_parameter(suffix: str, kind: ModuleKind, renames: Mapping[str, str]) -> str | None:
    if kind == "plain":
        return suffix if suffix in ("weight", "bias") else None
    if kind == "transformer":
        return suffix if _TRANSFORMER_PARAMETER.match(suffix) else None
    layer, _, parameter = suffix.rpartition(".")
    return f"{renames[layer]}.{parameter}" if layer in renames and parameter in ("weight", "bias") else None


def _translate(name: str, table: Mapping[str, tuple[str, ModuleKind]], renames: Mapping[str, str]) -> str:
    # Module paths in the table never nest, so the first (longest) prefix found is the only candidate.
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        entry = table.get(".".join(parts[:cut]))
        if entry is not None:
            target, kind = entry
            parameter = _translate_parameter(".".join(parts[cut:]), kind, renames)
            if parameter is None:
                break
            return f"{target}.{parameter}"
    raise KeyError(name)


def sgm_to_diffusers_name(name: str, layout: UnetLayout = SDXL_LAYOUT) -> str:
    """The diffusers name of an SGM parameter path (no ``diffusion_model.`` prefix).

    Raises:
        KeyError: ``name`` is not a parameter path of a UNet with this layout.
    """
    return _translate(name, module_table(layout), _RESNET_LAYERS)


def diffusers_to_sgm_name(name: str, layout: UnetLayout = SDXL_LAYOUT) -> str:
    """The SGM parameter path (no ``diffusion_model.`` prefix) of a diffusers UNet parameter name.

    Raises:
        KeyError: ``name`` is not a parameter of a UNet with this layout.
    """
    return _translate(name, _reverse_table(layout), _REVERSED_RESNET_LAYERS)


def sgm_names(config: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """Diffusers name → SGM name for every parameter in ``names`` of a UNet with this ``config``.

    Raises:
        ValueError: the config is not SDXL-shaped, or some names have no SGM counterpart (all listed).
    """
    layout = UnetLayout.from_config(config)
    mapped: dict[str, str] = {}
    unmapped: list[str] = []
    for name in names:
        try:
            mapped[name] = diffusers_to_sgm_name(name, layout)
        except KeyError:
            unmapped.append(name)
    if unmapped:
        raise ValueError(f"UNet parameters without an SGM name: {', '.join(unmapped[:8])}")
    return mapped
