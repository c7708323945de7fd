"""Signatures read from real ONNX graphs (torch, skl2onnx, onnxmltools), fed from data set columns, and
their outputs read back: the platform's MLP, scikit-learn with and without ZipMap, one input per
column with a text column, LightGBM, a regressor, and signatures recorded before columns and roles."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops.errors import InvalidArgument
from mlops.onnx_signature import feed, outputs, read_signature
from mlops.registry.v1 import registry_pb2 as pb


def _frame(loader, label: str = "target") -> pd.DataFrame:
    data = loader(as_frame=True)
    return data.frame.rename(columns={"target": label})


def _run(model: bytes, signature: pb.ModelSignature, frame: pd.DataFrame, categories=None):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, feed(signature, {c: frame[c] for c in frame.columns}, categories))
    return outputs(signature, names, got)


def _skl(model, frame: pd.DataFrame, label: str, **options) -> bytes:
    from skl2onnx import to_onnx

    features = frame.drop(columns=[label]).to_numpy(np.float32)
    return to_onnx(model, features[:1], target_opset={"": 17, "ai.onnx.ml": 3}, **options).SerializeToString()


@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    return _frame(load_wine, "cultivar")


def test_torch_mlp_like_the_trainers(wine):
    import torch

    from services.trainer.export import export_onnx

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(13, 3)

        def forward(self, x):
            probabilities = torch.softmax(self.linear(x), dim=1)
            return probabilities, torch.argmax(probabilities, dim=1)

    torch.manual_seed(0)
    model = export_onnx(Classifier().eval(), 13, "classification")
    columns = list(wine.columns)
    signature = read_signature(model, columns=columns, label="cultivar", class_labels=["0", "1", "2"])
    (spec,) = signature.inputs
    assert (spec.name, spec.datatype, list(spec.shape)) == ("input", "FP32", [-1, 13])
    assert list(spec.columns) == columns[:-1] == list(signature.feature_names)
    assert {o.name: o.role for o in signature.outputs} == {"probabilities": "probabilities", "label": ""}
    assert signature.task == "classification" and list(signature.class_labels) == ["0", "1", "2"]
    assert signature.onnx_opset == 17
    out = _run(model, signature, wine)
    assert out.probabilities.shape == (len(wine), 3)
    assert set(out.labels) <= {"0", "1", "2"}
    assert (out.labels == np.array(["0", "1", "2"])[out.probabilities.argmax(axis=1)]).all()


@pytest.mark.parametrize("zipmap", [True, False])
def test_sklearn_logistic_regression_with_and_without_zipmap(wine, zipmap):
    x, y = wine.drop(columns=["cultivar"]), wine["cultivar"]
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))]).fit(x, y)
    options = {} if zipmap else {"options": {id(model): {"zipmap": False}}}
    onnx_bytes = _skl(model, wine, "cultivar", **options)
    signature = read_signature(onnx_bytes, columns=list(wine.columns), label="cultivar")
    (spec,) = signature.inputs
    assert list(spec.columns) == list(x.columns)
    by_role = {o.role: o for o in signature.outputs}
    assert by_role["label"].datatype == "INT64" and not by_role["label"].onnx_type
    # skl2onnx names them output_label / output_probability with ZipMap, label / probabilities without.
    assert by_role["probabilities"].onnx_type == ("seq(map(int64,tensor(float)))" if zipmap else "")
    assert list(by_role["probabilities"].shape) == [-1, 3]
    assert list(signature.class_labels) == ["0", "1", "2"]
    out = _run(onnx_bytes, signature, wine)
    assert out.probabilities.shape == (len(wine), 3)
    np.testing.assert_allclose(out.probabilities, model.predict_proba(x), atol=1e-4)
    assert (out.labels == model.predict(x).astype(str)).mean() > 0.99


def test_random_forest_with_string_classes():
    frame = _frame(load_iris, "species")
    names = np.array(["setosa", "versicolor", "virginica"])
    frame["species"] = names[frame["species"]]
    x, y = frame.drop(columns=["species"]), frame["species"]
    model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    onnx_bytes = _skl(model, frame, "species")
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="species")
    assert list(signature.class_labels) == list(names)
    out = _run(onnx_bytes, signature, frame)
    assert (out.labels == model.predict(x)).mean() > 0.97
    assert out.probabilities.shape == (150, 3)


def test_one_input_per_column_with_a_text_column():
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    frame = _frame(load_diabetes, "progression")[["age", "bmi", "bp", "progression"]]
    frame.insert(2, "band", np.where(frame["bp"] > 0, "high", "low"))
    frame["progression"] = (frame["progression"] > 140).astype(int)
    x, y = frame.drop(columns=["progression"]), frame["progression"]
    model = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [("numbers", StandardScaler(), ["age", "bmi", "bp"]), ("text", OneHotEncoder(), ["band"])]
                ),
            ),
            ("lr", LogisticRegression()),
        ]
    ).fit(x, y)
    types = [
        ("age", FloatTensorType([None, 1])),
        ("bmi", FloatTensorType([None, 1])),
        ("band", StringTensorType([None, 1])),
        ("bp", FloatTensorType([None, 1])),
    ]
    onnx_bytes = to_onnx(
        model,
        initial_types=types,
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(model): {"zipmap": False}},
    ).SerializeToString()
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="progression")
    assert [(s.name, s.datatype, list(s.columns)) for s in signature.inputs] == [
        ("age", "FP32", ["age"]),
        ("bmi", "FP32", ["bmi"]),
        ("band", "BYTES", ["band"]),
        ("bp", "FP32", ["bp"]),
    ]
    fed = feed(signature, {c: frame[c] for c in frame.columns})
    assert fed["band"].dtype == object and fed["band"].shape == (len(frame), 1)
    out = _run(onnx_bytes, signature, frame)
    np.testing.assert_allclose(out.probabilities, model.predict_proba(x), atol=1e-4)
    assert (out.labels == model.predict(x).astype(str)).all()


@pytest.mark.parametrize("zipmap", [True, False])
def test_lightgbm_through_onnxmltools(wine, zipmap):
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = wine.drop(columns=["cultivar"]), wine["cultivar"]
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(x.to_numpy(), y)
    onnx_bytes = convert_lightgbm(
        model, initial_types=[("features", FloatTensorType([None, 13]))], zipmap=zipmap, target_opset=15
    ).SerializeToString()
    signature = read_signature(onnx_bytes, columns=list(wine.columns), label="cultivar")
    assert list(signature.inputs[0].columns) == list(x.columns)
    assert {o.role for o in signature.outputs} == {"label", "probabilities"}
    out = _run(onnx_bytes, signature, wine)
    np.testing.assert_allclose(out.probabilities, model.predict_proba(x.to_numpy()), atol=1e-4)
    assert (out.labels == model.predict(x.to_numpy()).astype(str)).mean() > 0.99


def test_regressor_reads_variable():
    frame = _frame(load_diabetes, "progression")
    x, y = frame.drop(columns=["progression"]), frame["progression"]
    model = LinearRegression().fit(x, y)
    onnx_bytes = _skl(model, frame, "progression")
    signature = read_signature(onnx_bytes, columns=list(frame.columns), label="progression")
    assert signature.task == "regression" and not signature.class_labels
    assert {o.name: o.role for o in signature.outputs} == {"variable": "value"}
    out = _run(onnx_bytes, signature, frame)
    np.testing.assert_allclose(out.values, model.predict(x), rtol=1e-4, atol=1e-3)
    assert out.labels is None and out.probabilities is None


def test_legacy_signature_reads_the_old_contract():
    """Versions recorded before columns and roles: `input` ← feature_names, `label` is a class index,
    text features enter as their vocabulary codes."""
    signature = pb.ModelSignature(
        inputs=[pb.TensorSpec(name="input", datatype="FP32", shape=[-1, 2])],
        outputs=[
            pb.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
            pb.TensorSpec(name="label", datatype="INT64", shape=[-1]),
        ],
        feature_names=["colour", "a"],
        class_labels=["no", "yes"],
        task="classification",
        categories={"colour": pb.Vocabulary(values=["blue", "red"])},
    )
    fed = feed(signature, {"a": np.array([1.5, np.nan]), "colour": np.array(["red", "green"], dtype=object)})
    np.testing.assert_array_equal(fed["input"], np.array([[1, 1.5], [-1, np.nan]], dtype=np.float32))
    out = outputs(
        signature, ["probabilities", "label"], [np.array([[0.2, 0.8], [0.9, 0.1]]), np.array([1, 0])]
    )
    assert list(out.labels) == ["yes", "no"]
    regressor = pb.ModelSignature(
        inputs=[pb.TensorSpec(name="input", datatype="FP32", shape=[-1, 1])],
        outputs=[pb.TensorSpec(name="prediction", datatype="FP32", shape=[-1])],
        feature_names=["a"],
        task="regression",
    )
    assert outputs(regressor, ["prediction"], [np.array([[1.0], [2.0]])]).values.tolist() == [1.0, 2.0]


def test_errors_say_what_to_do(wine):
    x, y = wine.drop(columns=["cultivar"]), wine["cultivar"]
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())]).fit(x, y)
    onnx_bytes = _skl(model, wine, "cultivar")
    with pytest.raises(InvalidArgument, match="not an ONNX model"):
        read_signature(b"PK\x03\x04 a zip file", columns=["a"], label=None)
    with pytest.raises(InvalidArgument, match="takes 13 columns but the data set has 12"):
        read_signature(onnx_bytes, columns=list(wine.columns[1:]), label="cultivar")
    with pytest.raises(InvalidArgument, match="label column 'quality'"):
        read_signature(onnx_bytes, columns=list(wine.columns), label="quality")
    signature = read_signature(onnx_bytes, columns=list(wine.columns), label="cultivar")
    with pytest.raises(InvalidArgument, match="needs column"):
        feed(signature, {"alcohol": wine["alcohol"]})
    per_column = pb.ModelSignature(
        inputs=[pb.TensorSpec(name="n", datatype="INT64", shape=[-1, 1], columns=["n"])],
        outputs=[pb.TensorSpec(name="variable", datatype="FP32", shape=[-1, 1], role="value")],
    )
    with pytest.raises(InvalidArgument, match="missing values but input 'n' takes INT64"):
        feed(per_column, {"n": np.array([1.0, np.nan])})
    assert feed(per_column, {"n": np.array([1.0, 2.0])})["n"].dtype == np.int64
