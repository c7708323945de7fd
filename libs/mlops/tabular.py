"""Tabular data sets as the trainer and the evaluator both see them: read, checked against a model
spec, split deterministically, turned into feature matrices.

The split is a function of each row's content alone (a stable hash of its feature and label
values), so a row keeps its split across data set versions, and a champion and a challenger are
always compared on the same held-out rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.errors import InvalidArgument

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}
MIN_ROWS = 30
MIN_ROWS_PER_CLASS = 5


class DataValidationError(InvalidArgument):
    """The data set does not fit the spec; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the data set does not fit the spec: " + "; ".join(problems))
        self.problems = problems


def read_table(path: Path, data_format: str) -> pd.DataFrame:
    if data_format == "csv":
        return pd.read_csv(path)
    if data_format == "parquet":
        return pd.read_parquet(path)
    raise InvalidArgument(f"format {data_format!r} is not supported; use csv or parquet")


@dataclass(frozen=True)
class Schema:
    """The columns a model uses, resolved from its spec against one data set version."""

    task: str
    label: str
    features: list[str]
    """In the order of the model's `input` tensor: the spec's order, or the data set's."""
    categorical: dict[str, list[str]] = field(default_factory=dict)
    """String features and their vocabularies (sorted); they enter the model as category codes."""
    classes: list[str] = field(default_factory=list)
    """Classification: the label values as strings, in the order of the model's class index."""

    def codes(self, feature: str) -> dict[str, int]:
        return {value: index for index, value in enumerate(self.categorical.get(feature, []))}


def _sorted_labels(values: pd.Series) -> list[str]:
    unique = values.dropna().unique()
    try:
        ordered = sorted(unique, key=float)
    except (TypeError, ValueError):
        ordered = sorted(unique, key=str)
    return [_label_text(v) for v in ordered]


def _label_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def resolve_schema(
    *,
    task: str,
    label: str,
    features: list[str],
    frame: pd.DataFrame,
    slices: Sequence[str] = (),
    min_rows: int = MIN_ROWS,
    min_rows_per_class: int = MIN_ROWS_PER_CLASS,
) -> Schema:
    """Check the data set against the spec and name every problem (`DataValidationError`)."""
    missing_slices = [c for c in slices if c not in frame.columns]
    problems: list[str] = []
    columns = list(frame.columns)
    if label not in columns:
        problems.append(f"label column {label!r} is missing (columns: {', '.join(map(str, columns))})")
    # No features listed: every column but the label and the slice columns (those are for reporting).
    chosen = list(features) if features else [c for c in columns if c != label and c not in slices]
    missing = [c for c in chosen if c not in columns]
    if missing:
        problems.append(f"feature columns missing: {', '.join(missing)}")
    present = [c for c in chosen if c in columns]
    if not present:
        problems.append("no feature columns to train on")
    if missing_slices:
        problems.append(f"slice columns missing: {', '.join(missing_slices)}")
    if len(frame) < min_rows:
        problems.append(f"{len(frame)} rows; at least {min_rows} are needed")
    categorical: dict[str, list[str]] = {}
    for column in present:
        values = frame[column]
        if values.isna().all():
            problems.append(f"feature {column!r} has no values (all missing)")
        elif not pd.api.types.is_numeric_dtype(values):
            if (
                pd.api.types.is_bool_dtype(values)
                or values.dtype == object
                or isinstance(values.dtype, pd.StringDtype)
            ):
                categorical[column] = sorted(values.dropna().astype(str).unique().tolist())
            else:
                problems.append(
                    f"feature {column!r} has type {values.dtype}, which is neither numeric nor text"
                )
    classes: list[str] = []
    if label in columns:
        target = frame[label]
        if target.isna().all():
            problems.append(f"label {label!r} has no values")
        elif task == "classification":
            classes = _sorted_labels(target)
            counts = target.dropna().map(_label_text).value_counts()
            if len(classes) < 2:
                problems.append(f"label {label!r} has {len(classes)} class; at least 2 are needed")
            small = {c: int(counts.get(c, 0)) for c in classes if counts.get(c, 0) < min_rows_per_class}
            if small:
                listed = ", ".join(f"{c!r} ({n})" for c, n in small.items())
                problems.append(f"classes with fewer than {min_rows_per_class} rows: {listed}")
        elif task == "regression" and not pd.api.types.is_numeric_dtype(target):
            problems.append(f"label {label!r} must be numeric for regression, got {target.dtype}")
    if problems:
        raise DataValidationError(problems)
    return Schema(task=task, label=label, features=present, categorical=categorical, classes=classes)


def _canonical(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Values in a form that does not depend on how a reader inferred types (1 and 1.0 hash alike)."""
    out = {}
    for column in columns:
        values = frame[column]
        out[column] = (
            values.astype("float64") if pd.api.types.is_numeric_dtype(values) else values.astype(str)
        )
    return pd.DataFrame(out)


def assign_splits(
    frame: pd.DataFrame, schema: Schema, *, validation_fraction: float, test_fraction: float
) -> np.ndarray:
    """TRAIN, VALIDATION or TEST for every row, from a stable hash of its content."""
    hashed = pd.util.hash_pandas_object(_canonical(frame, [*schema.features, schema.label]), index=False)
    unit = hashed.to_numpy(dtype=np.uint64) / float(2**64)
    splits = np.full(len(frame), TRAIN, dtype=np.int8)
    splits[unit < test_fraction + validation_fraction] = VALIDATION
    splits[unit < test_fraction] = TEST
    return splits


def feature_matrix(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """float32 [rows, features] in schema order; text features as category codes (-1 when unseen), NaN kept."""
    columns = []
    for column in schema.features:
        if column in schema.categorical:
            codes = schema.codes(column)
            columns.append(frame[column].map(lambda v, c=codes: c.get(str(v), -1) if pd.notna(v) else np.nan))
        else:
            columns.append(frame[column])
    return np.column_stack([np.asarray(c, dtype=np.float32) for c in columns]).astype(np.float32)


def label_vector(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Class indices (int64) for classification, values (float32) for regression."""
    target = frame[schema.label]
    if schema.task == "classification":
        index = {c: i for i, c in enumerate(schema.classes)}
        return target.map(lambda v: index.get(_label_text(v), -1)).to_numpy(dtype=np.int64)
    return target.to_numpy(dtype=np.float32)
