"""Named model sets: ``sdxl`` (the real weights), ``demo`` (a small model made by ``train-demo``, shipped
with the package), ``tiny`` and ``sdxl-random`` (random weights).

A preset is only a set of weight references (see :mod:`.weights.sources`). The random presets are written
to disk on first use; every preset is in the official file formats and loads like real weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..command_name import command
from .catalog import PRESETS
from .making.random_weights import SDXL_SPEC, TINY_SPEC, ArchitectureSpec, write_random_preset
from .weights.sources import parse_reference, resolve_file, resolve_folder

logger = logging.getLogger(__name__)

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
LAYERDIFFUSE_REPO = "LayerDiffusion/layerdiffusion-v1"
#: The conditioned-layer models, named as their files (``layer_xl_<task>.safetensors``).
LAYER_TASKS = ("fg2ble", "bg2ble", "fgble2bg", "bgble2fg")
SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass(frozen=True)
class ModelSources:
    """The four things a transparent SDXL pipeline is made of.

    Attributes:
        base: SDXL in diffusers layout (hub repo id or local folder) or a single-file ``.safetensors``.
        base_variant: weight-file variant of a diffusers-layout base (``fp16`` on the hub's SDXL).
        layer_weights: LayerDiffuse attention weights, either official format.
        decoder: the transparent VAE decoder file.
        encoder: the transparent VAE encoder file (image inputs), where the preset has one.
        layers: the conditioned-layer models by task (``fg2ble``, ``bg2ble``, ``fgble2bg``,
            ``bgble2fg``), loaded on first use.
        safety_checker: a safety-checker model folder or repo, or ``None`` to load none.
        cpu_dtype: default dtype on CPU (bfloat16 is ~4× faster than float32 with AMX).
        native_size: the side (pixels) it was trained at: what a request without a size gets.
        single_file_config: a diffusers folder or repo of the same architecture whose configs and
            tokenizers a single-file base loads with (default: the hub's SDXL base).
    """

    base: str
    layer_weights: str
    decoder: str
    encoder: str | None = None
    layers: Mapping[str, str] = field(default_factory=dict)
    safety_checker: str | None = SAFETY_CHECKER
    base_variant: str | None = None
    cpu_dtype: torch.dtype = torch.float32
    native_size: int = 1024
    single_file_config: str | None = None

    def as_checkpoint(self, base: str) -> ModelSources:
        """These sources with another SDXL base (an operator's named checkpoint) under the same
        LayerDiffuse files; a single-file checkpoint takes its configs from this base where it is a
        diffusers folder or repo (offline, and of the same architecture)."""
        config = self.single_file_config if self.base.endswith(".safetensors") else self.base
        return replace(self, base=base, base_variant=None, single_file_config=config)

    def with_overrides(self, **overrides: str | None) -> ModelSources:
        """Replace some references (``None`` values are ignored); a new base drops the variant guess."""
        given: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
        if "base" in given and "base_variant" not in given:
            given["base_variant"] = None
        return replace(self, **given)


SDXL_SOURCES = ModelSources(
    base=SDXL_BASE,
    base_variant="fp16",
    layer_weights=f"{LAYERDIFFUSE_REPO}/layer_xl_transparent_attn.safetensors",
    decoder=f"{LAYERDIFFUSE_REPO}/vae_transparent_decoder.safetensors",
    encoder=f"{LAYERDIFFUSE_REPO}/vae_transparent_encoder.safetensors",
    layers={task: f"{LAYERDIFFUSE_REPO}/layer_xl_{task}.safetensors" for task in LAYER_TASKS},
    cpu_dtype=torch.bfloat16,
)

#: The demo model's files, shipped in the package (``layerdiffuse train-demo`` makes them).
DEMO_FOLDER = Path(__file__).parents[1] / "demo" / "weights"
#: The side of the demo's sprites: its native size.
DEMO_SIZE = 128


def demo_sources(folder: Path = DEMO_FOLDER) -> ModelSources:
    """The demo preset's files in ``folder``, laid out as :func:`.making.demo_training.train_demo` writes them."""
    return ModelSources(
        base=str(folder / "base"),
        base_variant="fp16",
        layer_weights=str(folder / "layer_xl_transparent_attn.safetensors"),
        decoder=str(folder / "vae_transparent_decoder.safetensors"),
        encoder=str(folder / "vae_transparent_encoder.safetensors"),
        safety_checker=str(folder / "safety_checker"),
        native_size=DEMO_SIZE,
    )


#: Random presets: name → (spec, version). Bump the version when the generated files change.
RANDOM_PRESETS: dict[str, tuple[ArchitectureSpec, int]] = {"tiny": (TINY_SPEC, 3), "sdxl-random": (SDXL_SPEC, 2)}
PRESET_NAMES = tuple(PRESETS)


def ensure_random_preset(name: str, presets_dir: Path) -> Path:
    """Write a random preset's files once; later calls (and other processes) reuse them."""
    spec, version = RANDOM_PRESETS[name]
    folder = presets_dir / f"{name}-v{version}"
    if (folder / "COMPLETE").exists():
        return folder
    presets_dir.mkdir(parents=True, exist_ok=True)
    logger.info("Writing the random-weight preset %r to %s (once)", name, folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=presets_dir))
    try:
        write_random_preset(spec, staging)
        (staging / "COMPLETE").write_text(f"{name} v{version}\n")
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / "COMPLETE").exists():  # not a concurrent writer winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def preset_sources(name: str, presets_dir: Path) -> ModelSources:
    """The weight references of a preset, writing a random preset's files if needed."""
    if name == "sdxl":
        return SDXL_SOURCES
    if name == "demo":
        if not (DEMO_FOLDER / "MANIFEST.json").is_file():
            raise ValueError(
                f"the demo model's files are missing from {DEMO_FOLDER}; reinstall the package, or make them "
                f"with `{command('train-demo')} {DEMO_FOLDER}`"
            )
        return demo_sources()
    if name not in RANDOM_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    folder = ensure_random_preset(name, presets_dir)
    spec, _ = RANDOM_PRESETS[name]
    layers = {task: str(folder / f"layer_xl_{task}.safetensors") for task in LAYER_TASKS} if spec.layer_models else {}
    return ModelSources(
        base=str(folder / "base"),
        base_variant=spec.variant,
        layer_weights=str(folder / "layer_xl_transparent_attn.safetensors"),
        decoder=str(folder / "vae_transparent_decoder.safetensors"),
        encoder=str(folder / "vae_transparent_encoder.safetensors"),
        layers=layers,
        safety_checker=str(folder / "safety_checker"),
        cpu_dtype=torch.float32 if name == "tiny" else torch.bfloat16,
    )


def base_allow_patterns(variant: str | None) -> list[str]:
    """The files of a diffusers SDXL repo we need: configs, tokenizers and one weight variant."""
    weights = [f"*.{variant}.safetensors"] if variant else ["diffusion_pytorch_model.safetensors", "model.safetensors"]
    patterns = ["model_index.json"]
    for component in PIPELINE_COMPONENTS:
        patterns += [f"{component}/*.json", f"{component}/*.txt", *(f"{component}/{w}" for w in weights)]
    return patterns


def resolve_base(sources: ModelSources) -> Path:
    """The local diffusers folder or single file of the base model."""
    parsed = parse_reference(sources.base)
    if isinstance(parsed, Path) and parsed.suffix == ".safetensors":
        return resolve_file(parsed, what="SDXL checkpoint", flag="--base")
    return resolve_folder(
        sources.base,
        what="SDXL base model",
        flag="--base",
        allow_patterns=base_allow_patterns(sources.base_variant),
        required=("model_index.json", "unet/config.json", "vae/config.json"),
    )


def resolve_single_file_config(reference: str | None = None) -> Path:
    """Configs and tokenizers of SDXL base (or of ``reference``, a diffusers folder or repo of the
    same architecture), which a single-file checkpoint does not carry."""
    return resolve_folder(
        reference or SDXL_BASE,
        what="SDXL configuration (needed to load a single-file checkpoint)",
        flag="--base",
        allow_patterns=[
            "model_index.json",
            *(f"{c}/*.json" for c in PIPELINE_COMPONENTS),
            *(f"{c}/*.txt" for c in PIPELINE_COMPONENTS),
        ],
    )


def resolve_safety_checker(reference: str) -> Path:
    folder = resolve_folder(
        reference, what="Safety checker", flag="--safety-checker", allow_patterns=["*.json", "*.safetensors"]
    )
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").exists():
        # The CompVis repository's original weights are a PyTorch pickle.
        resolve_file(f"{reference}/pytorch_model.bin", what="Safety checker weights", flag="--safety-checker")
    return folder


def download(sources: ModelSources, *, layers: bool = False) -> dict[str, Path]:
    """Fetch the files of ``sources`` into the hub cache (progress bars from the hub library); the
    conditioned-layer models (5.7 GB for SDXL) only with ``layers``, else on their first use."""
    paths = {
        "base": resolve_base(sources),
        "layer_weights": resolve_file(sources.layer_weights, what="LayerDiffuse weights", flag="--layer-weights"),
        "decoder": resolve_file(sources.decoder, what="Transparent VAE decoder", flag="--decoder"),
    }
    if sources.encoder:
        paths["encoder"] = resolve_file(sources.encoder, what="Transparent VAE encoder", flag="--encoder")
    if sources.safety_checker:
        paths["safety_checker"] = resolve_safety_checker(sources.safety_checker)
    if layers:
        for task, reference in sources.layers.items():
            paths[task] = resolve_file(reference, what=f"LayerDiffuse {task} weights", flag="--layers")
    return paths
