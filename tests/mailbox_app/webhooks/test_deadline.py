"""One total deadline per attempt: a receiver that answers one byte a second (so no single read ever
times out) is cut off at AWAKEN_WEBHOOK_TIMEOUT_MS — in the status line, in the TLS handshake, in an
error body — and the attempt is recorded as failed with a clear error and retried with backoff; the
row's lease outlives the deadline, so the beat's re-drive never rings a row an attempt still holds.

Hostile receivers are real sockets on loopback (`TrickleReceiver`); the outbox rows are real rows."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import WebhookDelivery, WebhookDeliveryStatus
from mailbox_app.services import mailbox
from mailbox_app.webhooks import delivery, outbox, transport
from mailbox_app.webhooks.targets import parse_target
from runs_app import store as run_store
from tests.mailbox_app.webhooks.receivers import TrickleReceiver
from tests.support.waiting import wait_until

SLACK_S = 1.0  # how late after its deadline an attempt may end (a loaded machine's scheduling)


def _post(
    url: str, budget_ms: int, tls: ssl.SSLContext | None = None
) -> tuple[transport.Answer | transport.SendFailed, float]:
    """transport.post of `url` to 127.0.0.1 (whatever its host) under a fresh deadline: (its answer or
    failure, seconds)."""
    target = parse_target(url)
    started = time.monotonic()
    try:
        answer: transport.Answer | transport.SendFailed = transport.post(
            target,
            "127.0.0.1",
            b"{}",
            {"Content-Type": "application/json"},
            transport.Deadline.after_ms(budget_ms),
            tls=tls,
        )
    except transport.SendFailed as exc:
        answer = exc
    return answer, time.monotonic() - started


def test_a_receiver_that_trickles_its_status_line_is_cut_at_the_deadline(trickle: TrickleReceiver) -> None:
    """One byte a second: a per-read timeout of 5 s would wait for all 40 bytes (40 s and more)."""
    failed, elapsed = _post(trickle.url(), 2_500)
    assert isinstance(failed, transport.SendFailed), failed
    assert "timed out waiting for the response" in str(failed) and "deadline of 2500 ms" in str(failed)
    assert not failed.unreachable
    assert 2.5 <= elapsed <= 2.5 + SLACK_S
    (held,) = trickle.connections()
    wait_until(lambda: held.closed_at is not None, timeout=5, what="the receiver saw the hang-up")
    assert held.bytes_sent >= 2  # the reads did return: only the total deadline ended it
    assert held.held_s is not None and held.held_s <= 2.5 + SLACK_S


def test_a_tls_handshake_that_never_answers_is_cut_at_the_deadline() -> None:
    silent = TrickleReceiver(silent=True)
    try:
        failed, elapsed = _post(f"https://127.0.0.1:{silent.port}/hook", 1_500)
    finally:
        silent.close()
    assert isinstance(failed, transport.SendFailed), failed
    assert "in the TLS handshake" in str(failed) and "deadline of 1500 ms" in str(failed)
    assert 1.5 <= elapsed <= 1.5 + SLACK_S


@dataclass(frozen=True)
class Pki:
    """A throw-away CA and a server certificate for `hooks.test` it signed (made by the openssl CLI)."""

    client: ssl.SSLContext  # the deliveries' own context, also trusting the CA
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    folder: Path = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    (folder / "server.ext").write_text(
        "subjectAltName=DNS:hooks.test\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=webhook test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=hooks.test")  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    client = transport.tls_context()
    client.load_verify_locations(folder / "ca.pem")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "server.pem", folder / "server.key")
    yield Pki(client, server)


def test_tls_goes_to_the_checked_address_and_verifies_the_urls_host_name(pki: Pki) -> None:
    fast = TrickleReceiver(interval_s=0.001, tls=pki.server)
    try:
        # the URL names hooks.test, the connection goes to 127.0.0.1: SNI and the certificate check
        # are for the name (what defeats DNS rebinding)
        answer, _ = _post(f"https://hooks.test:{fast.port}/hook", 5_000, pki.client)
        assert answer == transport.Answer(200, "")
        failed, _ = _post(f"https://other.test:{fast.port}/hook", 5_000, pki.client)
        assert isinstance(failed, transport.SendFailed) and "TLS failed in the TLS handshake" in str(failed)
        assert "other.test" in str(failed)
        untrusted, _ = _post(f"https://hooks.test:{fast.port}/hook", 5_000)  # the system's CAs only
        assert isinstance(untrusted, transport.SendFailed) and "certificate verify failed" in str(untrusted)
    finally:
        fast.close()


def test_a_receiver_that_trickles_over_tls_is_cut_at_the_deadline(pki: Pki) -> None:
    slow = TrickleReceiver(interval_s=1.0, tls=pki.server)
    try:
        failed, elapsed = _post(f"https://hooks.test:{slow.port}/hook", 2_500, pki.client)
    finally:
        slow.close()
    assert isinstance(failed, transport.SendFailed), failed
    assert "timed out waiting for the response" in str(failed) and "deadline of 2500 ms" in str(failed)
    assert 2.5 <= elapsed <= 2.5 + SLACK_S
    (held,) = slow.connections()
    assert held.bytes_sent >= 2


def test_an_error_body_that_trickles_is_cut_and_the_status_kept() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 400\r\n\r\n"
    slow_body = TrickleReceiver(interval_s=0.01, answer=head + b"x" * 400)  # the body alone takes 4 s
    try:
        answer, elapsed = _post(slow_body.url(), 1_500)
    finally:
        slow_body.close()
    assert answer == transport.Answer(503, "(the body did not arrive by the deadline)")
    assert 1.5 <= elapsed <= 1.5 + SLACK_S


def test_a_2xx_ends_the_attempt_at_its_headers_without_waiting_for_the_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n"
    slow_body = TrickleReceiver(interval_s=0.01, answer=head + b"x" * 400)
    try:
        answer, elapsed = _post(slow_body.url(), 3_000)
    finally:
        slow_body.close()
    assert answer == transport.Answer(200, "")
    assert elapsed < 3.0


def test_a_closed_port_is_unreachable_at_once() -> None:
    closed = TrickleReceiver()
    port = closed.port
    closed.close()  # nothing listens there now
    failed, elapsed = _post(f"http://127.0.0.1:{port}/hook", 2_000)
    assert isinstance(failed, transport.SendFailed) and failed.unreachable
    assert "connecting to 127.0.0.1 failed" in str(failed)
    assert elapsed < 2.0


def test_a_spent_deadline_refuses_to_start() -> None:
    deadline = transport.Deadline(time.monotonic() - 0.001, 1_000)
    with pytest.raises(transport.DeadlineExceeded, match="deadline of 1000 ms"):
        deadline.remaining()


# --- the attempt, its row, its lease ------------------------------------------------------------------


def _row_to(url: str) -> str:
    """A finished run's outbox row for `url` (committed), not rung to any worker."""
    with transaction.atomic():
        submitted = mailbox.submit_background(
            RunRequest(thread_id=f"t-deadline-{now_ms()}", messages=[ChatMessage.user("x")])
        )
        outbox.subscribe(submitted.run_id, url)
    run = run_store.load_run(run_id=submitted.run_id)
    assert run is not None
    with transaction.atomic():
        delivery_id = outbox.record_run_event(run.model_copy(update={"status": RunStatus.DONE}))
    assert delivery_id is not None
    return delivery_id


@pytest.mark.django_db(transaction=True)
def test_an_attempt_held_by_a_trickling_receiver_fails_at_its_deadline_and_is_never_rerung_meanwhile(
    hook_settings: Any, clean_redis: Any, trickle: TrickleReceiver
) -> None:
    hook_settings.AWAKEN_WEBHOOK_TIMEOUT_MS = 2_500
    hook_settings.AWAKEN_WEBHOOK_RETRY_DELAY_MS = 1_000
    hook_settings.AWAKEN_WEBHOOK_MAX_RETRY_DELAY_MS = 60_000
    delivery_id = _row_to(trickle.url())
    outcome: list[delivery.DeliveryOutcome] = []

    def attempt() -> None:
        try:
            outcome.append(delivery.deliver(delivery_id))
        finally:
            connection.close()

    started_ms = now_ms()
    thread = threading.Thread(target=attempt)
    thread.start()
    try:
        wait_until(lambda: trickle.open_count() == 1, timeout=5, what="the receiver holds the attempt")
        held = WebhookDelivery.objects.get(delivery_id=delivery_id)
        assert held.attempts == 1 and held.locked_until is not None
        # the lease covers the whole deadline and the margin: the beat, even when it runs right at the
        # moment the deadline passes, finds the row held and rings nothing
        assert held.locked_until >= started_ms + 2_500 + delivery.LEASE_MARGIN_MS
        assert delivery.redrive(now=started_ms + 2_500 + 500) == 0
        while thread.is_alive():
            assert delivery.redrive() == 0
            thread.join(0.2)
    finally:
        thread.join(10)
    elapsed_s = (now_ms() - started_ms) / 1000
    assert outcome == [delivery.DeliveryOutcome.RETRY]
    assert elapsed_s <= 2.5 + SLACK_S
    row = WebhookDelivery.objects.get(delivery_id=delivery_id)
    assert row.status == WebhookDeliveryStatus.PENDING and row.attempts == 1 and row.locked_until is None
    assert row.last_status_code is None
    error = row.last_error or ""
    assert "timed out waiting for the response" in error and "deadline of 2500 ms" in error, error
    assert "AWAKEN_WEBHOOK_TIMEOUT_MS" in error
    # retried with backoff as before: the first retry after AWAKEN_WEBHOOK_RETRY_DELAY_MS
    assert row.updated_at + 1_000 == row.next_attempt_at
    (connection_held,) = trickle.connections()
    assert connection_held.bytes_sent >= 2


def test_the_lease_is_the_deadline_and_its_margin(hook_settings: Any) -> None:
    hook_settings.AWAKEN_WEBHOOK_TIMEOUT_MS = 5_000
    assert delivery.lease_ms() == 5_000 + delivery.LEASE_MARGIN_MS
    hook_settings.AWAKEN_WEBHOOK_TIMEOUT_MS = 60_000
    assert delivery.lease_ms() == 60_000 + delivery.LEASE_MARGIN_MS
