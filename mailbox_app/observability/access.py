"""Who may read `/metrics`: a bearer token (`AWAKEN_METRICS_TOKEN`) or a client address inside
`AWAKEN_METRICS_ALLOWED_NETWORKS` (default: loopback only). Pure functions; settings parse with them."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from mailbox_app.contract.config import Network


def bearer_matches(authorization: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time; never true without a token set."""
    scheme, _, given = authorization.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


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
