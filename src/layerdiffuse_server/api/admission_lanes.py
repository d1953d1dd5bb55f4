"""Where a submission with image inputs is admitted: inline images never wait behind external fetches,
and no key holds more than its share of the fetches.

Admitting an inline image (a ``data:`` URI, a file URL of this server) takes milliseconds; fetching
an external URL may take the whole ``image_input_timeout_seconds``. In one shared pool, 40 slow URLs
of one key held up every other key's ``data:`` submission by 22 s. So there are two lanes:

- *inline*: submissions whose images are all inline, :data:`INLINE_ADMISSIONS` at once;
- *fetch*: submissions with at least one external URL, :data:`FETCHES` at once in all, and at most
  :data:`FETCHES_PER_KEY` of those for one key (its further ones wait for its own slots, not for
  anyone else's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

#: Admissions of inline images at once per API node (threads: decoding and storing take CPU).
INLINE_ADMISSIONS = 8
#: Admissions with external fetches at once per API node.
FETCHES = 8
#: How many of those one key may hold; with four keys fetching, nobody waits for another's.
FETCHES_PER_KEY = 2

T = TypeVar("T")


class AdmissionLanes:
    """The two lanes of one process (one event loop)."""

    def __init__(
        self, inline: int = INLINE_ADMISSIONS, fetches: int = FETCHES, fetches_per_key: int = FETCHES_PER_KEY
    ) -> None:
        self.inline = anyio.CapacityLimiter(inline)
        self.fetches = anyio.CapacityLimiter(fetches)
        self.fetches_per_key = fetches_per_key
        self._keys: dict[str, _Share] = {}

    async def run(self, key_id: str, fetches: bool, admit: Callable[[], T]) -> T:
        """``admit()`` in a thread of its lane, once the lane (and for fetches the key's share) has room."""
        if not fetches:
            return await anyio.to_thread.run_sync(admit, limiter=self.inline)
        share = self._keys.get(key_id)
        if share is None:
            share = self._keys[key_id] = _Share(anyio.CapacityLimiter(self.fetches_per_key))
        share.users += 1  # before any await, so the share is not dropped while this one waits for it
        try:
            async with share.limiter:
                return await anyio.to_thread.run_sync(admit, limiter=self.fetches)
        finally:
            share.users -= 1
            if share.users == 0:
                del self._keys[key_id]  # a key's share lives while it is used


@dataclass
class _Share:
    limiter: anyio.CapacityLimiter
    users: int = 0
