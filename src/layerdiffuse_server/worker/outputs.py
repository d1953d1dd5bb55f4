"""Turning an engine result into the endpoint's output: the PNG stored as a file, the JSON that points at it."""

from __future__ import annotations

import time

from ..engine.images import TransparentImage
from ..files import BlobStore, file_url, new_file_id
from ..schemas import Image, LayerDiffusionOutput
from ..store.contracts import FileCatalog, FileRecord


def store_image(
    image: TransparentImage,
    *,
    blobs: BlobStore,
    catalog: FileCatalog,
    base_url: str,
    key_id: str,
    request_id: str,
) -> Image:
    png = image.png()
    file_id = new_file_id()
    file_name = f"layer-diffusion-{image.seed}.png"
    blobs.put(file_id, png)
    catalog.add(
        FileRecord(
            id=file_id,
            file_name=file_name,
            content_type="image/png",
            size=len(png),
            key_id=key_id,
            request_id=request_id,
            created_at=time.time(),
            expires_at=None,  # lives as long as its request (retention)
            ready=True,
        )
    )
    return Image(
        url=file_url(base_url, file_id, file_name),
        content_type="image/png",
        file_name=file_name,
        file_size=len(png),
        width=image.width,
        height=image.height,
    )


def build_output(image: Image, seed: int, has_nsfw_concepts: list[bool] | None) -> LayerDiffusionOutput:
    return LayerDiffusionOutput(image=image, seed=seed, has_nsfw_concepts=has_nsfw_concepts)
