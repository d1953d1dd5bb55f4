"""Turning an engine result into the endpoint's output: the PNG stored as a file, the JSON that points at it.

The file is catalogued unready, with an expiry, before its bytes are written; the request's
completion publishes it. A worker that dies in between leaves an expired row that retention
deletes with its bytes, and a worker whose completion is refused (it lost its lease) deletes the
file at once: a request never ends with more than one output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..files import BlobStore, file_url, new_file_id
from ..schemas import Image, LayerDiffusionOutput
from ..store.contracts import FileCatalog, FileRecord

if TYPE_CHECKING:
    from ..images import TransparentImage

#: An unpublished output this old belongs to a worker that died; retention deletes it.
UNPUBLISHED_OUTPUT_SECONDS = 3600.0


@dataclass(frozen=True)
class StoredOutput:
    file_id: str
    image: Image


def store_image(
    image: TransparentImage,
    *,
    blobs: BlobStore,
    catalog: FileCatalog,
    base_url: str,
    key_id: str,
    request_id: str,
) -> StoredOutput:
    png = image.png()
    file_id = new_file_id()
    file_name = f"layer-diffusion-{image.seed}.png"
    now = time.time()
    catalog.add(
        FileRecord(
            id=file_id,
            file_name=file_name,
            content_type="image/png",
            size=len(png),
            key_id=key_id,
            request_id=request_id,
            created_at=now,
            expires_at=now + UNPUBLISHED_OUTPUT_SECONDS,  # cleared when the request completes
            ready=False,
        )
    )
    blobs.put(file_id, png, "image/png")
    stored = Image(
        url=file_url(base_url, file_id, file_name),
        content_type="image/png",
        file_name=file_name,
        file_size=len(png),
        width=image.width,
        height=image.height,
    )
    return StoredOutput(file_id, stored)


def discard(output: StoredOutput, *, blobs: BlobStore, catalog: FileCatalog) -> None:
    blobs.delete(output.file_id)
    catalog.delete([output.file_id])


def build_output(
    image: Image, seed: int, has_nsfw_concepts: list[bool] | None, ignored_prompt_words: list[str] | None = None
) -> LayerDiffusionOutput:
    return LayerDiffusionOutput(
        image=image, seed=seed, has_nsfw_concepts=has_nsfw_concepts, ignored_prompt_words=ignored_prompt_words
    )
