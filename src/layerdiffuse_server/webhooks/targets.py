"""Which webhook URLs we will call: http(s) only, and no private, loopback or link-local address
unless the operator allowed that network — otherwise any API key could make the server probe the
network it sits in. Checked at submit and again at each delivery (DNS may change in between)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..errors import InvalidInputError

MAX_URL_LENGTH = 2048


def parse_networks(specs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(spec, strict=False) for spec in specs]


def check_webhook_url(url: str, allowed_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The URL if we may deliver to it, else :class:`InvalidInputError` (field ``fal_webhook``)."""

    def refuse(reason: str) -> InvalidInputError:
        return InvalidInputError(f"webhook URL refused: {reason}", field="fal_webhook", location="query")

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("it must be an absolute http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise refuse(f"cannot resolve {parts.hostname!r} ({error})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_global:
            continue
        if any(address in network for network in allowed_networks):
            continue
        raise refuse(
            f"{parts.hostname} resolves to the non-public address {address}; "
            "the operator can allow it with --webhook-allow-network"
        )
    return url
