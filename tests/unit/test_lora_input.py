"""The ``loras`` field every endpoint takes: fal's shape, its bounds, and its part in the batch key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from layerdiffuse_server.schemas import (
    MAX_LORAS,
    ForegroundToBlendedInput,
    GenerationParams,
    ImageToImageInput,
    LayerDiffusionInput,
    LoraWeight,
    batch_key,
)


def test_every_endpoint_takes_loras_and_none_is_the_default() -> None:
    assert LayerDiffusionInput().loras == []
    lora = {"path": "style.safetensors"}
    for model in (LayerDiffusionInput, ImageToImageInput, ForegroundToBlendedInput):
        assert "loras" in model.model_json_schema()["properties"]
    assert ImageToImageInput(image_url="x", loras=[lora]).loras == [LoraWeight(path="style.safetensors", scale=1.0)]
    assert "transparency" in LayerDiffusionInput.model_fields["loras"].description.lower()


@pytest.mark.parametrize(
    "loras",
    [
        [{"path": "a"}] * (MAX_LORAS + 1),
        [{"path": ""}],
        [{"path": "a" * 2049}],
        [{"path": "a", "scale": 4.5}],
        [{"path": "a", "scale": "1"}],
        [{"path": "a", "weight": 1.0}],
        [{"scale": 1.0}],
    ],
)
def test_loras_out_of_bounds_are_refused(loras: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError) as refused:
        LayerDiffusionInput(loras=loras)  # type: ignore[arg-type]
    assert refused.value.errors()[0]["loc"][0] == "loras"


def test_requests_share_a_batch_only_with_the_same_loras() -> None:
    plain = GenerationParams(width=64, height=64)
    assert batch_key(plain) == "64x64:20:dpmpp_2m_karras:8.0"  # as before LoRAs: queued rows keep their keys
    one = plain.model_copy(update={"loras": [LoraWeight(path="a.safetensors")]})
    same = GenerationParams(width=64, height=64, loras=[LoraWeight(path="a.safetensors", scale=1.0)])
    scaled = plain.model_copy(update={"loras": [LoraWeight(path="a.safetensors", scale=0.5)]})
    other = plain.model_copy(update={"loras": [LoraWeight(path="b.safetensors")]})
    keys = {batch_key(params) for params in (plain, one, scaled, other)}
    assert len(keys) == 4 and batch_key(one) == batch_key(same)
    assert len(batch_key(one)) < 100  # a fixed length, however long the paths
