"""A whole run in-process on small data sets: metrics, reproducibility, failures by stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.profile import ReferenceProfile
from services.trainer.export import platform_signature
from services.trainer.training import (
    TrainingParams,
    TrainRequest,
    cpu_session,
    init_worker,
    parameter_count,
    train,
)

PARAMS = TrainingParams(hidden_layers=(16,), epochs=15, learning_rate=0.01, batch_size=32, seed=5)
PARAMS_WIDE = TrainingParams(hidden_layers=(64, 32), epochs=2, learning_rate=0.01, batch_size=32, seed=5)


@pytest.fixture(scope="module", autouse=True)
def _deterministic():
    init_worker(1)


def _classification_csv(path, rows: int = 300) -> str:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    colour = rng.choice(["red", "green", "blue"], size=rows)
    target = np.where(a + b > 0.5, "high", np.where(a + b < -0.5, "low", "mid"))
    frame = pd.DataFrame({"a": a, "b": b, "colour": colour, "quality": target})
    frame.loc[::17, "a"] = np.nan
    frame.to_csv(path / "data.csv", index=False)
    return str(path / "data.csv")


def _request(path: str, **changes) -> TrainRequest:
    values = dict(
        model="m",
        task="classification",
        label="quality",
        features=[],
        data_path=path,
        data_format="csv",
        params=PARAMS,
        device="cpu",
    )
    return TrainRequest(**(values | changes))


def test_classification_run_trains_exports_and_profiles(tmp_path):
    outcome = train(_request(_classification_csv(tmp_path)))
    assert outcome.ok, outcome.reason
    assert outcome.metrics["accuracy"] > 0.7 and "test_accuracy" in outcome.metrics
    assert outcome.class_labels == ["high", "low", "mid"]
    assert outcome.feature_names == ["a", "b", "colour"]
    assert outcome.categories == {"colour": ["blue", "green", "red"]}, "vocabularies travel with the model"
    assert outcome.parity_max_abs_diff <= PARAMS.parity_tolerance
    assert 1 <= outcome.epochs_run <= 15 and len(outcome.history) == outcome.epochs_run
    assert all(r.start_ns <= r.end_ns for r in outcome.history)
    profile = ReferenceProfile.from_json(outcome.profile_json)
    assert profile.feature("colour").categories == ["blue", "green", "red"]
    assert profile.row_count == outcome.rows["train"]
    probabilities, label = cpu_session(outcome.onnx).run(None, {"input": np.zeros((3, 3), dtype=np.float32)})
    assert probabilities.shape == (3, 3) and label.shape == (3,)
    signature = platform_signature(
        outcome.onnx,
        task="classification",
        feature_names=outcome.feature_names,
        label="quality",
        class_labels=outcome.class_labels,
        categories=outcome.categories,
    )
    assert list(signature.inputs[0].columns) == ["a", "b", "colour"]
    # the label output is the class index: readers take the class from the probabilities instead
    assert {o.name: o.role for o in signature.outputs} == {"probabilities": "probabilities", "label": ""}
    assert list(signature.class_labels) == ["high", "low", "mid"]
    assert list(signature.categories["colour"].values) == ["blue", "green", "red"]


def test_same_data_and_spec_give_the_same_metrics_and_bytes(tmp_path):
    path = _classification_csv(tmp_path)
    first, second = train(_request(path)), train(_request(path))
    assert first.metrics == second.metrics
    assert first.onnx == second.onnx


def test_regression_run_undoes_target_scaling(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    frame = pd.DataFrame(x, columns=["p", "q", "r"]).assign(y=150 + 40 * x[:, 0] - 20 * x[:, 1])
    frame.to_csv(tmp_path / "r.csv", index=False)
    outcome = train(_request(str(tmp_path / "r.csv"), task="regression", label="y", params=PARAMS))
    assert outcome.ok, outcome.reason
    assert outcome.metrics["r2"] > 0.8 and outcome.metrics["rmse"] < 20
    assert outcome.outputs == [("prediction", "FP32", [-1])]
    signature = platform_signature(
        outcome.onnx,
        task="regression",
        feature_names=["p", "q", "r"],
        label="y",
        class_labels=[],
        categories={},
    )
    assert [(o.name, o.role) for o in signature.outputs] == [("prediction", "value")]
    assert list(signature.inputs[0].columns) == ["p", "q", "r"] and signature.task == "regression"


def test_missing_label_fails_validation_naming_the_column(tmp_path):
    path = _classification_csv(tmp_path)
    outcome = train(_request(path, label="grade"))
    assert not outcome.ok and outcome.stage == "VALIDATE_DATA"
    assert "label column 'grade' is missing" in outcome.reason
    assert outcome.error_type == "DataValidationError"


def test_unreadable_file_fails_at_load(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    outcome = train(_request(str(tmp_path / "bad.parquet"), data_format="parquet"))
    assert not outcome.ok and outcome.stage == "LOAD_DATA"


def test_parity_beyond_tolerance_fails_the_run_at_the_parity_check(tmp_path, monkeypatch):
    monkeypatch.setattr("services.trainer.training.parity", lambda *_: 0.02)
    outcome = train(_request(_classification_csv(tmp_path)))
    assert not outcome.ok and outcome.stage == "PARITY_CHECK"
    assert "onnx parity: max abs diff 0.02 > tolerance 0.0001" in outcome.reason


def test_parameter_count_matches_the_network_built():
    from services.trainer.model import FeatureStats, Network

    stats = FeatureStats.fit(np.zeros((4, 3), dtype=np.float32), [2], [5])  # 2 numeric + 5 categories
    network = Network(stats, [16, 8], 3, 0.0)
    assert parameter_count(stats.width, [16, 8], 3) == sum(p.numel() for p in network.parameters())


def test_a_network_too_large_for_the_data_fails_validation_naming_the_bound(tmp_path):
    # 5 inputs after encoding (a, b, 3 colours) → 64 → 32 → 3 classes: 2,563 parameters.
    outcome = train(_request(_classification_csv(tmp_path), max_parameters=2_000, params=PARAMS_WIDE))
    assert not outcome.ok and outcome.stage == "VALIDATE_DATA" and outcome.error_type == "TooManyParameters"
    assert "would have 2,563 parameters (5 inputs after encoding" in outcome.reason
    assert "at most 2,000" in outcome.reason and "spec.training.hidden_layers [64, 32]" in outcome.reason
    assert not outcome.history, "nothing was trained"
    assert train(_request(_classification_csv(tmp_path), max_parameters=2_563, params=PARAMS_WIDE)).ok
