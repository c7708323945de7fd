"""One source of metric directions: every metric a service names has one, and they all judge alike.

The trainer's search, the evaluator's regression gate and the monitor once kept their own tables,
which disagreed on metrics one of them lacked (the trainer took `error_rate` for higher-is-better).
"""

from __future__ import annotations

import numpy as np
import pytest

from mlops import measures
from mlops.measures import HIGHER_IS_BETTER, TASK_METRICS, UnknownMetric, higher_is_better
from services.evaluator.gates import Champion, regression_gate
from services.evaluator.metrics import classification_metrics, regression_metrics
from services.monitor.performance import LIVE_METRICS, Sums, live_metrics
from services.registry import spec as specs
from services.trainer.search import better


def named_metrics() -> set[str]:
    """Every metric name the services compute, report or accept."""
    evaluated = set(
        classification_metrics(np.array([0, 1, 1, 0]), np.full((4, 2), 0.5), np.array([0, 1, 0, 0]), 2)
    ) | set(regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.5])))
    live = set(live_metrics("classification", Sums(labelled=4, correct=3))) | set(
        live_metrics("regression", Sums(labelled=3, sse=1.0, sae=1.0, truth=6.0, truth_squared=14.0))
    )
    trained = {"val_loss", "train_loss", "val_accuracy", "val_rmse"}  # the trainer's epoch metrics
    trained |= {f"test_{name}" for name in evaluated}  # and its held-out test split
    accepted = {name for names in TASK_METRICS.values() for name in names}
    return evaluated | live | LIVE_METRICS | trained | accepted


def test_every_metric_a_service_names_has_a_direction():
    for name in sorted(named_metrics()):
        assert isinstance(higher_is_better(name), bool), name


def test_directions():
    assert all(higher_is_better(m) for m in ("accuracy", "macro_f1", "roc_auc", "r2", "val_accuracy"))
    assert not any(
        higher_is_better(m) for m in ("log_loss", "rmse", "mae", "error_rate", "val_loss", "train_loss")
    )
    with pytest.raises(UnknownMetric, match=r"unknown metric 'f1'; known: accuracy, .*val_…"):
        higher_is_better("f1")
    with pytest.raises(UnknownMetric):
        higher_is_better("val_f1")


@pytest.mark.parametrize("metric", sorted(HIGHER_IS_BETTER))
def test_the_trainer_and_the_evaluator_judge_every_metric_alike(metric):
    """A challenger that the trainer's search would prefer is one the evaluator sees improve."""
    champion = Champion(version=1, metrics={metric: 0.5})
    for challenger in (0.4, 0.6):
        trainer_prefers = better(metric, challenger, 0.5)
        worsening = regression_gate(metric, challenger, champion, allowed=0.0).observed
        assert trainer_prefers == (worsening < 0) == measures.improves(metric, challenger, 0.5)


def test_the_registry_accepts_the_gate_metrics_of_each_task():
    assert specs.TASK_METRICS is TASK_METRICS
    assert TASK_METRICS["classification"] == ("accuracy", "macro_f1", "roc_auc", "log_loss")
    assert TASK_METRICS["regression"] == ("rmse", "mae", "r2")
