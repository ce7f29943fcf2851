"""Which addresses a webhook may call, checked offline with the project's own functions: every
non-global form is refused — including IPv6 addresses that carry a non-global IPv4 one (mapped,
compatible, translated, NAT64, 6to4, Teredo), which Python's `is_global` lets through — and real global
addresses pass. Name resolution is bounded, and a name with any non-public address is refused whole."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from typing import Any

import pytest

from mailbox_app.webhooks.targets import (
    TargetRefused,
    TargetUnresolved,
    check_submitted,
    embedded_ipv4,
    parse_target,
    refusal,
    resolve,
)
from tests.support.api import post_json, user_client

REFUSED = [
    # IPv4
    ("0.0.0.0", "'this network'"),
    ("0.1.2.3", "'this network'"),
    ("10.1.2.3", "private"),
    ("100.64.0.1", "shared address space"),
    ("100.127.255.254", "shared address space"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.9", "IETF protocol assignments"),
    ("192.0.0.170", "IETF protocol assignments"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("192.168.0.10", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6 proper
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("feff::1", "site-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("100::1", "discard-only"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "IETF protocol assignments"),
    ("2001:20::1", "IETF protocol assignments"),
    ("5f00::1", "SRv6"),
    ("4000::1", "outside global unicast"),
    ("1::1", "outside global unicast"),
    # IPv6 carrying an IPv4 address: refused as that address
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254, link-local"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1, private"),
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1, loopback"),
    ("::a9fe:a9fe", "IPv4-compatible form of 169.254.169.254"),
    ("::ffff:0:7f00:1", "IPv4-translated form of 127.0.0.1, loopback"),
    ("::ffff:0:a9fe:a9fe", "IPv4-translated form of 169.254.169.254"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254, link-local"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, loopback"),
    ("64:ff9b::c0a8:1", "NAT64 form of 192.168.0.1, private"),
    ("64:ff9b:1::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ("2002:7f00:1::1", "6to4 form of 127.0.0.1, loopback"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254"),
    ("2002:c0a8:1::1", "6to4 form of 192.168.0.1, private"),
    ("2002:0a00:0001::1", "6to4 form of 10.0.0.1, private"),
    # Teredo: the client address is stored inverted (here 192.0.2.45; then 127.0.0.1)
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo client form of 192.0.2.45"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo client form of 127.0.0.1"),
    ("2001:0:7f00:1::1", "Teredo server form of 127.0.0.1"),
    # the forms again with a global IPv4 inside: the IPv6 form itself is non-global
    ("::808:808", "IPv4-compatible (::/96"),
    ("::ffff:0:808:808", "IPv4-translated"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),
]

ACCEPTED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below 100.64/10
    "100.128.0.1",  # just above it
    "172.32.0.1",  # just above 172.16/12
    "192.0.3.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # an IPv4 destination on a dual-stack socket: 8.8.8.8
    "64:ff9b::808:808",  # through the well-known NAT64 prefix to 8.8.8.8
    "2002:808:808::1",  # 6to4 behind 8.8.8.8
]


@pytest.mark.parametrize(("address", "reason"), REFUSED, ids=[a for a, _ in REFUSED])
def test_every_non_global_form_is_refused(address: str, reason: str) -> None:
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and reason in why, why
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(TargetRefused, match="non-public"):
        check_submitted(f"http://{host.replace('%', '%25')}/hook", allow_private=False)


@pytest.mark.parametrize("address", ACCEPTED)
def test_global_addresses_are_accepted(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None
    host = f"[{address}]" if ":" in address else address
    target = parse_target(f"https://{host}/hook")
    assert resolve(target, allow_private=False) == [str(ipaddress.ip_address(address))]


def test_python_is_global_alone_would_let_the_reported_forms_through() -> None:
    """The reason for the project's own tables: these pass `is_global` on this Python."""
    leaky = ["64:ff9b::a9fe:a9fe", "64:ff9b:1::808:808", "2002:7f00:1::1", "::127.0.0.1", "fec0::1"]
    leaky += ["::ffff:0:7f00:1"]
    assert all(ipaddress.ip_address(a).is_global for a in leaky)
    assert all(refusal(ipaddress.ip_address(a)) is not None for a in leaky)


def test_embedded_ipv4_names_each_form() -> None:
    def forms(text: str) -> list[tuple[str, str]]:
        return [(form, str(v4)) for form, v4 in embedded_ipv4(ipaddress.IPv6Address(text))]

    assert forms("::ffff:1.2.3.4") == [("IPv4-mapped", "1.2.3.4")]
    assert forms("::1.2.3.4") == [("IPv4-compatible", "1.2.3.4")]
    assert forms("::ffff:0:102:304") == [("IPv4-translated", "1.2.3.4")]
    assert forms("64:ff9b::102:304") == [("NAT64", "1.2.3.4")]
    assert forms("64:ff9b:1::102:304") == [("NAT64", "1.2.3.4")]
    assert forms("2002:102:304::9") == [("6to4", "1.2.3.4")]
    assert forms("2001:0:4136:e378:8000:63bf:3fff:fdd2") == [
        ("Teredo server", "65.54.227.120"),
        ("Teredo client", "192.0.2.45"),
    ]
    assert forms("::1") == [] and forms("::") == [] and forms("2606:4700::1111") == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "url", ["http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::1]/", "http://[fec0::1]/"]
)
def test_the_api_refuses_the_reported_bypasses_naming_the_field(engine_settings: Any, url: str) -> None:
    engine_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = False
    client = user_client("bypass")
    body = {"messages": [{"role": "user", "content": "x"}], "webhook": url}
    response = post_json(client, "/api/v1/threads/t-bypass/mailbox", body)
    assert response.status_code == 400 and response.json()["field"] == "webhook"
    assert "non-public" in response.json()["error"]


def _fake_resolver(monkeypatch: pytest.MonkeyPatch, answers: list[str], delay_s: float = 0.0) -> None:
    """The operating system's resolver answers `answers` after `delay_s` (only the resolver is faked)."""

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        time.sleep(delay_s)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_name_with_any_non_public_address_is_refused_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_resolver(monkeypatch, ["8.8.8.8", "64:ff9b::7f00:1"])
    with pytest.raises(TargetRefused, match=re.escape("NAT64 form of 127.0.0.1")):
        resolve(parse_target("https://hooks.example.com/x"), allow_private=False, timeout_s=5)
    _fake_resolver(monkeypatch, ["8.8.8.8", "2606:4700::1111"])
    assert resolve(parse_target("https://hooks.example.com/x"), allow_private=False, timeout_s=5) == [
        "8.8.8.8",
        "2606:4700::1111",
    ]


def test_a_slow_resolver_is_given_up_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_resolver(monkeypatch, ["8.8.8.8"], delay_s=3.0)
    before = {t.ident for t in threading.enumerate()}
    started = time.monotonic()
    with pytest.raises(TargetUnresolved, match=re.escape("did not resolve within 0.3 s")):
        resolve(parse_target("https://slow.example.com/x"), allow_private=False, timeout_s=0.3)
    assert time.monotonic() - started < 1.5  # not the resolver's 3 s
    lookups = [t for t in threading.enumerate() if t.ident not in before]
    for thread in lookups:  # the abandoned lookup ends on its own
        thread.join(5)
        assert not thread.is_alive()
