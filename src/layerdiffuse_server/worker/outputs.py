"""Turning an engine result into the endpoint's output: the PNG stored as a file, the JSON that points at it.

The file is stored unpublished (:class:`..files.StoredFiles`: its row, with an expiry, before its
bytes); the request's completion publishes it. A worker that dies in between leaves an expired row
that retention deletes with its bytes, and a worker whose completion is refused (it lost its lease)
deletes the file at once: a request never ends with more than one output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..files import StoredFiles, file_url
from ..schemas import Image, LayerDiffusionOutput

if TYPE_CHECKING:
    from ..images import TransparentImage


@dataclass(frozen=True)
class StoredOutput:
    file_id: str
    image: Image


def store_image(
    image: TransparentImage, *, files: StoredFiles, base_url: str, key_id: str, request_id: str
) -> StoredOutput:
    png = image.png()
    file_name = f"layer-diffusion-{image.seed}.png"
    record = files.store(
        png,
        file_name=file_name,
        content_type="image/png",
        key_id=key_id,
        request_id=request_id,
        expires_at=None,  # kept as long as its request, once the completion publishes it
        publish=False,
    )
    stored = Image(
        url=file_url(base_url, record.id, file_name),
        content_type="image/png",
        file_name=file_name,
        file_size=len(png),
        width=image.width,
        height=image.height,
    )
    return StoredOutput(record.id, stored)


def discard(output: StoredOutput, *, files: StoredFiles) -> None:
    files.discard([output.file_id])


def build_output(
    image: Image, seed: int, has_nsfw_concepts: list[bool] | None, ignored_prompt_words: list[str] | None = None
) -> LayerDiffusionOutput:
    return LayerDiffusionOutput(
        image=image, seed=seed, has_nsfw_concepts=has_nsfw_concepts, ignored_prompt_words=ignored_prompt_words
    )
