"""RGBA images as files: PNG bytes, and a checkerboard preview for eyes and chat windows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .png_encoding import DEFAULT_PNG_COMPRESSION, PngCompression, encode_png

#: The reference visualisation: 64-pixel cells of 45 % and 55 % grey, the top-left cell darker.
CHECKER_CELL = 64
CHECKER_LEVELS = (0.45, 0.55)


#: Alpha levels (of 255) within which a pixel counts as "the same opacity" as the image's typical one:
#: decoders leave a little noise in an alpha that is meant to be flat.
ALPHA_TOLERANCE = 8
#: The share of pixels that must stand out of that band for the alpha to carry a shape (0.1 %: a
#: small subject on a large canvas still counts; a few stray pixels of noise do not).
MIN_TRANSPARENT_SHARE = 0.001


def has_transparency(rgba: np.ndarray) -> bool:
    """Whether an RGBA image's alpha is non-trivial: not (nearly) one value everywhere.

    An alpha is trivial when all but a few pixels lie within :data:`ALPHA_TOLERANCE` of its median:
    fully opaque, fully transparent, or one flat translucency with decoder noise on it. It carries
    something when at least :data:`MIN_TRANSPARENT_SHARE` of the pixels (and at least one) lie
    outside that band. The median, not the mean, sets the typical value, so a subject covering less
    than half the canvas does not move it.

    Args:
        rgba: ``uint8 [H, W, 4]``, straight alpha.
    """
    alpha = rgba[..., 3].astype(np.int16)
    if alpha.size == 0:
        return False
    typical = int(np.median(alpha))
    outside = int(np.count_nonzero(np.abs(alpha - typical) > ALPHA_TOLERANCE))
    return outside >= max(1, MIN_TRANSPARENT_SHARE * alpha.size)


def checkerboard(height: int, width: int, cell: int = CHECKER_CELL) -> np.ndarray:
    """``float32 [H, W]`` grey levels of the preview background."""
    rows = (np.arange(height) // cell)[:, None]
    cols = (np.arange(width) // cell)[None, :]
    dark, light = CHECKER_LEVELS
    return np.where((rows + cols) % 2 == 0, dark, light).astype(np.float32)


def composite(rgba: np.ndarray, background: np.ndarray | float) -> np.ndarray:
    """Straight-alpha RGBA over a grey background (a scalar or ``[H, W]``), as ``float32 [H, W, 3]`` in [0, 1]."""
    colour = rgba[..., :3].astype(np.float32) / 255.0
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    back = np.asarray(background, dtype=np.float32)
    if back.ndim == 2:
        back = back[..., None]
    return colour * alpha + back * (1.0 - alpha)


def checkerboard_preview(rgba: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` view of an RGBA image over the reference checkerboard."""
    height, width = rgba.shape[:2]
    return (composite(rgba, checkerboard(height, width)) * 255.0).clip(0, 255).astype(np.uint8)


@dataclass
class TransparentImage:
    """One generated image: straight-alpha RGBA pixels, with its seed and safety verdict."""

    rgba: np.ndarray
    seed: int
    nsfw: bool = False
    #: The last encoding, with the compression it was made at: the worker encodes once, off the GPU's
    #: path, and storing it reads the same bytes.
    _png: tuple[PngCompression, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def width(self) -> int:
        return int(self.rgba.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgba.shape[0])

    def png(self, compression: PngCompression = DEFAULT_PNG_COMPRESSION) -> bytes:
        """The image as a PNG file (see :mod:`.png_encoding`), encoded once per compression asked."""
        if self._png is None or self._png[0] != compression:
            self._png = (compression, encode_png(self.rgba, compression))
        return self._png[1]

    def save(self, path: str | Path, compression: PngCompression = DEFAULT_PNG_COMPRESSION) -> Path:
        path = Path(path)
        path.write_bytes(self.png(compression))
        return path

    def save_preview(self, path: str | Path) -> Path:
        path = Path(path)
        Image.fromarray(checkerboard_preview(self.rgba)).save(path, format="PNG")
        return path
