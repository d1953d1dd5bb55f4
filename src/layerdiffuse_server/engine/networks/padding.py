"""``pad_rgb``: the colour a transparent image would have where it is transparent, as LayerDiffuse's
encoder expects it: every pixel gets the colour of the nearest foreground, blended smoothly.

The reference builds a pyramid of premultiplied colour and alpha, shrinking by 1.2 with OpenCV's
area interpolation down to one pixel, then walks back up, filling what each level leaves
uncovered with the level above, bilinearly enlarged. OpenCV is used for exactly that reason: its
area interpolation at non-integer ratios is what makes the result match the reference bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np

SHRINK = 1.2


def _pyramid(colour: np.ndarray, alpha: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(premultiplied colour, alpha) from one pixel high or wide up to full size."""
    levels = []
    premultiplied = colour * alpha
    while True:
        levels.append((premultiplied, alpha))
        height, width = alpha.shape[:2]
        if min(height, width) == 1:
            break
        size = (int(width / SHRINK), int(height / SHRINK))
        premultiplied = cv2.resize(premultiplied, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)[:, :, None]
    return levels[::-1]


def pad_rgb(rgba: np.ndarray) -> np.ndarray:
    """Padded RGB, float32 in [0, 1], of a ``uint8`` RGBA image (H, W, 4); any channel order of the
    colour works alike (the reference demo reads BGRA)."""
    image = rgba.astype(np.float32) / 255.0
    levels = _pyramid(image[..., :3], image[..., 3:])
    top_colour, top_alpha = levels[0]
    filled = top_colour.sum(axis=(0, 1), keepdims=True) / top_alpha.sum(axis=(0, 1), keepdims=True).clip(1e-8, 1e32)
    for colour, alpha in levels:
        height, width = colour.shape[:2]
        filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
        filled = colour + filled * (1.0 - alpha)
    return filled
