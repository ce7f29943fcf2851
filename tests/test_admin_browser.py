"""End to end in headless Chromium (Debian's `chromium`): log into the admin through its login form,
follow the index's link to the mailbox overview, ask why a thread is blocked, read the answer.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on fd 3,
replies on fd 4, NUL-separated JSON), so no Python package and no driver binary is needed.
`scripts/install-chromium.sh` installs the browser; without it this test is skipped, saying why.
Set AWAKEN_SCREENSHOT_DIR to keep a screenshot of the final page.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.urls import reverse

from mailbox_app import store
from mailbox_app.ids import now_ms
from tests.conftest import make_dispatch
from tests.support.waiting import wait_until

CHROMIUM = Path(os.environ.get("AWAKEN_CHROMIUM", "/usr/bin/chromium"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--window-size=1400,1200",
    "--remote-debugging-pipe",
)
HOLDER = "browser-worker:7"
THREAD = "t-browser-blocked"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: run scripts/install-chromium.sh (apt-get install chromium)",
    ),
    pytest.mark.django_db(transaction=True),  # the live server's thread must see committed rows
]


class DevToolsError(RuntimeError):
    pass


def _above_9(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """A headless Chromium process and a minimal DevTools client over its pipe (synchronous)."""

    def __init__(self, user_data_dir: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium's ends go above fd 9 so that moving them to 3 and 4 cannot clobber one another.
        to_browser_r, from_browser_w = (_above_9(to_browser_r), _above_9(from_browser_w))
        env = {**os.environ, "CDP_IN": str(to_browser_r), "CDP_OUT": str(from_browser_w)}
        # bash (dash takes one-digit fds only) moves the pipe ends to fds 3 and 4, then becomes Chromium.
        self.process = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                'exec "$0" "$@" 3<&"$CDP_IN" 4>&"$CDP_OUT"',
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            pass_fds=(to_browser_r, from_browser_w),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: closed as a whole below
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._buffer = b""
        self.session = ""

    def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30) -> Any:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise DevToolsError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def open_page(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for_page(lambda path: True)

    def wait_for_page(self, accept: Any, *, what: str = "page load") -> str:
        """Wait until the document is complete and its path satisfies `accept`; returns the path."""

        def loaded() -> str | None:
            state = self.evaluate("document.readyState + ' ' + location.pathname")
            ready, _, path = (state or "").partition(" ")
            return path if ready == "complete" and accept(path) else None

        return str(wait_until(loaded, timeout=30, interval=0.05, what=what))

    def text(self) -> str:
        return str(self.evaluate("document.body.innerText"))

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (DevToolsError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()


def test_operator_logs_in_and_sees_why_a_thread_is_blocked(
    chromium: Chromium, live_server: Any, django_user_model: Any, settings: Any, tmp_path: Path
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    django_user_model.objects.create_user("ops", password="ops-password", is_staff=True, is_superuser=True)
    now = now_ms()
    store.enqueue(make_dispatch("d-browser-held", THREAD, created_at=now - 2_000, available_at=now - 2_000))
    assert store.claim(THREAD, HOLDER, 120_000, now)
    store.enqueue(make_dispatch("d-browser-waiting", THREAD, created_at=now - 1_000, available_at=now))

    index = reverse("admin:index")
    overview = reverse("admin:mailbox_app_dispatch_overview")
    chromium.navigate(f"{live_server.url}{reverse('admin:login')}?{urlencode({'next': index})}")
    chromium.evaluate(
        "document.getElementById('id_username').value = 'ops';"
        "document.getElementById('id_password').value = 'ops-password';"
        "document.querySelector('#login-form input[type=submit]').click();"
    )
    chromium.wait_for_page(lambda path: path == index, what="the admin index after logging in")

    # the index links the overview
    chromium.evaluate(f"document.querySelector('#mailbox-overview-module a[href=\"{overview}\"]').click()")
    chromium.wait_for_page(lambda path: path == overview, what="the mailbox overview")
    text = chromium.text()
    assert "Threads currently claimed (1)" in text
    assert THREAD in text and HOLDER in text

    # ask why the thread is blocked through the form
    chromium.evaluate(
        f"document.getElementById('id_thread_id').value = {json.dumps(THREAD)};"
        "document.querySelector('#thread-lookup input[type=submit]').click();"
    )
    wait_until(
        lambda: chromium.evaluate("!!document.getElementById('block-report')"), what="the block report"
    )
    report = str(chromium.evaluate("document.getElementById('block-report').innerText"))
    assert f"Thread {THREAD}" in report
    assert "State: blocked" in report
    assert f"claimed by {HOLDER}" in report
    assert "queued behind claimed dispatch d-browser-held" in report

    shot = tmp_path / "mailbox_overview.png"
    chromium.screenshot(shot)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("AWAKEN_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
