"""The demo's data set and its judge: sprites are deterministic and soft-edged, and the judge
recognises every ground-truth sprite (so a model that draws them is scored as right), finds their
backgrounds clear and their bodies unmarked, and catches a haze or a mark added to them."""

from __future__ import annotations

import numpy as np
import pytest

from layerdiffuse_server.demo.quality import CLEAR_BACKGROUND_HAZE, MARKED_BODY_PIXELS, evaluation_set, judge, score
from layerdiffuse_server.demo.sprites import COLOURS, SHAPES, STYLES, render, sprite_for

COMBINATIONS = len(SHAPES) * len(COLOURS) * len(STYLES)


def test_a_sprite_is_a_pure_function_of_index_and_seed() -> None:
    assert sprite_for(5) == sprite_for(5)
    assert np.array_equal(render(sprite_for(5)), render(sprite_for(5)))
    assert sprite_for(5, seed=1) != sprite_for(5, seed=0)
    # Every (shape, colour, style) once per round, the pose drawn anew each round.
    first_round = {(s.shape, s.colour, s.style) for s in map(sprite_for, range(COMBINATIONS))}
    assert len(first_round) == COMBINATIONS
    assert sprite_for(3).shape == sprite_for(3 + COMBINATIONS).shape and sprite_for(3) != sprite_for(3 + COMBINATIONS)


@pytest.mark.parametrize("style", STYLES)
def test_every_style_has_semi_transparent_pixels_and_a_caption_that_says_so(style: str) -> None:
    index = STYLES.index(style) * len(SHAPES) * len(COLOURS)
    sprite = sprite_for(index)
    alpha = render(sprite)[..., 3].astype(np.float64) / 255
    soft = (alpha > 0.05) & (alpha < 0.95)
    assert soft.sum() >= 50, "anti-aliased edges at least"
    assert alpha.max() > 0.55 and alpha[0, 0] == 0
    assert sprite.colour in sprite.caption and sprite.shape in sprite.caption
    if style == "translucent":
        assert "translucent" in sprite.caption and alpha.max() < 0.65
    if style in ("glow", "shadow"):
        assert {"glow": "soft glow", "shadow": "drop shadow"}[style] in sprite.caption
        assert soft.sum() > 400, "a halo, not only an edge"


def test_the_judge_recognises_every_ground_truth_sprite() -> None:
    sprites = [sprite_for(index, seed=7) for index in range(2 * COMBINATIONS)]
    judgements = [judge(render(sprite)) for sprite in sprites]
    assert [j.shape for j in judgements] == [s.shape for s in sprites]
    assert [j.colour for j in judgements] == [s.colour for s in sprites]
    assert all(j.background_haze == 0 and j.background_alpha_p99 == 0 for j in judgements), "glows included"
    assert all(j.mark_pixels == 0 for j in judgements)


def test_the_judge_sees_a_faint_haze_over_the_background() -> None:
    hazy = render(sprite_for(0))
    hazy[..., 3] = np.maximum(hazy[..., 3], 4)  # alpha 4/255: invisible over white, there over black
    judgement = judge(hazy)
    assert judgement.background_haze == 1 > CLEAR_BACKGROUND_HAZE and judgement.background_alpha_p99 == 4
    scores = score(evaluation_set()[:2], [render(sprite_for(0)), hazy])
    assert scores.clear_background_images == 0.5 and scores.mean_background_haze == 0.5


def test_the_judge_sees_a_mark_on_the_body() -> None:
    sprite = render(sprite_for(0))  # a red circle, centred near the middle
    opaque_cross = sprite.copy()
    opaque_cross[..., 3] = np.where(sprite[..., 3] == 255, 220, sprite[..., 3])  # a glow-like body alpha …
    opaque_cross[61:67, 61:67, 3] = 255  # … with a fully opaque dot at the centre
    dark_dot = sprite.copy()
    dark_dot[61:67, 61:67, :3] = (120, 20, 20)
    assert judge(opaque_cross).mark_pixels >= MARKED_BODY_PIXELS
    assert judge(dark_dot).mark_pixels >= MARKED_BODY_PIXELS
    assert score(evaluation_set()[:2], [sprite, dark_dot]).marked_images == 0.5


def test_the_judge_scores_wrong_and_empty_images_as_wrong() -> None:
    cases = evaluation_set()[:3]
    wrong = [render(sprite_for(1)), np.zeros((128, 128, 4), np.uint8), render(sprite_for(2))]
    scores = score(cases, wrong)
    assert [j.shape for j in scores.judgements] == [sprite_for(1).shape, None, sprite_for(2).shape]
    right = sum(case.shape == j.shape for case, j in zip(cases, scores.judgements, strict=True))
    assert scores.shape_accuracy == right / 3 < 1
    assert scores.soft_edge_images == pytest.approx(2 / 3)


def test_the_judge_copes_with_a_body_that_fills_the_image_or_touches_its_edge() -> None:
    full = np.full((128, 128, 4), 255, np.uint8)
    assert judge(full).shape == "square"
    corner = np.zeros((128, 128, 4), np.uint8)
    corner[:40, 100:] = 255
    assert judge(corner).shape is not None


def test_the_evaluation_set_asks_for_every_shape_in_every_colour() -> None:
    cases = evaluation_set()
    assert {(case.shape, case.colour) for case in cases} == {(s, c) for s in SHAPES for c in COLOURS}
    assert len({case.seed for case in cases}) == len(cases)
