"""Metrics on the held-out rows, slices of them, and latency percentiles: pure functions over arrays.

Metric names are the ones a spec's `gate.metric` accepts (`mlops.measures`, with their directions). A metric that is undefined on the rows
given (ROC AUC when only one class is present, R² on one row) is left out rather than reported as
NaN, so that every number that travels is a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

MISSING = "<missing>"
PROBABILITY_FLOOR = 1e-15


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray | None, predicted: np.ndarray, n_classes: int
) -> dict[str, float]:
    """accuracy, macro F1, ROC AUC (one-vs-rest, macro over the classes present) and log loss.

    `y_true` and `predicted` are class indices into the model's class labels; `probabilities` has
    one column per class, or is None for a model that gives labels alone (then only accuracy and
    macro F1, which need no scores).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return {}
    labels = list(range(n_classes))
    metrics = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "macro_f1": float(f1_score(y_true, predicted, labels=labels, average="macro", zero_division=0)),
    }
    if probabilities is None:
        return metrics
    proba = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, 1.0)
    proba /= proba.sum(axis=1, keepdims=True)
    metrics["log_loss"] = float(log_loss(y_true, proba, labels=labels))
    auc = one_vs_rest_auc(y_true, proba)
    if auc is not None:
        metrics["roc_auc"] = auc
    return metrics


def one_vs_rest_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro average of each class's ROC AUC against the rest, over the classes that are present
    and not alone (with every class present this is scikit-learn's `multi_class="ovr"`; for two
    classes it equals the binary AUC). None when no class qualifies."""
    scores = []
    for k in range(probabilities.shape[1]):
        positives = y_true == k
        if 0 < positives.sum() < len(y_true):
            scores.append(roc_auc_score(positives, probabilities[:, k]))
    return float(np.mean(scores)) if scores else None


def regression_metrics(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (R² needs two rows or more)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if len(y_true) == 0:
        return {}
    metrics = {
        "rmse": math.sqrt(mean_squared_error(y_true, predicted)),
        "mae": float(mean_absolute_error(y_true, predicted)),
    }
    if len(y_true) >= 2:
        metrics["r2"] = float(r2_score(y_true, predicted))
    return metrics


@dataclass(frozen=True)
class Slice:
    column: str
    value: str
    """The column's value as text, or its quantile bin as `(low, high]`, or `<missing>`."""
    rows: np.ndarray
    """Positions (into the held-out rows) of the rows in the slice."""


def value_text(value: object) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def slices_of(column: str, values: pd.Series, *, max_values: int = 10, bins: int = 4) -> Iterator[Slice]:
    """The slices of one column: one per value, or quantile bins for a numeric column with many values.

    Bins come from the held-out rows' own quantiles (duplicate edges dropped), so each holds about
    the same number of rows. Missing values form their own slice.
    """
    values = values.reset_index(drop=True)
    present = values.notna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and values[present].nunique() > max_values:
        binned = pd.qcut(values[present].astype("float64"), q=bins, duplicates="drop")
        for interval in binned.cat.categories:
            rows = np.flatnonzero(present)[(binned == interval).to_numpy()]
            if len(rows):
                yield Slice(column, f"({interval.left:.6g}, {interval.right:.6g}]", rows)
    else:
        keys = values[present].map(value_text)
        positions = np.flatnonzero(present)
        for key in sorted(keys.unique(), key=_natural):
            yield Slice(column, key, positions[(keys == key).to_numpy()])
    if not present.all():
        yield Slice(column, MISSING, np.flatnonzero(~present))


def _natural(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def latency_percentiles(durations_ms: np.ndarray) -> tuple[float, float]:
    """p50 and p99 of single-call durations in milliseconds."""
    if len(durations_ms) == 0:
        raise ValueError("no latency samples")
    p50, p99 = np.percentile(np.asarray(durations_ms, dtype=np.float64), [50, 99])
    return float(p50), float(p99)
