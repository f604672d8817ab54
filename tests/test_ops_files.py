"""The files under ops/: Prometheus rules and scrape config checked by the real `promtool`, the
alert rules unit-tested with `promtool test rules`, and the Grafana dashboard checked against a
real scrape (every `aether_*` metric it or the rules query exists).

promtool comes from Debian's `prometheus` package (.ci/run installs it). Its absence is a failure,
not a skip: these files would otherwise go unchecked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_config, running_server
from prometheus_client.parser import text_string_to_metric_families

OPS = Path(__file__).resolve().parent.parent / "ops"
PROMETHEUS = OPS / "prometheus"
DASHBOARD = OPS / "grafana" / "aether.json"
METRIC = re.compile(r"\baether_[a-z0-9_]+")

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path is not None, (
        "promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus;"
        " .ci/run does it). The ops/prometheus files cannot be checked without it."
    )
    return subprocess.run(
        [path, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_alert_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_scrape_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_what_operators_page_on() -> None:
    names = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "alerts.yml").read_text()))
    assert names == {
        "AetherNodeDown",
        "AetherNotReady",
        "AetherEventLoopLag",
        "AetherErrorRate",
        "AetherSlowConsumers",
        "AetherOpenFilesNearLimit",
        "AetherBackupStale",
        "AetherBackupDrillFailed",
    }


# --- the dashboard and the rules against a real scrape -----------------------------------------


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape can be queried by, including those of labelled families that
    have no child yet (their HELP/TYPE lines are there)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def scrape() -> str:
    with running_server(make_config()) as srv:
        return httpx.get(f"http://127.0.0.1:{srv.server.http_port}/metrics", timeout=10).text


def _expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in _expressions(value)]
    return []


def test_dashboard_is_valid_json_with_panels_and_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Aether"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 25
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_of_the_dashboard_exists_in_a_real_scrape(scrape: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in _expressions(dashboard) for name in METRIC.findall(expr)}
    assert len(used) >= 25
    assert sorted(used - exposed_names(scrape)) == []


def test_every_metric_of_the_alert_rules_exists_in_a_real_scrape(scrape: str) -> None:
    used = set(METRIC.findall((PROMETHEUS / "alerts.yml").read_text()))
    assert used
    assert sorted(used - exposed_names(scrape)) == []


def test_the_dashboard_covers_the_metrics_of_issue_4(scrape: str) -> None:
    used = set(METRIC.findall(DASHBOARD.read_text()))
    for name in (
        "aether_connections",
        "aether_connects_total",
        "aether_disconnects_total",
        "aether_commands_total",
        "aether_command_duration_seconds_bucket",
        "aether_publications_total",
        "aether_deliveries_total",
        "aether_broadcast_fanout_subscribers_bucket",
        "aether_publish_write_latency_seconds_bucket",
        "aether_outbox_bytes",
        "aether_slow_consumer_disconnects_total",
        "aether_history_streams",
        "aether_history_publications",
        "aether_presence_entries",
        "aether_auth_failures_total",
        "aether_api_requests_total",
        "aether_errors_total",
        "aether_event_loop_lag_seconds_bucket",
        "aether_trio_tasks",
        "aether_process_resident_memory_bytes",
        "aether_process_cpu_seconds_total",
        "aether_process_open_fds",
        "aether_process_max_fds",
        "aether_ready",
    ):
        assert name in used, name
