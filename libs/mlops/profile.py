"""The reference profile of a model's training data: what the monitor measures drift against.

The trainer computes one per model version and stores it beside the model as
`models/<model>/<sha256>/profile.json`; the registry records its URI and sha256. The format is
plain JSON, so that a monitor in any language can read it:

```json
{
  "format": "mlops.profile.v1",
  "task": "classification",
  "row_count": 124,
  "feature_names": ["alcohol", "malic_acid", "colour"],
  "numeric": [
    {"name": "alcohol", "index": 0, "bin_edges": [11.0, 12.1, ..., 14.8],
     "counts": [12, 13, ...], "missing": 0, "mean": 13.0, "std": 0.8, "min": 11.0, "max": 14.8}
  ],
  "categorical": [
    {"name": "colour", "index": 2, "categories": ["red", "white"],
     "counts": [80, 44], "unseen": 0, "missing": 0}
  ],
  "prediction": {
    "kind": "class", "class_labels": ["0", "1", "2"], "class_counts": [40, 50, 34],
    "probability_bin_edges": [0.0, 0.1, ..., 1.0],
    "probability_counts": [[...11 bins of class 0...], [...], [...]]
  }
}
```

Binning rules (`histogram` implements them; a monitor must bin live values the same way):

- Numeric `bin_edges` are quantiles of the training values (about `DEFAULT_BINS` bins; equal
  quantiles are merged, so a column with few distinct values has fewer bins). `counts[i]` counts
  values `v` with `edges[i] <= v < edges[i + 1]`; the first bin is open below and the last bin is
  open above, so a live value outside the training range lands in an end bin, never nowhere.
  Missing values (NaN) are counted in `missing`, not in any bin. `index` is the feature's position
  in `feature_names`: the model's `input` tensor for the platform's models, the data set's columns
  for a model trained elsewhere (`ReferenceProfile.of_columns`). The monitor matches a logged input
  to a feature by name, numeric and text alike; the label column is never a feature.
- Text features enter the model as category codes (their position in `categories`); `counts`
  follows that order, `unseen` counts values outside the vocabulary, `missing` counts NaN.
- The prediction distribution: for classification, `class_counts` of the predicted class (argmax)
  and, per class, a histogram of its probability on the fixed edges 0.0, 0.1, …, 1.0 (last bin
  closed); for regression (`"kind": "value"`), predictions binned like a numeric feature.

Counts, not frequencies, are stored, so that a reader knows the sample size; `frequencies()` gives
the normalised form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

FORMAT = "mlops.profile.v1"
DEFAULT_BINS = 10
PROBABILITY_EDGES = [round(i / 10, 1) for i in range(11)]


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """Bin edges at the quantiles of `values` (NaN ignored), duplicates merged; at least two edges."""
    present = _present(np.asarray(values, dtype=np.float64))
    if present.size == 0:
        return [0.0, 0.0]
    edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    return [float(e) for e in edges]


def histogram(values: np.ndarray, edges: list[float]) -> tuple[list[int], int]:
    """(counts per bin, missing) of `values` on `edges`, with open end bins (see the module's rules)."""
    array = np.asarray(values, dtype=np.float64)
    present = _present(array)
    bins = max(len(edges) - 1, 1)
    # A value's bin is the number of inner edges <= it (both ends open): counting the values at or
    # above each inner edge gives every bin's count as a difference, in one pass an edge.
    above = [present.size, *(int(np.count_nonzero(present >= e)) for e in edges[1:-1])]
    above += [0] * (bins + 1 - len(above))
    return [above[i] - above[i + 1] for i in range(bins)], int(array.size - present.size)


def _present(array: np.ndarray) -> np.ndarray:
    """The values that are not NaN, contiguous; the array itself when none is NaN."""
    array = np.ascontiguousarray(array)
    missing = np.isnan(array)
    return array[~missing] if missing.any() else array


@dataclass
class NumericProfile:
    name: str
    index: int
    bin_edges: list[float]
    counts: list[int]
    missing: int
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, name: str, index: int, values: np.ndarray, bins: int = DEFAULT_BINS) -> NumericProfile:
        array = np.ascontiguousarray(values, dtype=np.float64)
        present = _present(array)
        edges = quantile_edges(present, bins)
        counts, _ = histogram(present, edges)
        missing = int(array.size - present.size)
        stats = (
            (float(present.mean()), float(present.std()), float(present.min()), float(present.max()))
            if present.size
            else (0.0, 0.0, 0.0, 0.0)
        )
        return cls(name, index, edges, counts, missing, *stats)


@dataclass
class CategoricalProfile:
    name: str
    index: int
    categories: list[str]
    counts: list[int]
    unseen: int
    missing: int

    @classmethod
    def of(cls, name: str, index: int, codes: np.ndarray, categories: list[str]) -> CategoricalProfile:
        """From category codes as the model sees them (position in `categories`, -1 unseen, NaN missing)."""
        array = np.asarray(codes, dtype=np.float64)
        missing = np.isnan(array)
        present = array[~missing].astype(np.int64)
        known = present[(present >= 0) & (present < len(categories))]
        counts = np.bincount(known, minlength=len(categories))[: len(categories)]
        return cls(
            name,
            index,
            list(categories),
            [int(c) for c in counts],
            int(present.size - known.size),
            int(missing.sum()),
        )


@dataclass
class PredictionProfile:
    kind: str
    """"class" (classification) or "value" (regression)."""
    class_labels: list[str] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    probability_bin_edges: list[float] = field(default_factory=list)
    probability_counts: list[list[int]] = field(default_factory=list)
    """Per class, in class order: counts of its probability on `probability_bin_edges`."""
    bin_edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @classmethod
    def of_classes(cls, probabilities: np.ndarray, class_labels: list[str]) -> PredictionProfile:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
        class_counts = np.bincount(predicted, minlength=len(class_labels))[: len(class_labels)]
        per_class = [histogram(probabilities[:, k], PROBABILITY_EDGES)[0] for k in range(len(class_labels))]
        return cls(
            kind="class",
            class_labels=list(class_labels),
            class_counts=[int(c) for c in class_counts],
            probability_bin_edges=list(PROBABILITY_EDGES),
            probability_counts=per_class,
        )

    @classmethod
    def of_values(cls, predictions: np.ndarray, bins: int = DEFAULT_BINS) -> PredictionProfile:
        edges = quantile_edges(predictions, bins)
        counts, _ = histogram(predictions, edges)
        return cls(kind="value", bin_edges=edges, counts=counts)


@dataclass
class ReferenceProfile:
    task: str
    row_count: int
    feature_names: list[str]
    numeric: list[NumericProfile]
    categorical: list[CategoricalProfile]
    prediction: PredictionProfile
    format: str = FORMAT

    @classmethod
    def compute(
        cls,
        *,
        task: str,
        features: np.ndarray,
        feature_names: list[str],
        categorical: dict[str, list[str]],
        predictions: np.ndarray,
        class_labels: list[str] | None = None,
        bins: int = DEFAULT_BINS,
    ) -> ReferenceProfile:
        """Profile of a float32 feature matrix (text features as codes) and the model's outputs on it.

        `predictions` is the probability matrix [rows, classes] for classification, the predicted
        values [rows] for regression.
        """
        matrix = np.asarray(features, dtype=np.float64)
        numeric, categories = [], []
        for index, name in enumerate(feature_names):
            if name in categorical:
                categories.append(CategoricalProfile.of(name, index, matrix[:, index], categorical[name]))
            else:
                numeric.append(NumericProfile.of(name, index, matrix[:, index], bins))
        prediction = (
            PredictionProfile.of_classes(predictions, class_labels or [])
            if task == "classification"
            else PredictionProfile.of_values(predictions, bins)
        )
        return cls(
            task=task,
            row_count=len(matrix),
            feature_names=list(feature_names),
            numeric=numeric,
            categorical=categories,
            prediction=prediction,
        )

    @classmethod
    def of_columns(
        cls,
        columns: Mapping[str, np.ndarray],
        *,
        task: str,
        label: str | None,
        predictions: np.ndarray,
        class_labels: list[str] | None = None,
        bins: int = DEFAULT_BINS,
    ) -> ReferenceProfile:
        """Profile of a data set's columns, in their order, the label left out: numeric columns
        binned, any other column a text feature whose categories are its distinct values (sorted;
        None and NaN missing). What the monitor compares a model trained elsewhere against."""
        names, matrix, categorical = [], [], {}
        for name, values in columns.items():
            if name == label:
                continue
            array = np.asarray(values)
            names.append(name)
            if array.dtype.kind in "biuf":
                matrix.append(array.astype(np.float64))
                continue
            items = array.tolist()
            categories = sorted({str(v) for v in items if not _missing(v)})
            code = {category: float(i) for i, category in enumerate(categories)}
            matrix.append(np.asarray([np.nan if _missing(v) else code[str(v)] for v in items]))
            categorical[name] = categories
        rows = len(predictions)
        features = np.column_stack(matrix) if matrix else np.zeros((rows, 0))
        return cls.compute(
            task=task,
            features=features,
            feature_names=names,
            categorical=categorical,
            predictions=predictions,
            class_labels=class_labels,
            bins=bins,
        )

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, no spaces): the same profile always hashes the same."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"not a reference profile in format {FORMAT}: format is {data.get('format')!r}")
        return cls(
            task=data["task"],
            row_count=data["row_count"],
            feature_names=list(data["feature_names"]),
            numeric=[NumericProfile(**item) for item in data["numeric"]],
            categorical=[CategoricalProfile(**item) for item in data["categorical"]],
            prediction=PredictionProfile(**data["prediction"]),
            format=data["format"],
        )

    def feature(self, name: str) -> NumericProfile | CategoricalProfile:
        for item in [*self.numeric, *self.categorical]:
            if item.name == name:
                return item
        raise KeyError(f"feature {name!r} is not in the profile")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def frequencies(counts: list[int]) -> list[float]:
    """Counts as shares of their total (zeros when the total is zero)."""
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]
