"""Data set checks, the deterministic split and feature matrices: pure logic over data frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.tabular import (
    TEST,
    TRAIN,
    VALIDATION,
    DataValidationError,
    assign_splits,
    feature_matrix,
    label_vector,
    resolve_schema,
)


def wine(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "alcohol": rng.normal(13, 1, rows),
            "hue": rng.normal(1, 0.2, rows),
            "colour": rng.choice(["red", "white"], rows),
            "target": rng.integers(0, 3, rows),
        }
    )


def test_every_problem_is_named():
    frame = wine()
    frame["empty"] = np.nan
    with pytest.raises(DataValidationError) as caught:
        resolve_schema(
            task="classification", label="quality", features=["alcohol", "ph", "empty"], frame=frame
        )
    problems = caught.value.problems
    assert any("label column 'quality' is missing" in p for p in problems)
    assert "feature columns missing: ph" in problems
    assert "feature 'empty' has no values (all missing)" in problems


def test_rare_classes_and_non_numeric_regression_labels_are_refused():
    frame = wine()
    frame.loc[0, "target"] = 9
    with pytest.raises(DataValidationError, match=r"classes with fewer than 5 rows: '9' \(1\)"):
        resolve_schema(task="classification", label="target", features=[], frame=frame)
    with pytest.raises(DataValidationError, match="must be numeric for regression"):
        resolve_schema(task="regression", label="colour", features=["alcohol"], frame=frame)


def test_schema_defaults_to_every_column_but_the_label_and_encodes_text():
    frame = wine()
    schema = resolve_schema(task="classification", label="target", features=[], frame=frame)
    assert schema.features == ["alcohol", "hue", "colour"]
    assert schema.categorical == {"colour": ["red", "white"]}
    assert schema.classes == ["0", "1", "2"]
    matrix = feature_matrix(frame, schema)
    assert matrix.dtype == np.float32 and matrix.shape == (300, 3)
    assert set(np.unique(matrix[:, 2])) == {0.0, 1.0}
    assert label_vector(frame, schema).tolist() == frame["target"].tolist()


def test_a_row_keeps_its_split_across_versions_and_types():
    frame = wine(2000)
    schema = resolve_schema(task="classification", label="target", features=[], frame=frame)
    splits = assign_splits(frame, schema, validation_fraction=0.15, test_fraction=0.15)
    shares = np.bincount(splits, minlength=3) / len(frame)
    assert abs(shares[TEST] - 0.15) < 0.03 and abs(shares[VALIDATION] - 0.15) < 0.03 and shares[TRAIN] > 0.6
    # A later version: rows shuffled, new rows added, and the label read as float.
    later = pd.concat([frame.sample(frac=1, random_state=1), wine(500, seed=5)], ignore_index=True)
    later["target"] = later["target"].astype(float)
    later_splits = assign_splits(later, schema, validation_fraction=0.15, test_fraction=0.15)
    again = dict(zip(map(tuple, later.astype(str).to_numpy()[:, :2]), later_splits, strict=False))
    original = dict(zip(map(tuple, frame.astype(str).to_numpy()[:, :2]), splits, strict=False))
    assert all(again[key] == split for key, split in original.items())


def test_slice_columns_are_for_reporting_not_features_unless_listed():
    frame = wine()
    schema = resolve_schema(
        task="classification", label="target", features=[], slices=["colour"], frame=frame
    )
    assert schema.features == ["alcohol", "hue"]
    listed = resolve_schema(
        task="classification", label="target", features=["colour"], slices=["colour"], frame=frame
    )
    assert listed.features == ["colour"]
    with pytest.raises(DataValidationError, match="slice columns missing: region"):
        resolve_schema(task="classification", label="target", features=[], slices=["region"], frame=frame)
