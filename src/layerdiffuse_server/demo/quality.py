"""Judging a generated sprite by its transparency: which shape its alpha draws, which colour its
visible pixels have, and whether its edges are soft. The demo model's quality tests and the
README's accuracy figures are computed with these, against what the prompt asked for."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from PIL import Image

from .sprites import BODY_THRESHOLD, COLOURS, SHAPES, STYLES, caption_sprite, render

MASK_SIZE = 32


@dataclass(frozen=True)
class Judgement:
    shape: str | None  # None: no body at all (an empty image)
    shape_iou: float
    colour: str | None
    soft_edge_pixels: int  # pixels whose alpha is strictly between 5 % and 95 %


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
    image = Image.fromarray(canvas).resize((MASK_SIZE, MASK_SIZE), Image.BILINEAR, box=box)
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


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.logical_and(first, second).sum() / max(1, np.logical_or(first, second).sum()))


def judge(rgba: np.ndarray) -> Judgement:
    alpha = rgba[..., 3]
    soft = int(((alpha > 0.05 * 255) & (alpha < 0.95 * 255)).sum())
    mask = normalised_mask(alpha)
    if mask is None:
        return Judgement(None, 0.0, None, soft)
    scores = {shape: max(_iou(mask, template) for template in poses) for shape, poses in templates().items()}
    shape = max(scores, key=scores.__getitem__)
    body = alpha >= BODY_THRESHOLD * 255
    mean = rgba[..., :3][body].astype(np.float64).mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))
    return Judgement(shape, scores[shape], colour, soft)


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


@dataclass(frozen=True)
class Scores:
    shape_accuracy: float
    colour_accuracy: float
    soft_edge_images: float  # share of images with semi-transparent pixels at all
    judgements: list[Judgement]


def score(cases: list[Case], images: list[np.ndarray]) -> Scores:
    judgements = [judge(image) for image in images]
    total = max(1, len(cases))
    return Scores(
        shape_accuracy=sum(j.shape == c.shape for j, c in zip(judgements, cases, strict=True)) / total,
        colour_accuracy=sum(j.colour == c.colour for j, c in zip(judgements, cases, strict=True)) / total,
        soft_edge_images=sum(j.soft_edge_pixels >= 20 for j in judgements) / total,
        judgements=judgements,
    )
