"""Small LoRA files for tests: real safetensors in the kohya layout, and what a pickle starts with."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save

_MODULE = "lora_unet_mid_block_attentions_0_proj_in"
#: What a pickled checkpoint starts with (protocol 2): never to be loaded.
PICKLE_BYTES = b"\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01" + b"\x00" * 64


def lora_bytes(rank: int = 4, seed: int = 0) -> bytes:
    """A safetensors file with one module's down, up and alpha tensors, as LoRA files have them."""
    generator = np.random.default_rng(seed)
    return save(
        {
            f"{_MODULE}.lora_down.weight": generator.standard_normal((rank, 32)).astype(np.float32),
            f"{_MODULE}.lora_up.weight": generator.standard_normal((32, rank)).astype(np.float32),
            f"{_MODULE}.alpha": np.array(rank, dtype=np.float32),
        }
    )
