"""Where a webhook may be sent: URL syntax, and no loopback / link-local / private-range targets.

Checked twice: when a submit names the URL (a 400 naming `webhook`), and at every delivery after the
host name is resolved — the delivery then connects to the address that was checked, so a name that
resolves to a public address at submit and to 127.0.0.1 later (DNS rebinding) is refused, not followed.
`AWAKEN_WEBHOOK_ALLOW_PRIVATE` lifts the range check (tests, a receiver on the same host or network).
Pure: no Django, so the settings can check `AWAKEN_WEBHOOK_URL` at start-up.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

URL_MAX = 2048
SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookTargetError(ValueError):
    """The URL is unusable as a webhook target; the message says why."""


class TargetRefused(WebhookTargetError):
    """The target is (or resolves to) a loopback, link-local, private or otherwise non-public address."""


class TargetUnresolved(WebhookTargetError):
    """The host name did not resolve (may be transient at delivery time)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    scheme: str
    host: str  # the host name or address, without brackets
    port: int
    host_header: str  # what the request's Host header says (the URL's host[:port])
    path: str  # path and query


def parse_target(url: str) -> Target:
    """The URL's parts; WebhookTargetError when it is not an absolute http(s) URL with a host."""
    text = url.strip()
    if not text:
        raise WebhookTargetError("must not be empty")
    if len(text) > URL_MAX:
        raise WebhookTargetError(f"must be at most {URL_MAX} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise WebhookTargetError("must not contain spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise WebhookTargetError(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise WebhookTargetError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetError("must not carry credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise WebhookTargetError("must name a host")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(
        url=text,
        scheme=scheme,
        host=host,
        port=port or DEFAULT_PORTS[scheme],
        host_header=parts.netloc,
        path=path,
    )


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast (IPv4-mapped IPv6 judged by its IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve(target: Target, *, allow_private: bool) -> list[str]:
    """The addresses to connect to, every one checked. TargetRefused when any is not public (a name
    that resolves to a public and a private address is refused as a whole); TargetUnresolved when the
    name does not resolve."""
    literal = _literal(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetUnresolved(f"host {target.host} does not resolve ({exc})") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise TargetUnresolved(f"host {target.host} does not resolve")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise TargetRefused(
                    f"host {target.host} is (or resolves to) a non-public address ({address}); "
                    "set AWAKEN_WEBHOOK_ALLOW_PRIVATE to allow it"
                )
    return [str(a) for a in addresses]


def check_submitted(url: str, *, allow_private: bool) -> str:
    """A submit's webhook URL, checked (syntax, and the addresses its host resolves to now)."""
    target = parse_target(url)
    if not allow_private:
        resolve(target, allow_private=False)
    return target.url
