"""Where a webhook may be sent: URL syntax, and only globally routable unicast addresses.

Checked twice: when a submit names the URL (a 400 naming `webhook`), and at every delivery after the
host name is resolved — the delivery then connects to the address that was checked, so a name that
resolves to a public address at submit and to 127.0.0.1 later (DNS rebinding) is refused, not followed.
An IPv6 address that carries an IPv4 one (mapped, compatible, translated, NAT64, 6to4, Teredo) is judged
by that IPv4 address too: `64:ff9b::a9fe:a9fe` is 169.254.169.254. `AWAKEN_WEBHOOK_ALLOW_PRIVATE` lifts
the range check (tests, a receiver on the same host or network).
Pure: no Django, so the settings can check `AWAKEN_WEBHOOK_URL` at start-up.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
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


# --- which addresses may be called --------------------------------------------------------------------
# IPv4: the IANA special-purpose registry's blocks that are not globally reachable, multicast and the
# reserved class E block (255.255.255.255, the limited broadcast, is in it). Python's `is_global` is
# consulted too, but never alone: its tables differ between Python versions.
_IPV4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(network), name)
    for network, name in (
        ("0.0.0.0/8", "'this network' (0/8)"),
        ("10.0.0.0/8", "private (10/8)"),
        ("100.64.0.0/10", "shared address space (100.64/10)"),
        ("127.0.0.0/8", "loopback (127/8)"),
        ("169.254.0.0/16", "link-local (169.254/16)"),
        ("172.16.0.0/12", "private (172.16/12)"),
        ("192.0.0.0/24", "IETF protocol assignments (192.0.0/24)"),
        ("192.0.2.0/24", "documentation (192.0.2/24)"),
        ("192.88.99.0/24", "6to4 relay anycast (192.88.99/24)"),
        ("192.168.0.0/16", "private (192.168/16)"),
        ("198.18.0.0/15", "benchmarking (198.18/15)"),
        ("198.51.100.0/24", "documentation (198.51.100/24)"),
        ("203.0.113.0/24", "documentation (203.0.113/24)"),
        ("224.0.0.0/4", "multicast (224/4)"),
        ("240.0.0.0/4", "reserved (240/4, with the broadcast address)"),
    )
)

# IPv6: only global unicast (2000::/3) may be called, less the blocks below; outside it everything is
# refused (the named blocks only give the reason). Forms that carry an IPv4 address (below) are judged
# by it too, first, so `64:ff9b::a9fe:a9fe` is refused as 169.254.169.254.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix: globally reachable
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV6_REFUSED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(network), name)
    for network, name in (
        ("::/128", "unspecified (::)"),
        ("::1/128", "loopback (::1)"),
        ("::ffff:0:0:0/96", "IPv4-translated (::ffff:0:0:0/96)"),
        ("::/96", "IPv4-compatible (::/96, deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64 (64:ff9b:1::/48)"),
        ("100::/64", "discard-only (100::/64)"),
        ("2001::/32", "Teredo (2001::/32)"),
        ("2001:2::/48", "benchmarking (2001:2::/48)"),
        ("2001::/23", "IETF protocol assignments (2001::/23)"),
        ("2001:db8::/32", "documentation (2001:db8::/32)"),
        ("3fff::/20", "documentation (3fff::/20)"),
        ("5f00::/16", "SRv6 SIDs (5f00::/16)"),
        ("fc00::/7", "unique-local (fc00::/7)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("fec0::/10", "site-local (fec0::/10, deprecated)"),
        ("ff00::/8", "multicast (ff00::/8)"),
    )
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form: IPv4-mapped,
    IPv4-compatible, IPv4-translated, NAT64 (the /96 format of both prefixes), 6to4, Teredo (server and
    the de-obfuscated client). Each of them is where a packet may really end up."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    elif address in _IPV4_TRANSLATED:
        found.append(("IPv4-translated", low32))
    elif address in _IPV4_COMPATIBLE and int(address) > 1:  # not :: or ::1
        found.append(("IPv4-compatible", low32))
    elif address in _NAT64 or address in _NAT64_LOCAL:
        found.append(("NAT64", low32))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    return found


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    for network, name in _IPV4_REFUSED:
        if address in network:
            return name
    if not address.is_global:
        return "not globally routable"
    return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be called (None: a globally routable unicast address that may be)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_refusal(address)
    for form, ipv4 in embedded_ipv4(address):
        reason = _ipv4_refusal(ipv4)
        if reason is not None:
            return f"{form} form of {ipv4}, {reason}"
    if address.ipv4_mapped is not None or address in _NAT64:
        return None  # the IPv4 address it carries decides, and it passed
    for network, name in _IPV6_REFUSED:
        if address in network:
            return name
    if address not in _IPV6_GLOBAL_UNICAST:
        return "outside global unicast (2000::/3)"
    if not address.is_global:
        return "not globally routable"
    return None


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address, after every IPv4 address it carries was checked too."""
    return refusal(address) is None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _getaddrinfo(host: str, port: int, timeout_s: float | None) -> list[str]:
    """getaddrinfo, given up after `timeout_s` (None: the resolver's own timeouts). The C call cannot be
    interrupted, so a slow lookup is left to finish in a daemon thread while the caller moves on."""

    def lookup() -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetUnresolved(f"host {host} does not resolve ({exc})") from None
        return [str(info[4][0]) for info in infos]

    if timeout_s is None:
        return lookup()
    outcome: list[list[str] | WebhookTargetError] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(lookup())
        except WebhookTargetError as exc:  # handed to the caller
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"resolve {host}", daemon=True).start()
    if not done.wait(timeout_s):
        raise TargetUnresolved(f"host {host} did not resolve within {timeout_s:.1f} s")
    if not outcome:
        raise TargetUnresolved(f"host {host}: the lookup failed")
    result = outcome[0]
    if isinstance(result, WebhookTargetError):
        raise result
    return result


def resolve(target: Target, *, allow_private: bool, timeout_s: float | None = None) -> list[str]:
    """The addresses to connect to, every one checked. TargetRefused when any is not public (a name
    that resolves to a public and a private address is refused as a whole); TargetUnresolved when the
    name does not resolve (within `timeout_s`, when given)."""
    literal = _literal(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        addresses = []
        for text in _getaddrinfo(target.host, target.port, timeout_s):
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise TargetUnresolved(f"host {target.host} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise TargetRefused(
                    f"host {target.host} is (or resolves to) a non-public address ({address}: {reason}); "
                    "set AWAKEN_WEBHOOK_ALLOW_PRIVATE to allow it"
                )
    return [str(a) for a in addresses]


def check_submitted(url: str, *, allow_private: bool) -> str:
    """A submit's webhook URL, checked (syntax, and the addresses its host resolves to now)."""
    target = parse_target(url)
    if not allow_private:
        resolve(target, allow_private=False)
    return target.url
