"""Downloading a LoRA file from a URL a request gave, under the outbound-URL guard.

The rules are those of image inputs (:mod:`..files.image_inputs`) and webhooks (:mod:`..outbound`):
public addresses only unless the operator allows a network, the connection made to the address
that was checked (Host header and TLS server name those of the URL), no credentials, no proxy
from the environment, unencoded bodies only, a size limit enforced while streaming and one
deadline for the whole exchange. One difference: redirects are followed, a few hops, each hop's
URL checked by the guard like the first, because the hosts LoRAs live on (the hub, model sites)
answer downloads with a redirect to their storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from ..outbound import IPNetwork, TargetRefused, pinned_get, resolve_webhook_target
from .format import PREFIX_BYTES, not_safetensors, plausible_prefix
from .paths import refusal

DEFAULT_MAX_LORA_BYTES = 2 * 2**30


@dataclass(frozen=True)
class LoraFetchPolicy:
    """Where LoRA downloads may connect, how much they read and for how long."""

    allowed_networks: Sequence[IPNetwork] = ()
    max_bytes: int = DEFAULT_MAX_LORA_BYTES
    timeout_seconds: float = 600.0
    max_redirects: int = 5


def download_lora(
    url: str,
    target: BinaryIO,
    policy: LoraFetchPolicy,
    *,
    shown: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Write the body at ``url`` to ``target``; the number of bytes written.

    Blocking (DNS, and the download in its own event loop so that one deadline covers every hop):
    call it off the event loop.

    Args:
        url: The URL, as :func:`..paths.check_lora_path` returned it.
        target: Where the bytes go (a temporary file of the cache).
        policy: Limits of the download.
        shown: The path as error messages name it.
        transport: The HTTP transport (tests); default: real connections.

    Raises:
        InvalidInputError: The URL was refused, answered with an error, or sent too much or too slowly.
    """
    try:
        return asyncio.run(_follow(url, target, policy, shown, transport))
    except TimeoutError:
        raise refusal(f"the LoRA at {shown} did not arrive within {policy.timeout_seconds:g} s") from None
    except httpx.HTTPError as failure:
        raise refusal(f"could not fetch the LoRA at {shown} ({type(failure).__name__}: {failure})") from None


async def _follow(
    url: str, target: BinaryIO, policy: LoraFetchPolicy, shown: str, transport: httpx.AsyncBaseTransport | None
) -> int:
    async with asyncio.timeout(policy.timeout_seconds):
        for _hop in range(policy.max_redirects + 1):
            location = await _get(url, target, policy, shown, transport)
            if isinstance(location, int):
                return location
            url = location
    raise refusal(f"the LoRA URL {shown} redirected more than {policy.max_redirects} times")


async def _get(
    url: str, target: BinaryIO, policy: LoraFetchPolicy, shown: str, transport: httpx.AsyncBaseTransport | None
) -> int | str:
    """One GET to the checked address: the bytes written, or the URL a redirect points to."""
    try:
        checked = await asyncio.to_thread(resolve_webhook_target, url, policy.allowed_networks)
    except TargetRefused as refused:
        raise refusal(f"the LoRA URL {_shorten(url)} is refused: {refused.reason}") from None
    headers = {
        "User-Agent": "layerdiffuse-server LoRA fetch",
        "Accept-Encoding": "identity",  # what is counted is what arrives
    }
    async with pinned_get(checked, headers, timeout=policy.timeout_seconds, transport=transport) as response:
        if response.is_redirect and "location" in response.headers:
            return str(checked.url.join(response.headers["location"]))
        declared = _check_answer(response, policy.max_bytes, shown)
        head = b""
        written = 0
        async for chunk in response.aiter_raw():
            if len(head) < PREFIX_BYTES:
                head += chunk[: PREFIX_BYTES - len(head)]
                if len(head) == PREFIX_BYTES and not plausible_prefix(head, declared):
                    raise refusal(not_safetensors(shown))  # a pickle, a page: refused before the rest arrives
            written += len(chunk)
            if written > policy.max_bytes:
                raise refusal(_too_large(shown, policy.max_bytes))
            target.write(chunk)
        return written


def _check_answer(response: httpx.Response, max_bytes: int, shown: str) -> int | None:
    """Refuse from the status line and headers, before any of the body is read; the declared length."""
    if not response.is_success:
        raise refusal(f"fetching the LoRA at {shown} failed with HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise refusal(
            f"the LoRA URL {shown} answered with Content-Encoding {encoding[:40]!r}; only unencoded bodies "
            "(identity) are accepted"
        )
    declared = response.headers.get("content-length", "")
    if not declared.isdigit():
        return None
    if int(declared) > max_bytes:
        raise refusal(_too_large(shown, max_bytes))
    return int(declared)


def _too_large(shown: str, max_bytes: int) -> str:
    return f"the LoRA at {shown} is larger than {max_bytes:,} bytes, the most this server accepts (max_lora_bytes)"


def _shorten(url: str) -> str:
    return repr(url if len(url) <= 100 else f"{url[:97]}...")
