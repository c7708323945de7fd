"""Which logged inputs feed which feature of a version's training profile.

A profile names data set columns: its numeric features and its categorical (text) ones. A batch
logs numeric inputs in `features` (named by `feature_names`) and text inputs in `text_features`
(named by `text_feature_names`); they are matched by name, whatever the model's signature looks
like (one `[-1, F]` tensor, one input per column, string inputs):

- a numeric feature takes a numeric input of its name, else a text input of its name read as a
  number (NaN where it is not one);
- a categorical feature takes a text input of its name, coded by the profile's vocabulary (unseen
  for a value outside it, missing for an absent or empty value), else a numeric input of its name
  as the code itself (the platform's own models take text features as codes);
- the spec's label column is never a feature, even where a profile or a log names it.

What one side has and the other lacks is left out (`InputMatch.missing`, `.extra`): the monitor
reports it once per version and layout and judges the features it can.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from services.monitor.batch import BatchRows
from services.monitor.reference import Reference


@dataclass(frozen=True)
class InputMatch:
    matrix: np.ndarray
    """[n, F] in the profile's feature order (categorical features as codes), NaN for missing."""
    present: np.ndarray
    """[F] bool: the log has an input for the profile's feature."""
    missing: tuple[str, ...]
    """Profile features the log lacks (the label left out)."""
    extra: tuple[str, ...]
    """Logged inputs the profile lacks (the label left out)."""


def match_inputs(rows: BatchRows, reference: Reference, *, label: str = "") -> InputMatch:
    """The batch's inputs as a matrix on the reference's features (see the module's rules)."""
    numeric = {name: i for i, name in enumerate(rows.feature_names)}
    text = {name: i for i, name in enumerate(rows.text_feature_names)}
    names = reference.feature_names
    width = len(names)
    present = np.zeros(width, dtype=bool)
    kinds = {feature.column: feature for feature in reference.features}
    # The common case, every profile feature a numeric input: one gather.
    if not text and label not in names and all(name in numeric for name in names):
        order = np.asarray([numeric[name] for name in names], dtype=np.int64)
        present[:] = True
        matrix = rows.features[:, order]
    else:
        matrix = np.full((len(rows), width), np.nan)
        for column, name in enumerate(names):
            feature = kinds.get(column)
            if name == label or feature is None:
                continue
            if feature.kind == "categorical" and name in text:
                matrix[:, column] = _codes(rows.texts[:, text[name]], feature.vocabulary)
            elif name in numeric:
                matrix[:, column] = rows.features[:, numeric[name]]
            elif name in text:
                matrix[:, column] = _numbers(rows.texts[:, text[name]])
            else:
                continue
            present[column] = True
    logged = [*rows.feature_names, *rows.text_feature_names]
    profiled = set(names)
    missing = tuple(name for column, name in enumerate(names) if not present[column] and name != label)
    extra = tuple(name for name in logged if name not in profiled and name != label)
    return InputMatch(matrix, present, missing, extra)


def _codes(values: np.ndarray, vocabulary: dict[str, int]) -> np.ndarray:
    """Category codes of text values: the vocabulary's, -1 for unseen, NaN for absent or empty."""
    lookup = dict(vocabulary)
    lookup.setdefault("", -2)
    codes = np.fromiter(
        map(lookup.get, (v if v is not None else "" for v in values), itertools.repeat(-1)),
        dtype=np.float64,
        count=len(values),
    )
    codes[codes == -2] = np.nan
    return codes


def _numbers(values: np.ndarray) -> np.ndarray:
    """Text values read as numbers, NaN where one is not."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            continue
    return out
