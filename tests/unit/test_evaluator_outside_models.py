"""Scoring models trained outside the platform: scikit-learn through skl2onnx (with and without ZipMap,
one input per column with a text column, a regressor) and LightGBM through onnxmltools, on data sets
scikit-learn ships, read through the signature `mlops.onnx_signature` takes from their graphs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops.errors import InvalidArgument
from mlops.onnx_signature import read_signature
from mlops.registry.v1 import registry_pb2 as pb
from mlops.tabular import TEST, assign_splits, resolve_schema
from services.evaluator.contenders import Contender, held_out_rows, score_contender
from services.evaluator.settings import EvaluatorSettings

SETTINGS = EvaluatorSettings(execution_provider="cpu", latency_sample_size=20, latency_warmup=2)
OPSETS = {"": 17, "ai.onnx.ml": 3}


def body(task: str, label: str, **kwargs) -> pb.ModelSpecBody:
    spec = pb.ModelSpecBody(task=task, label=label, **kwargs)
    spec.training.validation_fraction = 0.15
    spec.training.test_fraction = 0.3
    return spec


def train_rows(frame: pd.DataFrame, spec: pb.ModelSpecBody) -> pd.DataFrame:
    """The rows the platform would not score: what an outside model is fairly trained on."""
    schema = resolve_schema(task=spec.task, label=spec.label, features=list(spec.features), frame=frame)
    splits = assign_splits(frame, schema, validation_fraction=0.15, test_fraction=0.3)
    return frame[splits != TEST]


def contender(model: bytes, signature: pb.ModelSignature, version: int = 2) -> Contender:
    return Contender("challenger", version, "", "", [], [], signature=signature)


def wine(tmp_path) -> tuple[pd.DataFrame, object]:
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    path = tmp_path / "wine.csv"
    frame.to_csv(path, index=False)
    return frame, path


@pytest.mark.parametrize("zipmap", [True, False])
def test_a_scikit_learn_classifier_is_scored_with_and_without_zipmap(tmp_path, zipmap):
    from skl2onnx import to_onnx

    frame, path = wine(tmp_path)
    spec = body("classification", "cultivar", slices=["alcohol"])
    fit = train_rows(frame, spec)
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())])
    model.fit(fit.drop(columns=["cultivar"]), fit["cultivar"])
    options = {} if zipmap else {id(model): {"zipmap": False}}
    onnx_bytes = to_onnx(
        model, fit.drop(columns=["cultivar"]).to_numpy(np.float32)[:1], target_opset=OPSETS, options=options
    ).SerializeToString()
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="cultivar")
    held_out = held_out_rows(path, "csv", spec, slice_max_values=10, slice_bins=4)
    card = score_contender(
        onnx_bytes, contender(onnx_bytes, signature), held_out, SETTINGS, measure_latency=True
    )
    expected = (model.predict(held_out.rows.drop(columns=["cultivar"])) == held_out.rows["cultivar"]).mean()
    assert card.metrics["accuracy"] == pytest.approx(expected) and expected > 0.9
    assert {"macro_f1", "log_loss", "roc_auc"} <= set(card.metrics)
    assert 0 < card.latency_p50_ms <= card.latency_p99_ms
    assert len(card.slices) == 4


def test_lightgbm_through_onnxmltools_against_a_platform_champion(tmp_path):
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    from tests.unit.test_evaluator_scoring import linear_classifier

    frame, path = wine(tmp_path)
    spec = body("classification", "cultivar")
    fit = train_rows(frame, spec)
    x = fit.drop(columns=["cultivar"]).to_numpy()
    model = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=7, verbose=-1).fit(x, fit["cultivar"])
    onnx_bytes = convert_lightgbm(
        model, initial_types=[("features", FloatTensorType([None, x.shape[1]]))], target_opset=15
    ).SerializeToString()
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="cultivar")
    held_out = held_out_rows(path, "csv", spec, slice_max_values=10, slice_bins=4)
    card = score_contender(
        onnx_bytes, contender(onnx_bytes, signature), held_out, SETTINGS, measure_latency=False
    )
    predicted = model.predict(held_out.rows.drop(columns=["cultivar"]).to_numpy())
    assert card.metrics["accuracy"] == pytest.approx((predicted == held_out.rows["cultivar"]).mean())
    assert card.metrics["accuracy"] > 0.85

    # a champion the platform trained before signatures carried roles, on the same rows
    features = [c for c in frame.columns if c != "cultivar"]
    weights = np.zeros((len(features), 3))
    weights[features.index("proline"), 0] = 0.01
    legacy = Contender("champion", 1, "", "", features, ["0", "1", "2"])
    champion = score_contender(
        linear_classifier(weights, np.zeros(3)), legacy, held_out, SETTINGS, measure_latency=False
    )
    assert set(champion.metrics) == set(card.metrics)


def test_one_input_per_column_with_a_text_column(tmp_path):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    frame = load_breast_cancer(as_frame=True).frame[["mean radius", "mean texture", "target"]]
    frame = frame.rename(columns={"mean radius": "radius", "mean texture": "texture", "target": "malignant"})
    frame.insert(1, "size", np.where(frame["radius"] > 15, "large", "small"))
    frame.insert(2, "count", (frame["texture"] // 5).astype(int))
    path = tmp_path / "cancer.csv"
    frame.to_csv(path, index=False)
    spec = body("classification", "malignant")
    fit = train_rows(frame, spec)
    model = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["radius", "texture", "count"]),
                        ("text", OneHotEncoder(handle_unknown="ignore"), ["size"]),
                    ]
                ),
            ),
            ("lr", LogisticRegression()),
        ]
    ).fit(fit.drop(columns=["malignant"]), fit["malignant"])
    types = [
        ("radius", FloatTensorType([None, 1])),
        ("size", StringTensorType([None, 1])),
        ("count", Int64TensorType([None, 1])),
        ("texture", FloatTensorType([None, 1])),
    ]
    onnx_bytes = to_onnx(model, initial_types=types, target_opset=OPSETS).SerializeToString()
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="malignant")
    assert [s.datatype for s in signature.inputs] == ["FP32", "BYTES", "INT64", "FP32"]
    held_out = held_out_rows(path, "csv", spec, slice_max_values=10, slice_bins=4)
    card = score_contender(
        onnx_bytes, contender(onnx_bytes, signature), held_out, SETTINGS, measure_latency=True
    )
    expected = (model.predict(held_out.rows.drop(columns=["malignant"])) == held_out.rows["malignant"]).mean()
    assert card.metrics["accuracy"] == pytest.approx(expected) and expected > 0.8


def test_a_regressor_reads_variable(tmp_path):
    from skl2onnx import to_onnx

    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    spec = body("regression", "progression")
    fit = train_rows(frame, spec)
    x = fit.drop(columns=["progression"])
    model = Ridge(alpha=0.1).fit(x, fit["progression"])
    onnx_bytes = to_onnx(model, x.to_numpy(np.float32)[:1], target_opset=OPSETS).SerializeToString()
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="progression")
    held_out = held_out_rows(path, "csv", spec, slice_max_values=10, slice_bins=4)
    card = score_contender(
        onnx_bytes, contender(onnx_bytes, signature), held_out, SETTINGS, measure_latency=False
    )
    truth = held_out.rows["progression"].to_numpy()
    rmse = float(np.sqrt(np.mean((model.predict(held_out.rows.drop(columns=["progression"])) - truth) ** 2)))
    assert card.metrics["rmse"] == pytest.approx(rmse, rel=1e-4)
    assert card.metrics["r2"] > 0.3

    # a regressor offered for a classification spec is refused with both tasks named
    held = held_out_rows(path, "csv", body("classification", "sex"), slice_max_values=10, slice_bins=4)
    with pytest.raises(
        InvalidArgument, match=r"is a regression model .* but the spec's task is classification"
    ):
        score_contender(onnx_bytes, contender(onnx_bytes, signature), held, SETTINGS, measure_latency=False)
