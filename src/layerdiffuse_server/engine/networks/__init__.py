"""The networks beside SDXL's own: the transparent decoder and encoder, and the safety checker."""
