"""A worker's loaded models: least recently used out first, never more than its capacity; and the
batch key that keeps requests of different checkpoints apart."""

from __future__ import annotations

import pytest

from layerdiffuse_server.schemas import GenerationParams, ImageToImageInput, batch_key
from layerdiffuse_server.worker.model_shelf import ModelShelf


def test_the_least_recently_used_model_goes_first() -> None:
    shelf: ModelShelf[str] = ModelShelf(2)
    shelf.put(None, "model")
    shelf.put("anime", "anime engine")
    assert shelf.take(None) == "model"  # now the most recently used
    assert shelf.make_room() == ["anime"] and shelf.names == [None]
    shelf.put("house", "house engine")
    assert shelf.take("anime") is None and shelf.make_room() == [None]
    assert shelf.names == ["house"]


def test_making_room_on_a_shelf_of_one_empties_it() -> None:
    shelf: ModelShelf[str] = ModelShelf(1)
    shelf.put("anime", "anime engine")
    assert shelf.make_room() == ["anime"] and shelf.names == []
    with pytest.raises(ValueError, match="at least one"):
        ModelShelf(0)


def test_requests_of_different_checkpoints_never_share_a_batch() -> None:
    plain = GenerationParams(width=64, height=64)
    anime = GenerationParams(width=64, height=64, model_name="anime")
    assert batch_key(plain) == "64x64:20:dpmpp_2m_karras:8.0"  # as before checkpoints: queued rows keep their keys
    assert batch_key(anime) == "64x64:20:dpmpp_2m_karras:8.0:model=anime"
    assert batch_key(ImageToImageInput(image_url="data:,", model_name="anime")).endswith(":model=anime")
