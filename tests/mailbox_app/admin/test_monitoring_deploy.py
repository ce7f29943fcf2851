"""The Grafana dashboard and its provisioning agree with the code and with compose.yaml: the dashboard is
well-formed JSON whose every query names only metrics mailbox_app/observability/metrics.py defines (with
labels they have), on the provisioned datasource; compose's `monitoring` profile mounts the provisioning
files that exist where Grafana and Prometheus read them, and Prometheus scrapes the web with the token
the web is given. `docker compose config` is not available here: the YAML is parsed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from mailbox_app.observability import metrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mailbox.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "awaken.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# What a family of each type exposes (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "max", "min", "avg", "count",
    "le", "on", "ignoring", "and", "or", "unless", "offset", "bool", "clamp_min", "topk",
}  # fmt: skip


def exposed_metrics() -> dict[str, set[str]]:
    """Every sample name metrics.py's families expose, with the labels each takes (`le` for buckets)."""
    found: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        for family in value.describe():
            for suffix in SUFFIXES[family.type]:
                found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return found


def yaml_file(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for item in items for p in (item, *panels(item.get("panels", [])))]


def names_and_labels(expr: str) -> list[tuple[str, set[str]]]:
    """The series an expression selects: each metric name with the labels its braces match."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ([5m], [$__rate_interval])
    text = re.sub(r"\b(by|without)\s*\([^)]*\)", "", text)  # grouping labels
    found = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", text):
        name, braces = match.group(1), match.group(2) or ""
        if name not in PROMQL_WORDS:
            found.append((name, set(re.findall(r"([a-zA-Z_]\w*)\s*[=!~]", braces))))
    return found


def queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_is_well_formed_and_on_the_provisioned_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "awaken-mailbox" and board["title"] and board["schemaVersion"] >= 36
    [source] = yaml_file(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    drawn = [p for p in panels(board["panels"]) if p["type"] not in {"row", "text"}]
    assert len(drawn) >= 10
    for panel in drawn:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids))


def test_every_query_names_only_metrics_the_code_defines() -> None:
    defined = exposed_metrics()
    used: set[str] = set()
    for title, expr in queries():
        selected = names_and_labels(expr)
        assert selected, (title, expr)
        for name, labels in selected:
            assert name in defined, f"{title}: {name} is not a metric of mailbox_app/observability/metrics.py"
            assert labels <= defined[name], f"{title}: {name} has no label {sorted(labels - defined[name])}"
            used.add(name)
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):  # grouping labels exist too
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert any(label in defined[name] for name, _ in selected), f"{title}: no label {label}"
    # what the brief asks the dashboard to show, each by the metric that measures it
    for wanted in (
        "mailbox_dispatch_depth",  # queue depth by state
        "mailbox_dispatch_eligible_to_start_seconds_bucket",  # claim latency
        "mailbox_dispatch_runtime_seconds_bucket",  # run durations
        "mailbox_operation_total",  # retries (nack), dead letters
        "mailbox_webhook_attempts_total",  # webhook deliveries by outcome (issue 21)
        "mailbox_webhook_attempt_duration_seconds_bucket",  # webhook attempt duration
    ):
        assert wanted in used, wanted


def test_the_parser_sees_names_and_labels() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, outcome) (rate(mailbox_x_bucket{outcome="a", b!~"c"}[5m])))'
    assert names_and_labels(expr) == [("mailbox_x_bucket", {"outcome", "b"})]
    assert "mailbox_operation_total" in exposed_metrics()
    assert "nope_total" not in exposed_metrics()


def test_the_webhook_panels_draw_the_webhook_metrics() -> None:
    """Attempts by outcome, the failures and given-up ones, and the attempt duration's p50 and p99, each
    on the metrics metrics.py defines, naming only outcomes delivery.py records."""
    defined = exposed_metrics()
    webhook = {name for name in defined if name.startswith("mailbox_webhook_")}
    assert {"mailbox_webhook_attempts_total", "mailbox_webhook_attempt_duration_seconds_bucket"} <= webhook
    drawn: dict[str, list[str]] = {}
    for title, expr in queries():
        if any(name in webhook for name, _ in names_and_labels(expr)):
            drawn.setdefault(title, []).append(expr)
    assert len(drawn) == 3, sorted(drawn)
    by_outcome, failures, duration = drawn.values()
    assert by_outcome == ["sum by (outcome) (rate(mailbox_webhook_attempts_total[$__rate_interval]))"]
    named = {
        value
        for expr in failures
        for match in re.finditer(r'outcome\s*(?:=~|=)\s*"([^"]*)"', expr)
        for value in match.group(1).split("|")
    }
    assert named == set(metrics.WEBHOOK_OUTCOMES) - {"delivered"}
    assert all("mailbox_webhook_attempts_total" in expr for expr in failures)
    quantiles = {
        float(q)
        for expr in duration
        for q in re.findall(
            r"histogram_quantile\(([0-9.]+),.*mailbox_webhook_attempt_duration_seconds_bucket", expr
        )
    }
    assert quantiles == {0.5, 0.99}
    texts = [p["options"]["content"] for p in panels(dashboard()["panels"]) if p["type"] == "text"]
    assert not any("webhook" in text.lower() for text in texts)  # the note that there was no metric is gone


def test_no_two_panels_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


@pytest.fixture
def compose() -> dict[str, Any]:
    return yaml_file(ROOT / "compose.yaml")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (./...), checked to exist."""
    found = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            assert (ROOT / host).exists(), f"compose mounts {host}: no such file"
            found[container] = host
    return found


def test_compose_provisions_grafana_from_the_repository(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"] and grafana["depends_on"] == ["prometheus"]
    mounted = mounts(grafana)
    assert mounted["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    [provider] = yaml_file(PROVIDERS)["providers"]
    dashboards_dir = provider["options"]["path"]
    assert (ROOT / mounted[dashboards_dir] / DASHBOARD.name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
    assert any(port.startswith("127.0.0.1:") for port in grafana["ports"])  # not on every interface


def test_compose_prometheus_scrapes_the_web_with_its_token(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    [job] = yaml_file(PROMETHEUS)["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"] == [{"targets": ["web:8000"]}]
    token_file = job["authorization"]["credentials_file"]
    script = prometheus["command"][0].replace("$$", "$")
    assert f"printf '%s' \"$AWAKEN_METRICS_TOKEN\" > {token_file}" in script
    assert "--config.file=/etc/prometheus/prometheus.yml" in script
    assert prometheus["environment"]["AWAKEN_METRICS_TOKEN"] == "${AWAKEN_METRICS_TOKEN:-}"
    web = services["web"]["environment"]
    assert web["AWAKEN_METRICS_TOKEN"] == "${AWAKEN_METRICS_TOKEN:-}"  # the same token on both sides
    assert web["ALLOWED_HOSTS"].endswith(",web")  # the scrape's Host header is web:8000
    assert {"prometheusdata", "grafanadata"} <= set(compose["volumes"])
