"""Models trained elsewhere, built here: scikit-learn through skl2onnx (with and without ZipMap, a
per-column pipeline with text and integer inputs, a regressor) and LightGBM through onnxmltools, on
data sets that scikit-learn ships. Shared by the unit and integration tests of the inference server."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outside:
    onnx: bytes
    task: str
    feature_names: tuple[str, ...]
    class_labels: tuple[str, ...]
    rows: dict[str, np.ndarray]
    """Some rows of the data set, column by column."""
    expected: object
    """The model itself (scikit-learn or LightGBM), to compare answers with."""


def _iris():
    from sklearn.datasets import load_iris

    data = load_iris()
    names = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    return data.data.astype(np.float32), data.target, names


@functools.cache
def logistic(zipmap: bool = True) -> Outside:
    """Iris, one input `X` [-1, 4]; `output_label` INT64 and `output_probability` (ZipMap or tensor)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y, names = _iris()
    model = LogisticRegression(max_iter=500).fit(x, y)
    options = {id(model): {"zipmap": False}} if not zipmap else None
    onnx = to_onnx(model, x[:1], options=options, target_opset=17).SerializeToString()
    return Outside(onnx, "classification", names, ("0", "1", "2"), _columns(x[::10], names), model)


@functools.cache
def lightgbm() -> Outside:
    """Iris through LightGBM and onnxmltools: `label` INT64, `probabilities` as a ZipMap."""
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y, names = _iris()
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx = convert_lightgbm(
            model, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=15
        ).SerializeToString()
    return Outside(onnx, "classification", names, ("0", "1", "2"), _columns(x[::10], names), model)


@functools.cache
def regressor() -> Outside:
    """Diabetes, a linear regression: `X` [-1, 10] FP64 → `variable` [-1, 1]."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    data = load_diabetes()
    x = data.data.astype(np.float64)
    names = tuple(data.feature_names)
    model = LinearRegression().fit(x, data.target)
    onnx = to_onnx(model, x[:1], target_opset=17).SerializeToString()
    return Outside(onnx, "regression", names, (), _columns(x[::20], names), model)


@functools.cache
def per_column() -> Outside:
    """A pipeline with one input per column: two FP32 measures, an INT64 count and a text colour
    (StringTensorType), one-hot encoded inside the graph; `output_label` BYTES, ZipMap probabilities."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y, _ = _iris()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "petal_length": x[:, 2],
            "petal_width": x[:, 3],
            "count": rng.integers(0, 5, len(y)).astype(np.int64),
            "colour": np.where(x[:, 2] > 3, "violet", "white").astype(object),
        }
    )
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["petal_length", "petal_width", "count"]),
                        ("text", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, labels)
    types = [
        ("petal_length", FloatTensorType([None, 1])),
        ("petal_width", FloatTensorType([None, 1])),
        ("count", Int64TensorType([None, 1])),
        ("colour", StringTensorType([None, 1])),
    ]
    onnx = to_onnx(pipeline, initial_types=types, target_opset=17).SerializeToString()
    names = tuple(frame.columns)
    rows = {name: frame[name].to_numpy()[::10] for name in names}
    return Outside(onnx, "classification", names, ("setosa", "versicolor", "virginica"), rows, pipeline)


def _columns(x: np.ndarray, names) -> dict[str, np.ndarray]:
    return {name: x[:, i] for i, name in enumerate(names)}
