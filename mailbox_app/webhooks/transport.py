"""One webhook request under a total deadline: connect, TLS handshake, send, status and headers, and the
part of the body that is read all end by the attempt's deadline (AWAKEN_WEBHOOK_TIMEOUT_MS), however the
receiver spreads its bytes.

A per-read timeout (urllib3's, http.client's) is no bound: a receiver that answers one byte a second
never lets a read time out and holds the attempt as long as it likes. Here every blocking socket call —
each `recv`, `send`, the connect and the handshake — first sets the socket's timeout to what is left of
the deadline, and refuses to start once nothing is left; so the attempt ends by the deadline whatever
the receiver does. Nothing else blocks: no thread, no timer.

The request goes to an address that `targets.resolve` checked; TLS verifies the URL's host name (SNI
and certificate), so a rebound DNS name cannot redirect it. http.client (the standard library's HTTP/1.1
client) does the protocol; this module supplies its connection. No redirects are followed. Of the
answer, a 2xx status ends the attempt as soon as the headers are in (the body is not read); any other
status reads at most `DETAIL_BYTES` of the body for the error.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from mailbox_app.webhooks.targets import Target

DETAIL_BYTES = 500


class DeadlineExceeded(TimeoutError):
    """The attempt's deadline passed before the request (or a step of it) could start or finish."""


class SendFailed(Exception):
    """The request failed; the message says at which step. `unreachable`: no connection was made
    (another address of the host may still be tried, within the same deadline)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point on the monotonic clock, `budget_ms` after the attempt began."""

    at: float
    budget_ms: int

    @classmethod
    def after_ms(cls, budget_ms: int) -> Deadline:
        return cls(time.monotonic() + budget_ms / 1000, budget_ms)

    def remaining(self) -> float:
        """Seconds left (> 0); DeadlineExceeded when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the attempt's deadline of {self.budget_ms} ms passed")
        return left


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    detail: str  # the start of the body of a non-2xx answer ("" for a 2xx)


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every blocking call waits at most until the deadline."""

    deadline: Deadline

    def _arm(self) -> None:
        self.settimeout(self.deadline.remaining())

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()  # CPython's sendall holds its timeout as a bound on the whole call
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS socket of `_DeadlineSocket`: `recv`/`recv_into` read through `read`, `sendall` loops
    over `send`, so arming those two bounds every blocking step."""

    deadline: Deadline

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self.settimeout(self.deadline.remaining())
        return super().read(len, buffer)

    def send(self, data: Any, flags: int = 0) -> int:
        self.settimeout(self.deadline.remaining())
        return super().send(data, flags)


def tls_context() -> ssl.SSLContext:
    """Certificate and host-name verification as `ssl.create_default_context` does, with deadline sockets."""
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


_TLS: ssl.SSLContext | None = None


def _default_tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = tls_context()
    return _TLS


class _Connection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to a checked `address` of `target`, every step bounded by `deadline`."""

    def __init__(self, target: Target, address: str, deadline: Deadline, tls: ssl.SSLContext | None) -> None:
        super().__init__(address, target.port)  # no timeout of its own: `connect` arms the deadline
        self.target = target
        self.address = address
        self.deadline = deadline
        self.tls = tls
        self.step = "connecting"

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        raw = _DeadlineSocket(family, socket.SOCK_STREAM)
        raw.deadline = self.deadline
        sock: socket.socket = raw
        try:
            raw.settimeout(self.deadline.remaining())
            raw.connect((self.address, self.target.port))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                self.step = "in the TLS handshake"
                secure = self.tls.wrap_socket(
                    raw, server_hostname=self.target.host, do_handshake_on_connect=False
                )
                sock = secure
                if isinstance(secure, _DeadlineSSLSocket):
                    secure.deadline = self.deadline
                secure.settimeout(self.deadline.remaining())  # the handshake's bound as a whole
                secure.do_handshake()
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.step = "sending the request"


def post(
    target: Target,
    address: str,
    body: bytes,
    headers: dict[str, str],
    deadline: Deadline,
    *,
    tls: ssl.SSLContext | None = None,
) -> Answer:
    """POST `body` to `address` (a checked address of `target`'s host) by `deadline`."""
    context = (tls or _default_tls()) if target.scheme == "https" else None
    connection = _Connection(target, address, deadline, context)
    try:
        connection.request(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header, "Connection": "close"},
        )
        connection.step = "waiting for the response"
        response = connection.getresponse()
        if 200 <= response.status < 300:
            return Answer(response.status, "")
        connection.step = "reading the response body"
        try:
            detail = response.read(DETAIL_BYTES).decode(errors="replace")
        except (TimeoutError, OSError, http.client.HTTPException):
            detail = "(the body did not arrive by the deadline)"
        return Answer(response.status, detail)
    except TimeoutError:
        raise SendFailed(
            f"timed out {connection.step} at {address}: the attempt's deadline of {deadline.budget_ms} ms "
            "(AWAKEN_WEBHOOK_TIMEOUT_MS, the whole request) passed",
            unreachable=connection.step == "connecting",
        ) from None
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise SendFailed(f"TLS failed {connection.step} at {address}: {exc}") from None
    except http.client.HTTPException as exc:
        raise SendFailed(f"bad HTTP answer from {address}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        unreachable = connection.step == "connecting"
        raise SendFailed(f"{connection.step} to {address} failed: {exc}", unreachable=unreachable) from None
    finally:
        connection.close()
