"""Which outside URLs we call (webhooks, image inputs), and at which address.

Any API key names a webhook URL, so without a guard the server would probe the network it sits in
on the key holder's behalf. The rules:

- the URL is parsed by httpx, the library that sends the request, so what is checked is what is
  sent (``http://01.1.1.1/`` is refused here, not at delivery);
- http(s) only, a host, a valid port, no credentials (they would be sent as Basic auth);
- the host is resolved and only public unicast addresses are used, plus networks the operator
  allowed; an IPv6 address that carries an IPv4 one (NAT64, IPv4-mapped or -compatible, 6to4,
  Teredo) is judged by the IPv4 address it reaches;
- the delivery connects to the address that was checked (the Host header and TLS server name stay
  those of the URL), at every attempt, so a DNS answer that changes between check and connect
  (DNS rebinding) cannot redirect it. Redirects are not followed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx

from .errors import InvalidInputError

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def parse_networks(specs: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(spec, strict=False) for spec in specs]


class TargetRefused(InvalidInputError):
    """A URL the guard will not connect to; ``reason`` says why, for callers that name the URL otherwise."""

    def __init__(self, reason: str, webhook_hint: str = "") -> None:
        super().__init__(f"webhook URL refused: {reason}{webhook_hint}", field="fal_webhook", location="query")
        self.reason = reason


def _refuse(reason: str, webhook_hint: str = "") -> TargetRefused:
    """A refusal; ``reason`` holds for any URL the guard checks, ``webhook_hint`` only for webhooks."""
    return TargetRefused(reason, webhook_hint)


def reached_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address delivers to, where it embeds one."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in prefix for prefix in _NAT64_PREFIXES) or int(address) >> 32 == 0:  # NAT64, ::a.b.c.d
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_permitted(address: IPAddress, allowed_networks: Sequence[IPNetwork]) -> bool:
    if any(address in network for network in allowed_networks):
        return True
    embedded = reached_ipv4(address)
    if embedded is not None:
        return is_permitted(embedded, allowed_networks)
    if address.is_multicast or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return False  # Python counts these as global
    return address.is_global


def normalize_webhook_url(url: str) -> httpx.URL:
    """The URL as httpx will send it, or the reason it will not be called."""
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as error:
        raise _refuse(f"not a valid URL ({error})") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise _refuse("it must be an absolute http:// or https:// URL")
    if parsed.userinfo:
        raise _refuse("credentials in the URL are not sent", "; authenticate the webhook by its signature")
    if port is not None and not 0 < port < 65536:
        raise _refuse(f"port {port} is out of range")
    if parsed.fragment:
        parsed = parsed.copy_with(fragment=None)
    return parsed


@dataclass(frozen=True)
class WebhookTarget:
    """A checked URL and the address to connect to for it."""

    url: httpx.URL
    address: IPAddress

    @property
    def connect_url(self) -> httpx.URL:
        return self.url.copy_with(host=str(self.address))

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")

    @property
    def server_name(self) -> str:
        return self.url.raw_host.decode("ascii")


@contextlib.asynccontextmanager
async def pinned_get(
    target: WebhookTarget, headers: dict[str, str], *, timeout: float, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[httpx.Response]:
    """A streamed GET of a checked target that connects to its checked address and nowhere else:
    ``Host`` and the TLS server name are the URL's, redirects are the caller's to check again, no
    proxy from the environment, and no keep-alive (the connection serves one address, one name)."""
    async with (
        httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client,
        client.stream(
            "GET",
            target.connect_url,
            headers={"Host": target.host_header, **headers},
            extensions={"sni_hostname": target.server_name},
        ) as response,
    ):
        yield response


def resolve_webhook_target(url: str, allowed_networks: Sequence[IPNetwork]) -> WebhookTarget:
    """Parse, resolve and check ``url``; blocking (DNS), so call it off the event loop."""
    parsed = normalize_webhook_url(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise _refuse(f"cannot resolve {host!r} ({error})") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))
    permitted = [address for address in addresses if is_permitted(address, allowed_networks)]
    if not permitted:
        shown = ", ".join(str(address) for address in addresses)
        raise _refuse(
            f"{host} resolves to the non-public address {shown}; the operator can allow it with "
            "--webhook-allow-network (LAYERDIFFUSE_WEBHOOK_ALLOWED_NETWORKS)"
        )
    return WebhookTarget(parsed, permitted[0])


def check_webhook_url(url: str, allowed_networks: Sequence[IPNetwork]) -> str:
    """The normalised URL if we may deliver to it now, else :class:`InvalidInputError` (field ``fal_webhook``)."""
    return str(resolve_webhook_target(url, allowed_networks).url)
