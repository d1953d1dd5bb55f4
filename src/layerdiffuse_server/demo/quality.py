"""Judging a generated sprite by its transparency: which shape its alpha draws, which colour its
visible pixels have, whether its edges are soft, whether the background away from it is clear
and whether its body is one colour. The demo model's quality tests and the README's accuracy
figures are computed with these, against what the prompt asked for."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from PIL import Image, ImageFilter

from .sprites import BODY_THRESHOLD, COLOURS, SHAPES, STYLES, caption_sprite, render

MASK_SIZE = 32
#: How far from the body (alpha ≥ 0.5), in pixels of a 128² image, the background must be clear: the
#: data set's glows fall below alpha 1/255 within 21 px and its shadows within 15.
BACKGROUND_MARGIN = 24 / 128
#: A mark is a body pixel that stands out from its neighbourhood (the median of the 7×7 pixels
#: around it): alpha more than 16 off, or colour more than 30 away (RGB distance). The data set's
#: bodies are flat, so its own sprites have none; the rim is left out, where the background mixes in.
MARK_NEIGHBOURHOOD = 7
MARK_ALPHA_STEP = 16
MARK_COLOUR_STEP = 30.0
MARK_INSET = 2


@dataclass(frozen=True)
class Judgement:
    shape: str | None  # None: no body at all (an empty image)
    shape_iou: float
    colour: str | None
    soft_edge_pixels: int  # pixels whose alpha is strictly between 5 % and 95 %
    background_haze: float  # share of the background (far from the body) with alpha ≥ 1/255
    background_alpha_p99: float  # 99th percentile of the background's alpha, in 0–255
    mark_pixels: int  # pixels inside the body that stand out from their neighbourhood


def normalised_mask(alpha: np.ndarray) -> np.ndarray | None:
    """The body (alpha ≥ 0.5) cropped to a square around its bounds and resized: position and size
    no longer matter, only the outline. None when there is no body."""
    body = alpha >= BODY_THRESHOLD * 255
    rows, columns = np.nonzero(body)
    if rows.size < 16:
        return None
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    side = max(bottom - top, right - left)
    # Padded by a side all round, so the square stays inside even for a body that fills the image.
    centre_y, centre_x = (top + bottom) / 2 + side, (left + right) / 2 + side
    box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
    canvas = np.pad(body, side).astype(np.uint8) * 255
    image = Image.fromarray(canvas).resize((MASK_SIZE, MASK_SIZE), Image.Resampling.BILINEAR, box=box)
    return np.asarray(image) >= 128


#: Templates are drawn at the rotations the data set uses, so a tilted square is still a square.
TEMPLATE_ROTATIONS = np.linspace(-0.3, 0.3, 7)


@cache
def templates() -> dict[str, list[np.ndarray]]:
    masks: dict[str, list[np.ndarray]] = {}
    for shape in SHAPES:
        for rotation in TEMPLATE_ROTATIONS:
            sprite = replace(caption_sprite(shape, "red"), rotation=float(rotation))
            mask = normalised_mask(render(sprite, 128)[..., 3])
            assert mask is not None
            masks.setdefault(shape, []).append(mask)
    return masks


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask grown by ``radius`` pixels (a square of side ``2 radius + 1``). A square is a row
    then a column: two sliding maxima, each ``2 radius + 1`` reads per pixel, where PIL's square
    rank filter reads its whole area (25× slower at the background's radius)."""
    grown = mask
    for axis in (0, 1):
        padding = [(0, 0), (0, 0)]
        padding[axis] = (radius, radius)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(grown, padding), 2 * radius + 1, axis=axis)
        grown = np.asarray(windows.any(axis=-1))
    return grown


def background(alpha: np.ndarray) -> np.ndarray:
    """The pixels farther than :data:`BACKGROUND_MARGIN` from the body, where nothing of the sprite
    (glow and shadow included) should be left; the whole image when there is no body."""
    body = alpha >= BODY_THRESHOLD * 255
    return ~_dilate(body, max(1, round(BACKGROUND_MARGIN * alpha.shape[0])))


def mark_pixels(rgba: np.ndarray) -> int:
    """Pixels inside the body (its rim left out) whose alpha or colour stands out from their
    neighbourhood's median: a stray dot or cross on a sprite that the data set draws flat."""
    inside = ~_dilate(rgba[..., 3] < BODY_THRESHOLD * 255, MARK_INSET)
    if not inside.any():
        return 0
    median = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(rgba[..., channel])).filter(
                    ImageFilter.MedianFilter(MARK_NEIGHBOURHOOD)
                )
            )
            for channel in range(4)
        ],
        axis=-1,
    )
    step = np.abs(rgba.astype(np.float64) - median)
    stands_out = (step[..., 3] > MARK_ALPHA_STEP) | (np.linalg.norm(step[..., :3], axis=-1) > MARK_COLOUR_STEP)
    return int((stands_out & inside).sum())


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.logical_and(first, second).sum() / max(1, np.logical_or(first, second).sum()))


def judge(rgba: np.ndarray) -> Judgement:
    alpha = rgba[..., 3]
    soft = int(((alpha > 0.05 * 255) & (alpha < 0.95 * 255)).sum())
    clear = alpha[background(alpha)]
    haze = float((clear >= 1).mean()) if clear.size else 0.0
    p99 = float(np.percentile(clear, 99)) if clear.size else 0.0
    mask = normalised_mask(alpha)
    if mask is None:
        return Judgement(None, 0.0, None, soft, haze, p99, 0)
    scores = {shape: max(_iou(mask, template) for template in poses) for shape, poses in templates().items()}
    shape = max(scores, key=scores.__getitem__)
    body = alpha >= BODY_THRESHOLD * 255
    mean = rgba[..., :3][body].astype(np.float64).mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))
    return Judgement(shape, scores[shape], colour, soft, haze, p99, mark_pixels(rgba))


@dataclass(frozen=True)
class Case:
    """One prompt of the evaluation set and what its image must show."""

    prompt: str
    shape: str
    colour: str
    seed: int


def evaluation_set() -> list[Case]:
    """Every shape in every colour once, the styles taking turns: 42 prompts, fixed seeds."""
    cases = []
    for index, (shape, colour) in enumerate((shape, colour) for colour in COLOURS for shape in SHAPES):
        style = STYLES[index % len(STYLES)]
        cases.append(Case(replace(caption_sprite(shape, colour), style=style).caption, shape, colour, 1000 + index))
    return cases


#: A background is clear when at most this share of it has any alpha at all …
CLEAR_BACKGROUND_HAZE = 0.05
#: … and a body is unmarked below this many pixels of another colour.
MARKED_BODY_PIXELS = 12


@dataclass(frozen=True)
class Scores:
    shape_accuracy: float
    colour_accuracy: float
    soft_edge_images: float  # share of images with semi-transparent pixels at all
    clear_background_images: float  # share of images whose background haze ≤ CLEAR_BACKGROUND_HAZE
    mean_background_haze: float  # the background's share with alpha ≥ 1/255, averaged over the images
    background_alpha_p99: float  # the largest of the images' 99th percentiles of background alpha
    marked_images: float  # share of images with a mark of MARKED_BODY_PIXELS or more on the body
    judgements: list[Judgement]

    def summary(self) -> dict[str, float]:
        """The figures, rounded, as the manifest records them and the README quotes them."""
        return {
            "shape_accuracy": self.shape_accuracy,
            "colour_accuracy": self.colour_accuracy,
            "soft_edge_images": self.soft_edge_images,
            "clear_background_images": self.clear_background_images,
            "mean_background_haze": round(self.mean_background_haze, 4),
            "background_alpha_p99": round(self.background_alpha_p99, 1),
            "marked_images": self.marked_images,
            "prompts": len(self.judgements),
        }


def score(cases: list[Case], images: list[np.ndarray]) -> Scores:
    judgements = [judge(image) for image in images]
    total = max(1, len(cases))
    return Scores(
        shape_accuracy=sum(j.shape == c.shape for j, c in zip(judgements, cases, strict=True)) / total,
        colour_accuracy=sum(j.colour == c.colour for j, c in zip(judgements, cases, strict=True)) / total,
        soft_edge_images=sum(j.soft_edge_pixels >= 20 for j in judgements) / total,
        clear_background_images=sum(j.background_haze <= CLEAR_BACKGROUND_HAZE for j in judgements) / total,
        mean_background_haze=sum(j.background_haze for j in judgements) / total,
        background_alpha_p99=max((j.background_alpha_p99 for j in judgements), default=0.0),
        marked_images=sum(j.mark_pixels >= MARKED_BODY_PIXELS for j in judgements) / total,
        judgements=judgements,
    )
