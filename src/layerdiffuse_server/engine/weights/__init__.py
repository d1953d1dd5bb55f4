"""Weight files: where they come from, their formats and key maps, and merging them into the UNet."""
