"""Which way is better for every metric the platform names: the one source of metric directions.

The trainer picks its best search trial by them, the evaluator judges a regression against the
champion by them, the registry checks a spec's `gate.metric` against the metrics of its task, and
the monitor judges live quality with the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mlops.errors import InvalidArgument

HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {
        "accuracy": True,
        "macro_f1": True,
        "roc_auc": True,
        "r2": True,
        "log_loss": False,
        "rmse": False,
        "mae": False,
        "error_rate": False,
        "loss": False,
    }
)
"""Every metric's direction: a rise is an improvement (True) or a regression (False). `loss` is the
training objective; `error_rate` is 1 - accuracy as the monitor measures it live."""

TASK_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "classification": ("accuracy", "macro_f1", "roc_auc", "log_loss"),
        "regression": ("rmse", "mae", "r2"),
    }
)
"""The metrics of held-out rows per task: what a spec's `gate.metric` may name."""

SPLIT_PREFIXES = ("train_", "val_", "test_")
"""A metric on one split (`val_loss`, `test_accuracy`) has the direction of the metric itself."""


class UnknownMetric(InvalidArgument):
    """A metric name with no known direction."""


def higher_is_better(metric: str) -> bool:
    """Whether a rise in `metric` is an improvement; `UnknownMetric` names the known ones."""
    direction = HIGHER_IS_BETTER.get(metric)
    if direction is None:
        for prefix in SPLIT_PREFIXES:
            if metric.startswith(prefix):
                direction = HIGHER_IS_BETTER.get(metric.removeprefix(prefix))
                break
    if direction is None:
        raise UnknownMetric(
            f"unknown metric {metric!r}; known: {', '.join(HIGHER_IS_BETTER)} "
            f"(each also on one split: {', '.join(p + '…' for p in SPLIT_PREFIXES)})"
        )
    return direction


def improves(metric: str, candidate: float, reference: float) -> bool:
    """Whether `candidate` is strictly better than `reference` on `metric`."""
    return candidate > reference if higher_is_better(metric) else candidate < reference
