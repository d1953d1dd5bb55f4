"""Sizes: what a request asks for, what the model runs at, and how input images are fitted.

The transparent decoder halves the resolution six times, so the model runs at the next multiple of
64 of each side and the result is centre-cropped back to the size asked for (1000×700 runs at
1024×704). Input images are fitted to the asked size as Forge's "Crop and Resize" does: scaled to
cover it, then centre-cropped (the crop is
chosen first and only it is resampled). Then they are padded at the edges to the size the model runs at.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ...schemas import padded_side

#: The sides a request may ask for (the schema's limits).
MIN_SIDE, MAX_SIDE = 64, 2048


def run_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) the model runs at for an asked size."""
    return padded_side(width), padded_side(height)


def size_from_image(width: int | None, height: int | None, image_width: int, image_height: int) -> tuple[int, int]:
    """The output size of a request with image inputs: what it asks for, else the image's own
    (a missing side follows the image's aspect ratio), kept within the schema's limits."""
    if width is not None and height is not None:
        return width, height
    if width is not None:
        height = round(width * image_height / image_width)
    elif height is not None:
        width = round(height * image_width / image_height)
    else:
        scale = min(1.0, MAX_SIDE / max(image_width, image_height))
        width, height = round(image_width * scale), round(image_height * scale)
    return min(max(width, MIN_SIDE), MAX_SIDE), min(max(height, MIN_SIDE), MAX_SIDE)


def crop_and_resize(
    rgba: np.ndarray, width: int, height: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """Scale ``uint8 [H, W, C]`` to cover (width, height), then centre-crop to it.

    The crop is taken in the source's coordinates and only that box is resampled, so the work and
    memory follow the asked size, not the scaled image: a 65536×1 strip fitted to 64×64 would
    otherwise be scaled to 4 194 304×64 (a gigabyte) before most of it was cropped away.

    Pillow's Lanczos filter by default (``resample``: another, such as bilinear for masks, which
    must not ring); RGBA is resampled premultiplied (Pillow does that itself), so the colour of
    transparent pixels does not bleed into visible ones.
    """
    image_height, image_width = rgba.shape[:2]
    if (image_width, image_height) == (width, height):
        return rgba
    scale = max(width / image_width, height / image_height)
    box_width, box_height = min(image_width, width / scale), min(image_height, height / scale)
    left, top = (image_width - box_width) / 2, (image_height - box_height) / 2
    box = (left, top, left + box_width, top + box_height)
    fitted = Image.fromarray(rgba).resize((width, height), resample, box=box)
    return np.asarray(fitted)


def pad_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pad ``[H, W, C]`` to (width, height), centred, repeating the edge pixels."""
    image_height, image_width = image.shape[:2]
    top, left = (height - image_height) // 2, (width - image_width) // 2
    padding = ((top, height - image_height - top), (left, width - image_width - left), (0, 0))
    return np.pad(image, padding, mode="edge") if any(sum(p) for p in padding) else image


def centre_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The centred (width, height) part of ``[H, W, C]``: undoes :func:`pad_to`."""
    image_height, image_width = image.shape[:2]
    top, left = (image_height - height) // 2, (image_width - width) // 2
    if (top, left) == (0, 0) and (image_width, image_height) == (width, height):
        return image
    return np.ascontiguousarray(image[top : top + height, left : left + width])
