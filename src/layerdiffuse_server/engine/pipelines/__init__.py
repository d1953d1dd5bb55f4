"""The pipelines: text to image, image to image and the conditioned layers, with their sizes, samplers and
runtime options."""
