"""`GET /metrics`: the Prometheus text format, merged over every process that writes metrics.

Multiprocess mode reads the `*.db` files of `PROMETHEUS_MULTIPROC_DIR` — or, when `AWAKEN_METRICS_DIR`
is set (scripts/metrics-dir.sh gives each service its own subdirectory of it), of every subdirectory,
so one scrape of a web process sees the Celery workers' figures too. Without either, this process's
own registry is served. Access: `mailbox_app/observability/access.py`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from mailbox_app.conf import awaken_settings
from mailbox_app.observability import metrics  # noqa: F401  (the mailbox's metrics exist in every scraping process)
from mailbox_app.observability.access import may_scrape

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def metric_dirs() -> list[Path]:
    root = awaken_settings.METRICS_DIR
    if root:
        base = Path(root)
        return [base, *sorted(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []
    own = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return [Path(own)] if own else []


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed pool child nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): existing is alive
    return stat[stat.rindex(")") + 2 :].split(maxsplit=1)[0] != "Z"


class DirectoriesCollector:
    """`MultiProcessCollector` over several directories. The files of a live-mode gauge (`active_runs`)
    whose process is gone are removed first (its `mark_process_dead`), so a killed worker's runs stop
    counting; the processes must share this host's pid namespace, as they share the directory."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = dirs

    def collect(self) -> Iterable[Metric]:
        files: list[str] = []
        for directory in self.dirs:
            for path in directory.glob("*.db"):
                match = _LIVE_GAUGE_FILE.match(path.name)
                if match is not None and not _alive(int(match.group(1))):
                    path.unlink(missing_ok=True)
                    continue
                files.append(str(path))
        merged: list[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def render() -> bytes:
    dirs = metric_dirs()
    if not dirs:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    registry.register(DirectoriesCollector(dirs))
    return generate_latest(registry)


@require_GET
def metrics_endpoint(request: HttpRequest) -> HttpResponse:
    allowed = may_scrape(
        request.META.get("REMOTE_ADDR", ""),
        request.headers.get("Authorization", ""),
        token=awaken_settings.METRICS_TOKEN,
        networks=awaken_settings.METRICS_ALLOWED_NETWORKS,
    )
    if not allowed:
        response = HttpResponse(b"metrics: not allowed from here without the bearer token\n", status=403)
        response["Content-Type"] = "text/plain; charset=utf-8"
        return response
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
