"""The engine: the only part of the product that imports torch and diffusers."""
