"""LoRA files of requests: which paths are accepted (:mod:`.paths`, torch-free, for admission) and
where each one's file comes from (:class:`LoraSources`, for workers)."""

from __future__ import annotations

from .cache import LoraCache
from .fetch import LoraFetchPolicy
from .format import check_safetensors
from .paths import ACCEPTED_LORA_PATHS, LoraPath, LoraPathKind, check_lora_path, lora_path_kind
from .sources import LoraSources

__all__ = [
    "ACCEPTED_LORA_PATHS",
    "LoraCache",
    "LoraFetchPolicy",
    "LoraPath",
    "LoraPathKind",
    "LoraSources",
    "check_lora_path",
    "check_safetensors",
    "lora_path_kind",
]
