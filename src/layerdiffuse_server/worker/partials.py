"""The worker's side of partial images: the engine's ``on_partial(step, images)`` (RGBA uint8
arrays, the batch's images in order) stored per request as short-lived PNG files, each named by a
line of the request's log (see :mod:`..partial_images`).

The engine decides when to show an image (it knows each request's ``partial_images``); here a
request keeps the first image of its own share of the batch, up to its ``partial_images`` (when
its input has that field) and never more than :data:`..partial_images.MAX_PARTIAL_IMAGES`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..files import StoredFiles, file_url
from ..images import encode_png
from ..partial_images import MAX_PARTIAL_IMAGES, PARTIAL_IMAGE_SECONDS, partial_image_line
from ..schemas import LayerDiffusionInput
from ..store.contracts import RequestRecord

logger = logging.getLogger(__name__)


def takes_partials(method: Callable[..., Any]) -> bool:
    """Whether an engine method accepts ``on_partial`` (engines that cannot show partials do not)."""
    try:
        return "on_partial" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def wanted_partials(params: LayerDiffusionInput) -> int:
    """How many partial images a request takes: its ``partial_images`` where its input has one, else
    as many as the engine shows (up to the most)."""
    wanted = getattr(params, "partial_images", None)
    return MAX_PARTIAL_IMAGES if wanted is None else min(int(wanted), MAX_PARTIAL_IMAGES)


class PartialImages:
    """The ``on_partial`` of one batch.

    Args:
        leases: The batch's requests, in batch order.
        params: Their parameters (``num_images`` says each one's share of the images).
        files: Where the PNGs go, for the request's key.
        base_url: The base of file URLs.
        log: Writes a line of a request's log; False once the request is no longer ours.
        live: Whether a request still runs (cancelled ones get nothing more).
        now: The clock the files' expiry is counted on.
    """

    def __init__(
        self,
        leases: Sequence[RequestRecord],
        params: Sequence[LayerDiffusionInput],
        *,
        files: StoredFiles,
        base_url: str,
        log: Callable[[RequestRecord, str], None],
        live: Callable[[RequestRecord], bool],
        now: Callable[[], float],
    ) -> None:
        self.leases = list(leases)
        self.params = list(params)
        self.files = files
        self.base_url = base_url
        self.log = log
        self.live = live
        self.now = now
        self.sent = [0] * len(self.leases)

    @property
    def wanted(self) -> bool:
        """Whether any request of the batch takes partial images."""
        return any(wanted_partials(params) > 0 for params in self.params)

    def __call__(self, step: int, images: list[np.ndarray]) -> None:
        offset = 0
        for index, (lease, params) in enumerate(zip(self.leases, self.params, strict=True)):
            first, offset = offset, offset + params.num_images
            if first >= len(images) or self.sent[index] >= wanted_partials(params) or not self.live(lease):
                continue
            try:
                record = self.files.store(
                    encode_png(images[first]),
                    file_name=f"partial-{self.sent[index] + 1}.png",
                    content_type="image/png",
                    key_id=lease.key_id,
                    expires_at=self.now() + PARTIAL_IMAGE_SECONDS,
                )
            except Exception:  # a partial image is not worth the request
                logger.warning("could not store a partial image of %s", lease.id, exc_info=True)
                continue
            url = file_url(self.base_url, record.id, record.file_name)
            self.log(lease, partial_image_line(self.sent[index], step, url))
            self.sent[index] += 1
