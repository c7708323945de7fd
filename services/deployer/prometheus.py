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
FINISHED = Counter(
    "mlops_rollouts_finished_total",
    "Rollouts that ended, by outcome (promoted, rolled_back, aborted)",
    ["model", "outcome"],
)
ROLLBACKS = Counter(
    "mlops_rollbacks_total", "Rollbacks, automatic (from live health) or asked for", ["model", "automatic"]
)
