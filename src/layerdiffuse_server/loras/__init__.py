"""LoRA files of requests: which paths are accepted (:mod:`.paths`, torch-free, for admission; the
request schema uses it, so this package imports nothing on its own) and where each one's file
comes from (:class:`.sources.LoraSources`, for workers)."""
