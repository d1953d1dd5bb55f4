"""Turning an engine result into the endpoint's output: each PNG stored as a file, the JSON that points at them.

The files are stored unpublished (:class:`..files.StoredFiles`: each row, with an expiry, before its
bytes); the request's completion publishes them. A worker that dies in between leaves expired rows
that retention deletes with their bytes; a store that fails on one image discards the images stored
before it; and a worker whose completion is refused (it lost its lease) deletes the files at once:
a request never ends with more than one set of outputs, nor with part of one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine_choices import DEFAULT_PNG_COMPRESSION, PngCompression
from ..files import StoredFiles, file_url
from ..schemas import Image, LayerDiffusionOutput

if TYPE_CHECKING:
    from ..images import TransparentImage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredOutput:
    file_id: str
    image: Image


def store_image(
    image: TransparentImage,
    *,
    files: StoredFiles,
    base_url: str,
    key_id: str,
    request_id: str,
    compression: PngCompression = DEFAULT_PNG_COMPRESSION,
) -> StoredOutput:
    png = image.png(compression)
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


def store_images(
    images: Sequence[TransparentImage],
    *,
    files: StoredFiles,
    base_url: str,
    key_id: str,
    request_id: str,
    compression: PngCompression = DEFAULT_PNG_COMPRESSION,
) -> list[StoredOutput]:
    """Store every image of a request (see :func:`store_image`), all or none: when one fails, those
    stored before it are discarded and the error is raised."""
    stored: list[StoredOutput] = []
    try:
        for image in images:
            stored.append(
                store_image(
                    image, files=files, base_url=base_url, key_id=key_id, request_id=request_id, compression=compression
                )
            )
    except BaseException:
        try:
            discard(stored, files=files)
        except Exception:  # the store's error is the one to raise; retention deletes the rest
            logger.warning("could not discard the images of %s stored before a failure", request_id, exc_info=True)
        raise
    return stored


def discard(outputs: Sequence[StoredOutput], *, files: StoredFiles) -> None:
    files.discard([output.file_id for output in outputs])


def build_output(
    images: Sequence[Image],
    seed: int,
    has_nsfw_concepts: list[bool] | None,
    has_transparency: list[bool] | None = None,
    ignored_prompt_words: list[str] | None = None,
) -> LayerDiffusionOutput:
    """The endpoint's output: ``image`` is the first of ``images``, ``seed`` the first image's."""
    return LayerDiffusionOutput(
        image=images[0],
        images=list(images),
        seed=seed,
        has_nsfw_concepts=has_nsfw_concepts,
        has_transparency=has_transparency,
        ignored_prompt_words=ignored_prompt_words,
    )
