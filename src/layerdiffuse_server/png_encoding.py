"""Straight-alpha RGBA arrays as PNG bytes, at a chosen trade of file size against encoding time.

PNG encoding sits between the GPU's output and the client's answer, and at 1024² Pillow's default
(zlib level 6 with adaptive filters) spends most of a second on it. The choices:

- ``fast`` (the default): `fpng <https://github.com/richgel999/fpng>`_, a single-pass encoder that
  is 10-20 times faster than zlib-based ones for files roughly a fifth larger. Where its wheel is
  missing (a platform it does not build for) ``fast`` falls back to ``balanced``.
- ``balanced``: zlib level 1 with the run-length strategy, through Pillow: about 4 times faster than
  level 6 and, on generated assets with large transparent areas, no larger.
- ``small``: the shorter of ``balanced`` and zlib level 9 with Pillow's ``optimize``, for storage that
  costs more than the CPU. Neither always wins: on generated assets, whose flat and transparent areas
  filter to runs of equal bytes, the run-length strategy is the smaller; on gradients and
  texture, level 9's full matching. Trying both makes ``small`` never larger than ``balanced``.

Every choice writes a standard 8-bit RGBA PNG that decodes to exactly the input, colour under
alpha 0 included (nothing is premultiplied or cleared), and each is deterministic: the same pixels
give the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .engine_choices import DEFAULT_PNG_COMPRESSION, PNG_COMPRESSIONS, PngCompression

__all__ = ["DEFAULT_PNG_COMPRESSION", "PNG_COMPRESSIONS", "PngCompression", "encode_png", "fast_encoder_available"]

#: zlib's Z_RLE: matches only within a run of equal bytes, which filtered scanlines of flat or
#: transparent areas are made of; much faster than the default strategy at a similar size.
_ZLIB_RLE = 3

try:
    import fpng as _fpng
except ImportError:  # no wheel for this platform: ``fast`` means ``balanced``
    _fpng = None


def fast_encoder_available() -> bool:
    """Whether ``fast`` gets fpng (else it falls back to ``balanced``)."""
    return _fpng is not None


def encode_png(rgba: np.ndarray, compression: PngCompression = DEFAULT_PNG_COMPRESSION) -> bytes:
    """Straight-alpha RGBA ``uint8 [H, W, 4]`` → PNG bytes; deterministic (no timestamps or text).

    Raises:
        ValueError: ``rgba`` is not an ``uint8 [H, W, 4]`` array with pixels, or ``compression`` is
            not one of :data:`PNG_COMPRESSIONS`.
    """
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.size == 0:
        raise ValueError(f"a PNG is made of uint8 [H, W, 4] RGBA pixels, not {rgba.dtype} {list(rgba.shape)}")
    if compression == "fast" and _fpng is not None:
        return bytes(_fpng.from_ndarray(np.ascontiguousarray(rgba)))
    if compression in ("fast", "balanced"):
        return _balanced_png(rgba)
    if compression == "small":
        candidates = (_balanced_png(rgba), _pillow_png(rgba, compress_level=9, optimize=True))
        return min(candidates, key=len)  # the first on a tie: deterministic
    raise ValueError(f"unknown PNG compression {compression!r}; one of {', '.join(PNG_COMPRESSIONS)}")


def _balanced_png(rgba: np.ndarray) -> bytes:
    return _pillow_png(rgba, compress_level=1, compress_type=_ZLIB_RLE)


def _pillow_png(rgba: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG", **options)
    return buffer.getvalue()
