"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: commands on fd 3, replies on fd 4, NUL-separated JSON), so no Python package
and no driver binary is needed. `scripts/install-chromium.sh` installs the browser; the tests that use
it skip without it (`requires_chromium`), saying why.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: run scripts/install-chromium.sh (apt-get install chromium)",
)


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


@contextlib.contextmanager
def headless_chromium(profile_dir: Path) -> Iterator[Chromium]:
    """A browser with one page open, closed (its whole process group) on exit."""
    browser = Chromium(profile_dir)
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()
