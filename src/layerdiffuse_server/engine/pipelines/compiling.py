"""How ``--compile`` compiles, and what each compile cost: configured once per process, before the
first ``torch.compile`` call, so that a restarted worker reads its kernels from disk instead of
compiling them again.

Three choices, each for the sake of a server that restarts:

* Inductor's caches (the FX graph cache and the AOT autograd cache, both keyed by the graph, the
  input sizes and the torch version) live in a persistent folder, not in ``/tmp``, which is
  cleared on reboot and is not shared between containers that mount the same volume.
* Every module is compiled with ``dynamic=False``: one static graph per input size, the fastest
  kernels, and a cache entry the warm-up of that size fills (the operator lists the sizes). A
  symbolic-shape graph would serve all sizes, but slower, and its first compile takes longer.
* Recompiles are bounded (``recompile_limit``): each new size or batch size compiles a new graph of
  the same function, and past the limit dynamo stops compiling that function and runs it eagerly
  (it logs a warning once). A stream of odd sizes therefore costs at most ``limit`` compiles, then
  eager speed, never unbounded compile time and memory.

CUDA graphs (``mode="reduce-overhead"``) are not used yet: a graph is recorded per input shape and
the UNet is called with as many batch sizes as requests are batched together (and twice the image
count under classifier-free guidance), each recording holding its own memory pool; and the outputs
of a recorded graph are overwritten by its next replay, which the denoising loop (which keeps the
previous step's output) would have to clone around. Without a measurement on a GPU that this is
both correct and faster here, the default mode runs on every device.
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import torch
import torch._dynamo.config
import torch._functorch.config
import torch._inductor.config

logger = logging.getLogger(__name__)

#: The variable Inductor reads its cache folder from (every time it looks, so setting it before
#: the first compile is enough).
CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"

Module = TypeVar("Module", bound=Callable[..., object])


def configure_compiling(cache_folder: Path | None, recompile_limit: int) -> Path:
    """Point Inductor's on-disk caches at ``cache_folder`` (unless it is ``None``, or the operator set
    ``TORCHINDUCTOR_CACHE_DIR`` to another folder than torch's default in ``/tmp``: theirs wins),
    turn those caches on, and bound recompiles per function to ``recompile_limit``. Returns the
    cache folder in use.

    Call before the first compile: graphs compiled earlier were looked up elsewhere.
    """
    if recompile_limit < 1:
        raise ValueError(f"recompile_limit must be at least 1, got {recompile_limit}")
    if cache_folder is not None and os.environ.get(CACHE_VARIABLE, "") in ("", _torch_default_folder()):
        cache_folder.mkdir(parents=True, exist_ok=True)
        os.environ[CACHE_VARIABLE] = str(cache_folder.resolve())
    # Both are on by default in recent torch; older ones have them off, or lack the autograd cache.
    if hasattr(torch._inductor.config, "fx_graph_cache"):
        torch._inductor.config.fx_graph_cache = True
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        torch._functorch.config.enable_autograd_cache = True
    dynamo = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, name, recompile_limit)
    folder = Path(os.environ.get(CACHE_VARIABLE) or _torch_default_folder())
    logger.info("compiled graphs are cached in %s (at most %d compiles per function)", folder, recompile_limit)
    return folder


def _torch_default_folder() -> str:
    """Inductor's own default folder: importing dynamo writes it into ``TORCHINDUCTOR_CACHE_DIR``,
    so a variable of that value is torch's doing, not the operator's."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # torch before 2.5: the same folder, computed as it did
        return os.path.abspath(os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
    return os.path.abspath(default_cache_dir())


def recompile_limit() -> int:
    """The recompile limit dynamo applies now (under either of its names)."""
    dynamo = torch._dynamo.config
    return int(getattr(dynamo, "recompile_limit", None) or dynamo.cache_size_limit)


def compile_module(module: Module) -> Module:
    """``module`` compiled the way this module describes: static shapes, the default mode on every
    device (no CUDA graphs, see above), graph breaks allowed (a full graph is not needed for the
    convolutions to be fused, and LoRA layers or attention processors may break it)."""
    return cast(Module, torch.compile(module, dynamic=False, fullgraph=False))


@dataclass(frozen=True)
class CompileCounts:
    """What dynamo and Inductor did in this process, from ``torch._dynamo.utils.counters``; the
    difference of two readings (``after - before``) is what happened in between.

    Attributes:
        graphs: graphs dynamo captured (one per function, size and graph break).
        cache_hits: graphs whose kernels came from the FX graph cache (no C++ or Triton compile).
        cache_misses: graphs compiled afresh (and then written to the cache).
        cache_bypasses: graphs the cache could not take (their compile is not cached).
    """

    graphs: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bypasses: int = 0

    @classmethod
    def now(cls) -> CompileCounts:
        from torch._dynamo.utils import counters

        inductor = counters["inductor"]
        return cls(
            graphs=counters["stats"]["unique_graphs"],
            cache_hits=inductor["fxgraph_cache_hit"],
            cache_misses=inductor["fxgraph_cache_miss"],
            cache_bypasses=inductor["fxgraph_cache_bypass"],
        )

    def __sub__(self, other: CompileCounts) -> CompileCounts:
        return CompileCounts(
            graphs=self.graphs - other.graphs,
            cache_hits=self.cache_hits - other.cache_hits,
            cache_misses=self.cache_misses - other.cache_misses,
            cache_bypasses=self.cache_bypasses - other.cache_bypasses,
        )

    def describe(self) -> str:
        bypassed = f", {self.cache_bypasses} not cacheable" if self.cache_bypasses else ""
        return f"{self.graphs} graphs: {self.cache_hits} from the cache, {self.cache_misses} compiled{bypassed}"
