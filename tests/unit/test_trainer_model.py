"""The trainer's network: preprocessing inside the graph, and the ONNX export's parity with torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from services.trainer.model import FeatureStats, Network, exported
from services.trainer.training import export_onnx, parity, predict, signature_of


def _data(rows: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 3.0, size=(rows, 4)).astype(np.float32)
    x[:, 2] = rng.integers(0, 3, size=rows)  # a text feature as category codes 0..2
    x[::7, 0] = np.nan  # missing numeric values
    x[::11, 2] = np.nan  # missing category
    x[::13, 2] = -1  # unseen category
    return x


def _network(task: str, x: np.ndarray, classes: int = 3) -> tuple[Network, FeatureStats]:
    target = np.linspace(10, 300, len(x)).astype(np.float32) if task == "regression" else None
    stats = FeatureStats.fit(x, [2], [3], target)
    torch.manual_seed(0)
    return Network(stats, [16, 8], classes if task == "classification" else 1, dropout=0.1), stats


def test_stats_learn_mean_and_std_of_numeric_columns_ignoring_nan():
    x = _data()
    stats = FeatureStats.fit(x, [2], [3])
    assert stats.numeric_index == [0, 1, 3]
    assert stats.mean[0] == pytest.approx(float(np.nanmean(x[:, 0])), rel=1e-6)
    assert stats.width == 3 + 3


def test_constant_column_gets_unit_std_instead_of_dividing_by_zero():
    x = np.ones((10, 2), dtype=np.float32)
    stats = FeatureStats.fit(x, [], [])
    assert stats.std == [1.0, 1.0]


def test_preprocessing_imputes_standardises_and_one_hot_encodes():
    x = _data()
    network, _stats = _network("classification", x)
    features = network.preprocess(torch.from_numpy(x)).numpy()
    assert features.shape == (len(x), 6)
    assert not np.isnan(features).any()
    # imputed with the training mean → standardised to exactly 0
    assert features[0, 0] == pytest.approx(0.0, abs=1e-6)
    one_hot = features[:, 3:]
    assert np.allclose(one_hot[::11].sum(axis=1), 0.0)  # missing category: all zeros
    assert np.allclose(one_hot[13], 0.0)  # unseen code -1: all zeros
    known = ~np.isnan(x[:, 2]) & (x[:, 2] >= 0)
    assert np.allclose(one_hot[known].argmax(axis=1), x[known, 2])


def test_classifier_outputs_probabilities_and_their_argmax():
    x = _data()
    network, stats = _network("classification", x)
    probabilities, label = predict(exported(network, "classification", stats), x)
    assert probabilities.shape == (len(x), 3) and label.dtype == np.int64
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(label, probabilities.argmax(axis=1))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_onnx_graph_matches_torch_on_random_rows_with_missing_values(task):
    x = _data(rows=200, seed=1)
    network, stats = _network(task, x)
    module = exported(network, task, stats)
    onnx_bytes = export_onnx(module, x.shape[1], task)
    assert parity(module, onnx_bytes, x) <= 1e-4
    assert parity(module, onnx_bytes, x[:1]) <= 1e-4  # the batch dimension is dynamic


def test_signature_names_types_and_dynamic_batch():
    x = _data()
    network, stats = _network("classification", x)
    onnx_bytes = export_onnx(exported(network, "classification", stats), x.shape[1], "classification")
    inputs, outputs = signature_of(onnx_bytes)
    assert inputs == [("input", "FP32", [-1, 4])]
    assert outputs == [("probabilities", "FP32", [-1, 3]), ("label", "INT64", [-1])]
    network, stats = _network("regression", x)
    onnx_bytes = export_onnx(exported(network, "regression", stats), x.shape[1], "regression")
    assert signature_of(onnx_bytes)[1] == [("prediction", "FP32", [-1])]
    assert onnx.load_from_string(onnx_bytes).opset_import[0].version >= 17


def test_export_is_byte_identical_for_identical_weights():
    x = _data()
    exports = []
    for _ in range(2):
        network, stats = _network("classification", x)
        exports.append(export_onnx(exported(network, "classification", stats), 4, "classification"))
    assert exports[0] == exports[1]
