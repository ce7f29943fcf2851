"""The walk of one dispatch through the project's own modules: which files a background submit visits from
the HTTP view to its row, and which files the worker's claim -> execute -> finish visits.

    bash scripts/with-services.sh .venv/bin/python bench/walk.py [--show]

Traces Python calls (`sys.setprofile`) in the project's apps only (mailbox_app, runs_app): files visited,
and hops (consecutive traced calls or returns that change file); and the path to the row: the project
files on the stack when the dispatch row is written (the submit) or acked (the worker). The submit is
`POST threads/{id}/mailbox` through Django's test client (in-process, the full middleware and DRF stack);
the worker part is the hand-over task `mailbox.run_claimed` called in-process with the claim the submit
took. The echo agent answers "hello". Only the routes and task names are used, so the script runs
unchanged on any tree. Scratch database (a fresh test database) and Redis db.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

import django

django.setup()

from django.conf import settings
from django.test.utils import setup_test_environment

APPS = (str(ROOT / "mailbox_app") + os.sep, str(ROOT / "runs_app") + os.sep)
# the statement that writes the dispatch row (either tree: an INSERT, or the submit function) and the one
# that acks it
SUBMIT_WRITES = ("INSERT INTO mailbox_dispatch", "awaken_submit(")
FINISH_WRITES = ("status = 'acked'", "THEN 'acked'", "awaken_finish(")


class Walk:
    """Project files entered, in order, and hops between them."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.hops = 0
        self._last: str | None = None

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event not in ("call", "return"):
            return
        path = frame.f_code.co_filename
        if not path.startswith(APPS) or "/migrations/" in path:
            return
        name = str(Path(path).relative_to(ROOT))
        if name != self._last:
            if self._last is not None:
                self.hops += 1
            self._last = name
            if name not in self.files:
                self.files.append(name)

    def trace(self, fn: Callable[[], Any], writes: tuple[str, ...] = ()) -> Any:
        """Run `fn` traced; the first statement containing one of `writes` notes the project files on the
        stack then (the path from the entry point to the row, outermost first)."""
        from django.db import connection

        self.path: list[str] = []

        def at_write(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
            if not self.path and any(w in sql for w in writes):
                frames = [f.f_code.co_filename for f, _ in traceback.walk_stack(None)]
                names = [str(Path(f).relative_to(ROOT)) for f in reversed(frames) if f.startswith(APPS)]
                self.path = list(dict.fromkeys(names))
            return execute(sql, *args)

        sys.setprofile(self)
        try:
            with connection.execute_wrapper(at_write):
                return fn()
        finally:
            sys.setprofile(None)

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.files), "hops": self.hops, "path_files": len(self.path)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--show", action="store_true", help="list the files in the order first visited")
    args = parser.parse_args()

    from django.db import connection
    from django.test.utils import get_runner  # noqa: F401  (keeps the test settings machinery loaded)

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        result = run(args.show)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(result))


def run(show: bool) -> dict[str, Any]:
    import redis

    from awaken_project.celery import app as current_app

    current_app.loader.import_default_modules()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    user = get_user_model().objects.create_user("walker")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    def one(thread_id: str) -> tuple[Walk, Walk]:
        body = {"messages": [{"role": "user", "content": "hello"}]}
        submit = Walk()
        url = f"/api/v1/threads/{thread_id}/mailbox"
        response = submit.trace(lambda: client.post(url, body, format="json"), SUBMIT_WRITES)
        assert response.status_code == 201, response.content
        dispatch_id = response.json()["dispatch_id"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT claim_token FROM mailbox_dispatch WHERE dispatch_id = %s", [dispatch_id])
            (token,) = cursor.fetchone()
        worker = Walk()
        task = current_app.tasks["mailbox.run_claimed"]
        worker.trace(lambda: task.run(thread_id, dispatch_id, token), FINISH_WRITES)
        with connection.cursor() as cursor:
            cursor.execute("SELECT status FROM mailbox_dispatch WHERE dispatch_id = %s", [dispatch_id])
            (status,) = cursor.fetchone()
        assert status == "acked", status
        return submit, worker

    one("warm")  # every import and cache warmed first: the traced walk is the steady-state path
    submit, worker = one("walk")
    result: dict[str, Any] = {"submit": submit.summary(), "worker": worker.summary()}
    if show:
        result["submit_files"] = submit.files
        result["submit_path"] = submit.path
        result["worker_files"] = worker.files
        result["worker_path"] = worker.path
    return result


if __name__ == "__main__":
    main()
