"""A procedural data set of transparent sprites with captions, for the ``demo`` model.

Every sprite is a shape in a named colour, drawn with analytic anti-aliasing (alpha falls off over
one pixel at the edge), sometimes with a soft glow, a drop shadow, or a translucent body — the
semi-transparent pixels that latent transparency exists for. A sprite is a pure function of its
index and the data set's seed, so the training run and the quality tests see the same pictures.

Straight (un-premultiplied) RGBA ``uint8`` arrays, like the pipeline's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .captions import COLOURS, SHAPES, STYLES, caption

#: Alpha of a translucent body; glows and shadows stay below ``BODY_THRESHOLD``, so thresholding
#: alpha there finds the shape itself.
TRANSLUCENT_ALPHA = 0.6
BODY_THRESHOLD = 0.5
EFFECT_ALPHA = 0.4


@dataclass(frozen=True)
class Sprite:
    shape: str
    colour: str
    style: str
    centre: tuple[float, float]  # (x, y) as fractions of the canvas
    radius: float  # as a fraction of the canvas
    rotation: float  # radians

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.style)


def sprite_for(index: int, seed: int = 0) -> Sprite:
    """The data set's ``index``-th sprite: every (shape, colour, style) in turn, pose drawn at random."""
    combinations = len(SHAPES) * len(COLOURS) * len(STYLES)
    combination = index % combinations
    shape = SHAPES[combination % len(SHAPES)]
    colour = list(COLOURS)[(combination // len(SHAPES)) % len(COLOURS)]
    style = STYLES[combination // (len(SHAPES) * len(COLOURS))]
    chance = np.random.default_rng([seed, index])
    return Sprite(
        shape=shape,
        colour=colour,
        style=style,
        centre=(0.5 + chance.uniform(-0.08, 0.08), 0.5 + chance.uniform(-0.08, 0.08)),
        radius=chance.uniform(0.27, 0.34),
        rotation=chance.uniform(-0.25, 0.25),
    )


def caption_sprite(shape: str, colour: str, style: str = "plain") -> Sprite:
    """A sprite in its canonical pose (centred, upright): the templates the quality check compares with."""
    return Sprite(shape, colour, style, (0.5, 0.5), 0.3, 0.0)


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance to the shape's outline in units of its radius; negative inside."""
    if shape == "circle":
        return np.hypot(x, y) - 1.0
    if shape == "ring":
        return np.abs(np.hypot(x, y) - 0.72) - 0.28
    if shape == "square":
        edge = 0.82
        dx, dy = np.abs(x) - edge, np.abs(y) - edge
        outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        return outside + np.minimum(np.maximum(dx, dy), 0)
    if shape == "triangle":  # equilateral, apex up, centred on its centroid
        k = math.sqrt(3.0)
        px, py = np.abs(x) - 1.0, -y + 1.0 / k
        flip = px + k * py > 0
        px, py = np.where(flip, (px - k * py) / 2, px), np.where(flip, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2.0, 0.0)
        return -np.hypot(px, py) * np.sign(py)
    if shape == "star":
        angle = np.arctan2(x, -y)
        radius = np.hypot(x, y)
        sector = (angle % (2 * math.pi / 5)) - math.pi / 5
        outline = 0.45 + 0.55 * (np.abs(sector) / (math.pi / 5)) ** 1.6
        return radius - outline * 1.05
    if shape == "heart":
        hx, hy = x * 1.05, -(y * 1.05) + 0.2
        value = (hx**2 + hy**2 - 0.55) ** 3 - hx**2 * hy**3
        return np.cbrt(value) * 1.3
    raise ValueError(f"unknown shape {shape!r}")


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur (numpy only; the data set needs no image library)."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(alpha, radius, mode="constant")
    rows = np.apply_along_axis(lambda line: np.convolve(line, taps, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda line: np.convolve(line, taps, mode="valid"), 0, rows)


def render(sprite: Sprite, size: int = 128) -> np.ndarray:
    """Straight RGBA ``uint8`` of shape ``(size, size, 4)``."""
    grid = (np.arange(size) + 0.5) / size
    gx, gy = np.meshgrid(grid, grid)
    cos, sin = math.cos(sprite.rotation), math.sin(sprite.rotation)
    ux, uy = (gx - sprite.centre[0]) / sprite.radius, (gy - sprite.centre[1]) / sprite.radius
    x, y = cos * ux + sin * uy, -sin * ux + cos * uy
    pixel = 1.0 / (sprite.radius * size)  # one pixel in shape units: the width of the anti-aliased edge
    body = np.clip(0.5 - _signed_distance(sprite.shape, x, y) / pixel, 0.0, 1.0)
    colour = np.array(COLOURS[sprite.colour], dtype=np.float64) / 255.0
    rgb = np.broadcast_to(colour, (size, size, 3)).copy()
    if sprite.style == "translucent":
        alpha = body * TRANSLUCENT_ALPHA
    elif sprite.style == "glow":
        glow = np.minimum(_blur(body, size / 16) * EFFECT_ALPHA * 1.8, EFFECT_ALPHA)
        alpha = body + (1 - body) * glow
    elif sprite.style == "shadow":
        shift = max(1, size // 24)
        shadow = np.roll(np.roll(_blur(body, size / 40), shift, axis=0), shift, axis=1) * EFFECT_ALPHA
        alpha = body + (1 - body) * shadow
        # Under the straight alpha, the shadow's colour is black where the body does not cover it.
        coverage = np.divide(body, alpha, out=np.zeros_like(body), where=alpha > 0)[..., None]
        rgb = rgb * coverage
    else:
        alpha = body
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    return (rgba * 255.0).clip(0, 255).astype(np.uint8)
