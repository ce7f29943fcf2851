"""Who may read `/metrics`: a bearer token (`AWAKEN_METRICS_TOKEN`) or a client address inside
`AWAKEN_METRICS_ALLOWED_NETWORKS` (default: loopback only). Pure functions; settings parse with them."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from mailbox_app.contract.config import Network


def bearer_matches(authorization: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time; never true without a token set.

    Compared as bytes, never as `str`: `hmac.compare_digest` raises `TypeError` for a `str` with a
    non-ASCII character, and a header holds whatever the client sent. Django hands a header over as the
    latin-1 decoding of its bytes (PEP 3333; the ASGI handler does the same), so encoding it back as
    latin-1 gives the bytes on the wire, which must equal the token's UTF-8 bytes. A `str` beyond
    latin-1 (only an in-process caller can pass one) is taken as UTF-8, a lone surrogate included."""
    if not token:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_wire_bytes(given.strip()), token.encode("utf-8", "surrogatepass"))


def _wire_bytes(header_text: str) -> bytes:
    try:
        return header_text.encode("latin-1")
    except UnicodeEncodeError:
        return header_text.encode("utf-8", "surrogatepass")


def address_allowed(remote_addr: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def may_scrape(remote_addr: str, authorization: str, *, token: str, networks: Sequence[Network]) -> bool:
    return bearer_matches(authorization, token) or address_allowed(remote_addr, networks)
