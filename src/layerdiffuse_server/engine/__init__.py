"""The engine: the only part of the product that imports torch and diffusers."""

from ..cpu_memory import keep_freed_memory
from ..cpu_threads import prepare_environment

# Before any module of the engine loads torch (its OpenMP runtime reads the policy once, at load).
prepare_environment()
# Before the first tensor: what is allocated from then on is reused instead of mapped afresh.
keep_freed_memory()
