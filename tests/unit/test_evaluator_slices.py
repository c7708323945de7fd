"""Slices of the held-out rows: one per value, quantile bins for numeric columns with many values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.evaluator.metrics import MISSING, slices_of


def test_a_text_column_gives_one_slice_per_value():
    values = pd.Series(["red", "blue", "red", "green", "blue", "red"])
    slices = {s.value: s.rows.tolist() for s in slices_of("colour", values)}
    assert slices == {"blue": [1, 4], "green": [3], "red": [0, 2, 5]}


def test_a_numeric_column_with_few_values_keeps_them_and_writes_integers_plainly():
    values = pd.Series([1.0, 2.0, 1.0, 3.0, 2.0])
    slices = list(slices_of("grade", values, max_values=10))
    assert [s.value for s in slices] == ["1", "2", "3"]
    assert [len(s.rows) for s in slices] == [2, 2, 1]
    assert {s.column for s in slices} == {"grade"}


def test_a_numeric_column_with_many_values_is_cut_into_quantile_bins():
    values = pd.Series(np.arange(100, dtype=float))
    slices = list(slices_of("age", values, max_values=10, bins=4))
    assert len(slices) == 4
    assert [len(s.rows) for s in slices] == [25, 25, 25, 25]
    assert slices[0].value.startswith("(") and slices[0].value.endswith("]")
    assert slices[-1].value.endswith(", 99]")
    covered = np.sort(np.concatenate([s.rows for s in slices]))
    assert covered.tolist() == list(range(100))


def test_bins_with_duplicate_edges_are_merged():
    values = pd.Series([0.0] * 60 + list(np.linspace(1, 2, 40)))
    slices = list(slices_of("x", values, max_values=5, bins=4))
    assert sum(len(s.rows) for s in slices) == 100
    assert len(slices) < 4


def test_missing_values_form_their_own_slice():
    values = pd.Series([1.0, None, 2.0, None])
    slices = {s.value: s.rows.tolist() for s in slices_of("x", values)}
    assert slices == {"1": [0], "2": [2], MISSING: [1, 3]}


def test_positions_ignore_the_frame_index():
    values = pd.Series(["a", "b", "a"], index=[10, 20, 30])
    assert {s.value: s.rows.tolist() for s in slices_of("c", values)} == {"a": [0, 2], "b": [1]}
