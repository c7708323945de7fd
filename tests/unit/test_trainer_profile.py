"""The reference profile format shared by the trainer (writer) and the monitor (reader)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlops.profile import FORMAT, ReferenceProfile, frequencies, histogram, quantile_edges


def _profile(task: str = "classification") -> ReferenceProfile:
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=500), rng.integers(0, 3, size=500).astype(np.float64)]).astype(
        np.float32
    )
    x[:5, 0] = np.nan
    x[5, 1] = -1
    predictions = rng.dirichlet([1, 1, 1], size=500) if task == "classification" else rng.normal(100, 10, 500)
    return ReferenceProfile.compute(
        task=task,
        features=x,
        feature_names=["a", "colour"],
        categorical={"colour": ["blue", "green", "red"]},
        predictions=predictions,
        class_labels=["x", "y", "z"],
    )


def test_quantile_edges_give_about_ten_equal_bins():
    values = np.arange(1000, dtype=np.float64)
    edges = quantile_edges(values)
    assert len(edges) == 11
    counts, missing = histogram(values, edges)
    assert sum(counts) == 1000 and missing == 0
    assert max(counts) - min(counts) <= 2


def test_histogram_end_bins_are_open_and_nan_is_missing():
    counts, missing = histogram(np.array([-100.0, 0.5, 1.5, 100.0, np.nan]), [0.0, 1.0, 2.0])
    assert counts == [2, 2] and missing == 1


def test_few_distinct_values_merge_their_edges():
    edges = quantile_edges(np.array([1.0] * 95 + [2.0] * 5))
    assert edges[0] == 1.0 and edges[-1] == 2.0 and len(edges) <= 3
    assert quantile_edges(np.array([7.0, 7.0])) == [7.0, 7.0]
    assert histogram(np.array([7.0, 7.0, 8.0]), [7.0, 7.0]) == ([3], 0)


def test_profile_of_numeric_and_text_features_and_class_predictions():
    profile = _profile()
    numeric = profile.feature("a")
    assert numeric.index == 0 and numeric.missing == 5 and sum(numeric.counts) == 495
    colour = profile.feature("colour")
    assert colour.categories == ["blue", "green", "red"]
    assert sum(colour.counts) == 499 and colour.unseen == 1 and colour.missing == 0
    prediction = profile.prediction
    assert prediction.kind == "class" and sum(prediction.class_counts) == 500
    assert len(prediction.probability_counts) == 3
    assert all(sum(counts) == 500 for counts in prediction.probability_counts)
    assert frequencies(prediction.class_counts) == pytest.approx([c / 500 for c in prediction.class_counts])


def test_regression_predictions_are_binned_like_a_feature():
    prediction = _profile("regression").prediction
    assert prediction.kind == "value" and len(prediction.bin_edges) == 11 and sum(prediction.counts) == 500


def test_json_round_trip_is_exact_and_deterministic():
    profile = _profile()
    text = profile.to_json()
    assert json.loads(text)["format"] == FORMAT
    again = ReferenceProfile.from_json(text)
    assert again == profile
    assert again.to_json() == text


def test_from_json_refuses_another_format():
    with pytest.raises(ValueError, match="format"):
        ReferenceProfile.from_json('{"format": "something-else"}')
