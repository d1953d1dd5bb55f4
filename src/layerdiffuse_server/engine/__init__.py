"""The engine: the only part of the product that imports torch and diffusers."""

from ..cpu_threads import prepare_environment

# Before any module of the engine loads torch (its OpenMP runtime reads the policy once, at load).
prepare_environment()
