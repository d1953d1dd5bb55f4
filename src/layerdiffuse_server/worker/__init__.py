"""The GPU worker: claims queued requests, runs the engine, stores outputs, completes requests."""

from .generation_worker import Engine, GenerationWorker

__all__ = ["Engine", "GenerationWorker"]
