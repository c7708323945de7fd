"""Prometheus metrics of the evaluator (beside the bus's, on the same endpoint)."""

from prometheus_client import Counter, Histogram

EVALUATIONS = Counter(
    "mlops_evaluator_evaluations_total", "Model versions evaluated, by verdict", ["model", "verdict"]
)
GATE_FAILURES = Counter(
    "mlops_evaluator_gate_failures_total",
    "Gates failed, by gate kind (min, max, max_regression, ..., slice)",
    ["model", "gate"],
)
EVALUATION_SECONDS = Histogram(
    "mlops_evaluator_evaluation_seconds",
    "Time to evaluate one version: data, challenger, champion, latency, gates, registry",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
CHAMPION_REEVALUATIONS = Counter(
    "mlops_evaluator_champion_reevaluations_total",
    "Champions of models trained outside the platform re-evaluated on a new data set version, by verdict",
    ["model", "verdict"],
)
