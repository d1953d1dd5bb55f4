"""layerdiffuse-server: transparent images from SDXL + LayerDiffuse, as a library and a service.

The public API is importable from here; heavy modules (torch, diffusers) load on first use.

    from layerdiffuse_server import TransparentSDXLPipeline

    pipe = TransparentSDXLPipeline.from_preset("sdxl")
    result = pipe.generate(prompt="a glass bottle", seed=7)
    result.images[0].save("bottle.png")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TransparentSDXLPipeline": "layerdiffuse_server.engine.pipelines.transparent_sdxl",
    "GenerationResult": "layerdiffuse_server.results",
    "TransparentDecoder": "layerdiffuse_server.engine.networks.decoder",
    "TransparentDecoderNetwork": "layerdiffuse_server.engine.networks.decoder_network",
    "TransparentImage": "layerdiffuse_server.images",
    "AttentionWeights": "layerdiffuse_server.engine.weights.attention_weights",
    "attention_deltas": "layerdiffuse_server.engine.weights.attention_weights",
    "merge_attention_weights": "layerdiffuse_server.engine.weights.attention_weights",
    "ModelSources": "layerdiffuse_server.engine.presets",
    "GenerationParams": "layerdiffuse_server.schemas",
    "Settings": "layerdiffuse_server.settings",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layerdiffuse_server' has no attribute {name!r}")
