"""Device and dtype choice: the fastest safe default per device, overridable."""

from __future__ import annotations

import torch

from . import catalog

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads for this process (``None`` keeps torch's choice: ``OMP_NUM_THREADS``, else
    one per physical core); returns the count in effect."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_dtype(name: str, device: torch.device, cpu_default: torch.dtype = torch.float32) -> torch.dtype:
    """``auto`` is float16 on accelerators and ``cpu_default`` on the CPU (bfloat16 is fast on CPUs with AMX)."""
    if name == "auto":
        return cpu_default if device.type == "cpu" else torch.float16
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(catalog.DTYPES)}") from None


def vae_dtype(dtype: torch.dtype, device: torch.device, force_upcast: bool) -> torch.dtype:
    """The SDXL VAE overflows in float16; bfloat16 has the range (the reference decodes in bf16)."""
    if dtype != torch.float16 or not force_upcast:
        return dtype
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
