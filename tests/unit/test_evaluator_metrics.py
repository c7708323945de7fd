"""Held-out metrics of the evaluator on arrays whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from services.evaluator.metrics import (
    classification_metrics,
    latency_percentiles,
    one_vs_rest_auc,
    regression_metrics,
)


def test_binary_classification_metrics_match_hand_computed_values():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    predicted = proba.argmax(axis=1)
    metrics = classification_metrics(y, proba, predicted, n_classes=2)
    assert metrics["accuracy"] == pytest.approx(0.75)
    # class 0: precision 1, recall 0.5 -> F1 2/3; class 1: precision 2/3, recall 1 -> F1 0.8
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # scores of class 1: positives 0.65 and 0.8 both outrank negatives 0.1 and 0.6
    assert metrics["roc_auc"] == pytest.approx(1.0)
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.65, 0.8]))
    assert metrics["log_loss"] == pytest.approx(expected_loss)


def test_multiclass_auc_is_one_vs_rest_macro_like_scikit_learn():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + np.eye(3)[y] * 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ours = one_vs_rest_auc(y, proba)
    assert ours == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_auc_skips_absent_classes_and_is_left_out_when_undefined():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    # class 2 absent: the AUC averages classes 0 and 1 only
    assert one_vs_rest_auc(np.array([0, 1, 0]), proba) == pytest.approx(1.0)
    only_one = classification_metrics(np.array([1, 1, 1]), proba, np.array([0, 1, 0]), n_classes=3)
    assert "roc_auc" not in only_one
    assert only_one["accuracy"] == pytest.approx(1 / 3)
    assert math.isfinite(only_one["log_loss"])


def test_log_loss_survives_zero_probabilities():
    y = np.array([0, 1])
    proba = np.array([[0.0, 1.0], [0.0, 1.0]])
    metrics = classification_metrics(y, proba, np.array([1, 1]), n_classes=2)
    assert math.isfinite(metrics["log_loss"]) and metrics["log_loss"] > 10


def test_regression_metrics_match_hand_computed_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.0, 2.0, 3.0, 6.0])
    metrics = regression_metrics(y, predicted)
    assert metrics["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["r2"] == pytest.approx(1 - 4 / 5)  # SSE 4, SST 5


def test_regression_on_one_row_leaves_r2_out():
    assert set(regression_metrics(np.array([2.0]), np.array([3.0]))) == {"rmse", "mae"}


def test_empty_rows_give_no_metrics():
    assert classification_metrics(np.array([], dtype=int), np.zeros((0, 2)), np.array([]), 2) == {}
    assert regression_metrics(np.array([]), np.array([])) == {}


def test_latency_percentiles():
    p50, p99 = latency_percentiles(np.arange(1, 101, dtype=float))
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)
    with pytest.raises(ValueError):
        latency_percentiles(np.array([]))
