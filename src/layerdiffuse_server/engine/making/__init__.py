"""Making models: random-weight presets in the official formats, and the demo model's training."""
