"""How a worker loads the model: a preset plus optional file overrides and runtime options, as the
CLI takes them. The engine (torch, diffusers) is imported only when the loader runs, on a worker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cpu_threads import describe_threads
from ..settings import Settings

if TYPE_CHECKING:
    from ..worker import Engine

logger = logging.getLogger(__name__)

MEMORY_MODES = ("fast", "default", "low", "offload")


@dataclass(frozen=True)
class EngineOptions:
    model: str
    base: str | None = None
    layer_weights: str | None = None
    decoder: str | None = None
    decoder_passes: int = 8
    memory_mode: str = "default"
    vae_tiling: bool = False
    channels_last: bool = False
    compile: bool = False
    warmup: bool | None = None  # None: on accelerators, where the first call is slow, not on a CPU
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"--memory-mode must be one of {', '.join(MEMORY_MODES)}, not {self.memory_mode!r}")

    def loader(self, settings: Settings) -> Callable[[], Engine]:
        def load() -> Engine:
            from ..engine.quiet import quiet_libraries

            quiet_libraries()
            from ..engine.pipelines.acceleration import RuntimeOptions, warm_up
            from ..engine.pipelines.transparent_sdxl import TransparentSDXLPipeline

            runtime = RuntimeOptions(
                memory_mode=self.memory_mode,  # type: ignore[arg-type]
                vae_tiling=self.vae_tiling,
                channels_last=self.channels_last,
                compile=self.compile,
            )
            pipeline = TransparentSDXLPipeline.from_preset(
                self.model,
                settings=settings,
                device=settings.device,
                dtype=settings.dtype,
                base=self.base,
                layer_weights=self.layer_weights,
                decoder=self.decoder,
                decoder_passes=self.decoder_passes,
                runtime=runtime,
                **self.extra,
            )
            logger.info("model %s on %s: %s", self.model, pipeline.device, describe_threads(pipeline.threads))
            if self.warmup if self.warmup is not None else pipeline.device.type != "cpu":
                warm_up(pipeline)
            return pipeline

        return load
