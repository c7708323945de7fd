"""Every metric the Grafana dashboard queries is exported by the running service that owns it.

Scrapes each service of infra/local/services.sh that exists under services/ (a service that exists
must be running: `make up` starts it). A metric owned by a service that does not exist yet is not
asked for; bus metrics are asked of every service. The Prometheus client writes # TYPE lines for
labelled metrics before their first sample, so this holds on a fresh stack.
"""

from __future__ import annotations

import os
import re

import httpx
import pytest

from tests.unit.test_deploy_tools import SERVICES, dashboard_metrics, owner_of, service_exists

TYPE_LINE = re.compile(r"^# TYPE (\S+) (\w+)$", re.M)


def exported(name: str) -> dict[str, str]:
    """Metric family name -> type, from the service's /metrics (counters keep their _total name)."""
    port = int(os.environ.get(f"MLOPS_{name.upper()}_METRICS_PORT", SERVICES[name][1]))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError as error:
        pytest.fail(
            f"services/{name} exists but its metrics endpoint {url} does not answer ({error}): make up"
        )
    return dict(TYPE_LINE.findall(text))


@pytest.fixture(scope="module")
def running() -> dict[str, dict[str, str]]:
    return {name: exported(name) for name in SERVICES if service_exists(name)}


def test_every_existing_service_exports_the_bus_metrics(running) -> None:
    bus = [m for m in dashboard_metrics() if owner_of(m) is None]
    assert bus
    for name, families in running.items():
        missing = [m for m in bus if m not in families]
        assert not missing, f"{name} does not export {missing}"


def test_every_dashboard_metric_is_exported_by_its_service(running) -> None:
    missing: list[str] = []
    checked = 0
    for metric, panels in sorted(dashboard_metrics().items()):
        owner = owner_of(metric)
        if owner is None or owner not in running:
            continue
        checked += 1
        if metric not in running[owner]:
            missing.append(f"{metric} (panels {panels}) is not exported by {owner}")
    assert checked > 0
    assert not missing, "\n".join(missing)


def test_histogram_panels_query_histograms(running) -> None:
    """A panel that asks for _bucket series needs a histogram, not a summary or a gauge."""
    for metric in dashboard_metrics():
        owner = owner_of(metric)
        families = running.get(owner) if owner else next(iter(running.values()))
        if families is None or metric not in families:
            continue
        if metric.endswith(("_seconds", "_batch_size")) and not metric.startswith("mlops_monitor_"):
            assert families[metric] == "histogram", (metric, families[metric])
