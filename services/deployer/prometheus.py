"""Prometheus metrics of the deployer (beside the bus's, on the same endpoint); the dashboards query
exactly these names."""

from prometheus_client import Counter, Gauge

TRAFFIC_PERCENT = Gauge(
    "mlops_rollout_traffic_percent",
    "Percent of live traffic the rollout's candidate answers",
    ["model", "version"],
)
STEP = Gauge("mlops_rollout_step", "0-based step index of the model's running rollout", ["model"])
STATE = Gauge(
    "mlops_rollout_state",
    "1 for the state the model's latest rollout is in, 0 for the others",
    ["model", "state"],
)
STEP_DEADLINE = Gauge(
    "mlops_rollout_step_deadline_timestamp_seconds",
    "Unix time by which the running rollout's held step must get a health verdict before its health "
    "timeout acts; 0 when none runs (paused, finished, or no timeout)",
    ["model"],
)
FINISHED = Counter(
    "mlops_rollouts_finished_total",
    "Rollouts that ended, by outcome (promoted, rolled_back, aborted)",
    ["model", "outcome"],
)
ROLLBACKS = Counter(
    "mlops_rollbacks_total", "Rollbacks, automatic (from live health) or asked for", ["model", "automatic"]
)


def keep_traffic_series(model: str, versions: set[str]) -> None:
    """Drop the model's traffic series of versions other than `versions` (the latest rollout's
    candidate and baseline): one series per version ever rolled out would grow without bound, and
    an old version's last value would be shown as if it still served."""
    stale = {
        sample.labels["version"]
        for metric in TRAFFIC_PERCENT.collect()
        for sample in metric.samples
        if sample.labels.get("model") == model and sample.labels.get("version") not in versions
    }
    for version in stale:
        TRAFFIC_PERCENT.remove(model, version)
