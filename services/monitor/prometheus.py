"""Prometheus metrics of the monitor (beside the bus's, on the same endpoint); names are the dashboards'.

Their labels are model names, versions and feature names that events bring: every series is made
through `SERIES.labels`, which keeps at most `max_metric_series` of them and drops the least
recently updated from the endpoint past that.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase

from services.monitor.lru import LRU


class BoundedSeries:
    """The label sets in use across the monitor's metrics, least recently updated first."""

    def __init__(self, bound: int) -> None:
        self._seen: LRU[tuple[MetricWrapperBase, tuple[str, ...]], None] = LRU(bound, on_evict=self._drop)

    def labels(self, metric: MetricWrapperBase, *values: str):
        """`metric.labels(*values)`, counted against the bound (and made the newest)."""
        self._seen[(metric, values)] = None
        return metric.labels(*values)

    def remove(self, metric: MetricWrapperBase, *values: str) -> None:
        """Drop one series from the endpoint (its version is no longer tracked)."""
        self._seen.pop((metric, values), None)
        self._drop((metric, values), None)

    def resize(self, bound: int) -> None:
        self._seen.resize(bound)

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def _drop(key: tuple[MetricWrapperBase, tuple[str, ...]], _: None) -> None:
        metric, values = key
        with contextlib.suppress(KeyError):  # never made, or removed already
            metric.remove(*values)


SERIES = BoundedSeries(10_000)
"""Resized to the monitor's `max_metric_series` when its core is built."""

DRIFT_SCORE = Gauge(
    "mlops_drift_score",
    "Drift statistic of one feature in the newest closed window (PSI, KS D or chi-squared)",
    ["model", "version", "feature", "method"],
)
PREDICTION_DRIFT = Gauge(
    "mlops_prediction_drift_score",
    "PSI of the predicted distribution against the training profile's, newest closed window",
    ["model", "version"],
)
DRIFT_ALARMS = Counter("mlops_drift_alarms_total", "DriftDetected events raised", ["model", "version"])
DEGRADATION_ALARMS = Counter(
    "mlops_degradation_alarms_total", "PerformanceDegraded events raised", ["model", "version"]
)
ROWS_INGESTED = Counter(
    "mlops_monitor_rows_ingested_total", "Logged predictions counted (sampled rows)", ["model"]
)
LIVE_METRIC = Gauge(
    "mlops_live_metric",
    "Live quality from joined ground truth, newest closed window",
    ["model", "version", "metric"],
)
ERROR_RATE = Gauge(
    "mlops_monitor_error_rate", "Share of failed requests over the spec's window", ["model", "version"]
)
LATENCY_P99 = Gauge(
    "mlops_monitor_latency_p99_seconds",
    "Server-side p99 latency over the spec's window",
    ["model", "version"],
)
LATE_ROWS = Counter(
    "mlops_monitor_late_rows_total",
    "Rows whose window had already closed when they arrived (health only, not drift)",
    ["model"],
)
