"""Judging an outside model on its data set, off the event loop: its signature read against the data
set's columns, and the reference profile of the data set with the model's predictions on it (what
the monitor measures drift against, as for a model the trainer made)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlops import onnx_signature, tabular
from mlops.errors import InvalidArgument
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb

SAMPLE_SEED = 7


@dataclass(frozen=True)
class Judged:
    signature: pb.ModelSignature
    profile_json: str


def class_labels_of(frame: pd.DataFrame, label: str) -> list[str]:
    """The label's values as the platform names classes (sorted numerically when they are numbers)."""
    return tabular._sorted_labels(frame[label]) if label in frame.columns else []


def signature_for(model: bytes, frame: pd.DataFrame, label: str) -> pb.ModelSignature:
    """The graph's signature against the data set's columns; a classifier whose graph names no classes
    takes the label's values."""
    columns = [str(c) for c in frame.columns]
    signature = onnx_signature.read_signature(model, columns=columns, label=label or None)
    if signature.task == "classification" and not signature.class_labels:
        signature = onnx_signature.read_signature(
            model, columns=columns, label=label or None, class_labels=class_labels_of(frame, label)
        )
    return signature


def _encoded(frame: pd.DataFrame, names: list[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Numeric columns as floats, text columns as codes into their sorted values (the profile's form)."""
    categorical: dict[str, list[str]] = {}
    matrix = np.empty((len(frame), len(names)), dtype=np.float64)
    for index, name in enumerate(names):
        values = frame[name]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            matrix[:, index] = values.astype(np.float64).to_numpy()
            continue
        vocabulary = sorted(values.dropna().astype(str).unique().tolist())
        codes = {value: code for code, value in enumerate(vocabulary)}
        matrix[:, index] = [np.nan if pd.isna(v) else codes[str(v)] for v in values]
        categorical[name] = vocabulary
    return matrix, categorical


def _predictions(signature: pb.ModelSignature, model: bytes, frame: pd.DataFrame) -> np.ndarray:
    import onnxruntime as ort

    columns = {name: frame[name].to_numpy() for name in signature.feature_names}
    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = onnx_signature.output_names(signature)
        values = session.run(names, onnx_signature.feed(signature, columns))
    except InvalidArgument:
        raise
    except Exception as error:  # onnxruntime's own errors: the model cannot run on its data set
        raise InvalidArgument(
            f"the model does not run on its data set's rows: {type(error).__name__}: {error}"
        ) from None
    out = onnx_signature.outputs(signature, names, values)
    if signature.task != "classification":
        if out.values is None:
            raise InvalidArgument("the model is a regressor but none of its outputs holds a value")
        return np.asarray(out.values, dtype=np.float64).reshape(-1)
    if out.probabilities is not None:
        return np.asarray(out.probabilities, dtype=np.float64)
    if out.labels is None:
        raise InvalidArgument(
            "the model is a classifier but none of its outputs holds labels or probabilities"
        )
    # Labels only: each row is certain of its class.
    index = {label: k for k, label in enumerate(signature.class_labels)}
    onehot = np.zeros((len(out.labels), len(index)), dtype=np.float64)
    for row, label in enumerate(out.labels):
        if str(label) in index:
            onehot[row, index[str(label)]] = 1.0
    return onehot


def judge(model: bytes, data_path: Path, data_format: str, label: str, max_rows: int) -> Judged:
    """The signature and the reference profile of `model` on the data set at `data_path`."""
    frame = tabular.read_table(data_path, data_format)
    signature = signature_for(model, frame, label)
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=SAMPLE_SEED)
    names = list(signature.feature_names)
    matrix, categorical = _encoded(frame, names)
    profile = ReferenceProfile.compute(
        task=signature.task,
        features=matrix,
        feature_names=names,
        categorical=categorical,
        predictions=_predictions(signature, model, frame),
        class_labels=list(signature.class_labels),
    )
    return Judged(signature=signature, profile_json=profile.to_json())
