"""Prometheus metrics of the monitor (beside the bus's, on the same endpoint); names are the dashboards'."""

from prometheus_client import Counter, Gauge

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
