"""The engine's choices by name, without the engine: presets, devices, dtypes, decoder passes,
memory modes and PNG compressions.

``Settings`` types its engine fields with these, so every role refuses a bad value when it starts,
naming the setting, rather than when a worker loads the model. Nothing here imports torch: the API
node, which has none, reads the same settings.
"""

from __future__ import annotations

from typing import Literal, get_args

Preset = Literal["sdxl", "demo", "tiny", "sdxl-random"]
PRESETS: dict[Preset, str] = {
    "sdxl": "SDXL base 1.0 + LayerDiffuse (real weights; a GPU and a 7 GB download)",
    "demo": "a small model trained on procedural sprites, shipped with the package (128 px, CPU)",
    "tiny": "a small random-weight model with SDXL's topology, written once (offline, CPU, tests)",
    "sdxl-random": "full-size SDXL with random weights, written once (~7 GB; benchmarks)",
}

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: tuple[Dtype, ...] = get_args(Dtype)

DecoderPasses = Literal[8, 4, 2, 1]
DECODER_PASSES: tuple[DecoderPasses, ...] = get_args(DecoderPasses)

MemoryMode = Literal["fast", "default", "low", "offload"]
MEMORY_MODES: tuple[MemoryMode, ...] = get_args(MemoryMode)

#: PNG file size against encoding time (see :mod:`.png_encoding`).
PngCompression = Literal["fast", "balanced", "small"]
PNG_COMPRESSIONS: tuple[PngCompression, ...] = get_args(PngCompression)
DEFAULT_PNG_COMPRESSION: PngCompression = "fast"

#: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DEVICES = "auto, cpu, cuda, cuda:N or mps"
