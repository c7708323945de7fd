"""What an ONNX model takes and gives, read from its graph, and the two conversions every reader needs:
a data set's columns → the graph's inputs (`feed`), the graph's outputs → labels, probabilities or
values (`outputs`).

Any graph is accepted: the platform's own MLP (`input` [-1, F] → `probabilities`, `label`), scikit-learn
through skl2onnx (`output_label`, `output_probability` with or without ZipMap; one input per column if
it was converted that way), LightGBM and XGBoost through onnxmltools (`label`, `probabilities`), a
regressor's `variable`.

How inputs are fed, in this order (`read_signature`):

1. the model's metadata names an input's columns: key `mlops.columns.<input>`, a JSON list or a
   comma-separated string;
2. an input named after a data set column takes that column (a per-column input, [-1, 1] or [-1]);
3. one input left over takes every other non-label column, in the data set's order (a [-1, F] input);
   two or more left over is an error, since nothing says which column goes where.

Output roles: a ZipMap (a sequence of maps) or a float output named like `prob…` holds the
probabilities; an integer or string output named like `label` holds the predicted class when the graph
carries its class labels (an ai.onnx.ml classifier's `classlabels_*`). A graph that carries none (a torch
export) gives the class's index, which the platform derives from the probabilities' argmax instead, so
such a label output keeps no role. A float output of a model with no probabilities is the regressor's
value. The class labels are the graph's when it has them (they fix the probability columns' order),
else those given.

Compatibility: a signature recorded before columns and roles existed has one input `input` fed by
`feature_names`, and outputs named `probabilities` and `label` (the class index) or `prediction`,
`variable` or `value`. `feed` and `outputs` read such a signature that way.

Imports onnx and numpy only: the inference server, the monitor and the CLI use it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlops.errors import InvalidArgument
from mlops.onnx_graph import (  # noqa: F401 - the names readers use as onnx_signature.<name>
    COLUMNS_METADATA,
    DATATYPES,
    LABEL,
    LEGACY_INPUT,
    LEGACY_ROLES,
    NUMPY,
    PROBABILITIES,
    VALUE,
    read_signature,
)
from mlops.registry.v1 import registry_pb2 as pb


def is_legacy(signature: pb.ModelSignature) -> bool:
    """A signature recorded before inputs carried columns and outputs roles."""
    return not any(s.columns for s in signature.inputs) and not any(s.role for s in signature.outputs)


def roles(signature: pb.ModelSignature) -> dict[str, str]:
    """Output name → role ("label", "probabilities", "value"), reading a legacy signature by names."""
    if not is_legacy(signature):
        return {s.name: s.role for s in signature.outputs if s.role}
    return {s.name: LEGACY_ROLES[s.name] for s in signature.outputs if s.name in LEGACY_ROLES}


def input_columns(signature: pb.ModelSignature, spec: pb.TensorSpec) -> list[str]:
    """The data set columns an input carries; a legacy signature's `input` carries `feature_names`."""
    if spec.columns:
        return list(spec.columns)
    if spec.name == LEGACY_INPUT or len(signature.inputs) == 1:
        return list(signature.feature_names)
    return [spec.name]


def feature_columns(signature: pb.ModelSignature) -> list[str]:
    """Every column the model reads, in input order."""
    return [c for spec in signature.inputs for c in input_columns(signature, spec)]


# Feeding ---------------------------------------------------------------------------------------


def feed(
    signature: pb.ModelSignature,
    columns: Mapping[str, object],
    categories: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, np.ndarray]:
    """The graph's inputs from a data set's columns (name → 1-d array or pandas Series), each in its
    input's dtype and shape. A text column fed to a numeric input becomes its code in `categories`
    (or the signature's vocabulary): -1 when unseen, NaN when missing."""
    vocabularies = {name: list(v.values) for name, v in signature.categories.items()}
    vocabularies.update({name: list(v) for name, v in (categories or {}).items()})
    fed: dict[str, np.ndarray] = {}
    rows = None
    for spec in signature.inputs:
        names = input_columns(signature, spec)
        if not names:
            raise InvalidArgument(f"input {spec.name!r}: the signature names no column to feed it")
        missing = [c for c in names if c not in columns]
        if missing:
            raise InvalidArgument(
                f"input {spec.name!r} needs column(s) {', '.join(missing)}, which the rows lack"
            )
        dtype = NUMPY.get(spec.datatype)
        if dtype is None:
            raise InvalidArgument(
                f"input {spec.name!r}: datatype {spec.datatype} cannot be fed from a data set"
            )
        parts = [
            _column(spec, name, np.asarray(columns[name]), dtype, vocabularies.get(name)) for name in names
        ]
        for name, part in zip(names, parts, strict=True):
            if rows is None:
                rows = len(part)
            elif len(part) != rows:
                raise InvalidArgument(f"column {name!r} has {len(part)} rows, others {rows}")
        matrix = np.column_stack(parts) if parts else np.empty((0, 0), dtype=dtype)
        if len(spec.shape) == 1:
            matrix = matrix.reshape(-1)
        fed[spec.name] = np.ascontiguousarray(matrix) if dtype is not np.object_ else matrix
    return fed


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _text(value: object) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _column(
    spec: pb.TensorSpec, name: str, values: np.ndarray, dtype, vocabulary: Sequence[str] | None
) -> np.ndarray:
    values = values.reshape(-1)
    if dtype is np.object_:
        return np.array([_text(v) for v in values], dtype=object)
    if values.dtype.kind in "OSU":
        if vocabulary is not None:
            codes = {v: i for i, v in enumerate(vocabulary)}
            encoded = [np.nan if _is_missing(v) else codes.get(_text(v), -1) for v in values]
            values = np.asarray(encoded, dtype=np.float64)
        else:
            try:
                values = np.asarray(
                    [np.nan if _is_missing(v) else float(v) for v in values], dtype=np.float64
                )
            except (TypeError, ValueError):
                raise InvalidArgument(
                    f"column {name!r} holds text but input {spec.name!r} takes {spec.datatype}, "
                    "and the signature has no vocabulary for it"
                ) from None
    if np.issubdtype(dtype, np.integer) or dtype is np.bool_:
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise InvalidArgument(
                f"column {name!r} has missing values but input {spec.name!r} takes {spec.datatype}"
            )
    return values.astype(dtype)


# Reading outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """A model's answer in the platform's terms."""

    labels: np.ndarray | None = None
    """The predicted class per row, as text (one of the class labels)."""
    probabilities: np.ndarray | None = None
    """float64 [N, C], columns in the order of the signature's class labels."""
    values: np.ndarray | None = None
    """float64 [N], a regressor's prediction."""


def outputs(signature: pb.ModelSignature, names: Sequence[str], values: Sequence[object]) -> Outputs:
    """Read what onnxruntime answered for `names` (a ZipMap's list of dicts, tensors of int64, str or
    float) as labels, probabilities and values."""
    by_role = roles(signature)
    classes = list(signature.class_labels)
    legacy = is_legacy(signature)
    labels = probabilities = predicted = None
    for name, value in zip(names, values, strict=True):
        role = by_role.get(name)
        if role == PROBABILITIES:
            probabilities = _probabilities(name, value, classes)
        elif role == LABEL:
            labels = _labels(name, value, classes, as_index=legacy)
        elif role == VALUE:
            predicted = np.asarray(value, dtype=np.float64).reshape(-1)
    if labels is None and probabilities is not None and classes:
        labels = np.asarray(classes, dtype=object)[np.argmax(probabilities, axis=1)]
    return Outputs(labels=labels, probabilities=probabilities, values=predicted)


def output_names(signature: pb.ModelSignature) -> list[str]:
    """The outputs to ask onnxruntime for: those with a role."""
    by_role = roles(signature)
    return [s.name for s in signature.outputs if s.name in by_role]


def _probabilities(name: str, value: object, classes: list[str]) -> np.ndarray:
    if isinstance(value, list):  # ZipMap: one {class: probability} per row
        if not value:
            return np.zeros((0, len(classes)), dtype=np.float64)
        keys = classes or [str(k) for k in value[0]]
        try:
            return np.array([[row[_key(row, k)] for k in keys] for row in value], dtype=np.float64)
        except KeyError as error:
            raise InvalidArgument(f"output {name!r} has no probability for class {error.args[0]!r}") from None
    array = np.asarray(value, dtype=np.float64)
    array = array.reshape(len(array), -1)
    if classes and array.shape[1] != len(classes):
        raise InvalidArgument(
            f"output {name!r} has {array.shape[1]} probability columns for {len(classes)} class labels"
        )
    return array


def _key(row: Mapping, key: str):
    if key in row:
        return key
    try:
        number = int(key)
    except ValueError:
        raise KeyError(key) from None
    if number in row:
        return number
    raise KeyError(key)


def _labels(name: str, value: object, classes: list[str], *, as_index: bool) -> np.ndarray:
    array = np.asarray(value).reshape(-1)
    if as_index and array.dtype.kind in "iu" and classes:
        if len(array) and (array.min() < 0 or array.max() >= len(classes)):
            raise InvalidArgument(f"output {name!r} has class indices outside 0..{len(classes) - 1}")
        return np.asarray(classes, dtype=object)[array]
    return np.array([_text(v) for v in array], dtype=object)
