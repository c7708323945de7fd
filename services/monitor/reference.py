"""A version's training profile compiled for counting, and the judgement of one window against it.

A window of one model version is a single flat vector of counts: for each numeric feature its
reference bins then one slot for missing values; for each categorical feature its categories, then
unseen, then missing; then the prediction's slots (predicted classes, or the profile's bins of the
regression output). A batch of rows becomes slot indices (the numeric features all at once,
`stats.bin_slots`) and one `bincount`, so a window is summarised as it fills and raw rows are never
kept or re-read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlops.events.v1 import monitoring_pb2
from mlops.profile import ReferenceProfile
from services.monitor import stats


@dataclass(frozen=True)
class FeatureSlots:
    name: str
    kind: str
    """"numeric" or "categorical"."""
    column: int
    """Position in the profile's feature_names (the model's input order)."""
    offset: int
    size: int
    """Bins (numeric) or categories (categorical), without the unseen / missing slots."""
    edges: np.ndarray
    reference: np.ndarray
    """The profile's counts on the same slots (missing and unseen included)."""
    vocabulary: dict[str, int] = field(default_factory=dict, compare=False)
    """A categorical feature's code of each category (its position in the profile's categories)."""


@dataclass(frozen=True)
class NumericColumns:
    """The numeric features side by side, for binning a batch in one pass (`stats.bin_slots`)."""

    columns: np.ndarray
    """Their positions in the profile's feature_names."""
    inner: np.ndarray
    """`stats.inner_edges` of their bin edges, [K, F]."""
    offsets: np.ndarray
    missing: np.ndarray
    """Each feature's missing-value slot."""

    @classmethod
    def of(cls, features: list[FeatureSlots]) -> NumericColumns:
        numeric = [f for f in features if f.kind == "numeric"]
        offsets = np.asarray([f.offset for f in numeric], dtype=np.int64)
        return cls(
            columns=np.asarray([f.column for f in numeric], dtype=np.int64),
            inner=stats.inner_edges([f.edges for f in numeric]),
            offsets=offsets,
            missing=offsets + np.asarray([f.size for f in numeric], dtype=np.int64),
        )

    def subset(self, keep: np.ndarray) -> NumericColumns:
        return NumericColumns(self.columns[keep], self.inner[:, keep], self.offsets[keep], self.missing[keep])


@dataclass(frozen=True)
class Judgement:
    """What the spec asks of a window."""

    method: str
    threshold: float
    min_samples: int
    p_value_correction: str = "bonferroni"
    prediction_threshold: float = 0.2
    psi_significance: float = 0.01
    """A PSI above the threshold counts only if noise this unlikely (Bonferroni-corrected over the
    features) cannot explain it: small windows of undrifted traffic cross 0.2 by chance."""


@dataclass
class WindowResult:
    sample_count: int
    judged: bool
    drifted: bool
    features: list[monitoring_pb2.FeatureDrift]
    statistics: list[monitoring_pb2.FeatureDrift]
    prediction_drift: float


@dataclass(frozen=True)
class Reference:
    sha256: str
    task: str
    feature_names: list[str]
    features: list[FeatureSlots]
    class_labels: list[str]
    prediction_offset: int
    prediction_edges: np.ndarray
    """Bin edges of the regression output; empty for classification."""
    prediction_reference: np.ndarray
    size: int
    _class_index: dict[str, int] = field(default_factory=dict)
    _numeric: NumericColumns | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, profile: ReferenceProfile, sha256: str) -> Reference:
        features: list[FeatureSlots] = []
        offset = 0
        for item in sorted([*profile.numeric, *profile.categorical], key=lambda f: f.index):
            if hasattr(item, "bin_edges"):
                edges = np.asarray(item.bin_edges, dtype=np.float64)
                size = max(len(edges) - 1, 1)
                reference = np.asarray([*item.counts, item.missing], dtype=np.int64)
                features.append(
                    FeatureSlots(item.name, "numeric", item.index, offset, size, edges, reference)
                )
                offset += size + 1
            else:
                size = len(item.categories)
                reference = np.asarray([*item.counts, item.unseen, item.missing], dtype=np.int64)
                vocabulary = {str(category): code for code, category in enumerate(item.categories)}
                features.append(
                    FeatureSlots(
                        item.name, "categorical", item.index, offset, size, np.empty(0), reference, vocabulary
                    )
                )
                offset += size + 2
        prediction = profile.prediction
        if prediction.kind == "class":
            prediction_reference = np.asarray(prediction.class_counts, dtype=np.int64)
            prediction_edges = np.empty(0)
        else:
            prediction_reference = np.asarray(prediction.counts, dtype=np.int64)
            prediction_edges = np.asarray(prediction.bin_edges, dtype=np.float64)
        return cls(
            sha256=sha256,
            task=profile.task,
            feature_names=list(profile.feature_names),
            features=features,
            class_labels=list(prediction.class_labels),
            prediction_offset=offset,
            prediction_edges=prediction_edges,
            prediction_reference=prediction_reference,
            size=offset + len(prediction_reference),
            _class_index={label: i for i, label in enumerate(prediction.class_labels)},
            _numeric=NumericColumns.of(features),
        )

    def empty(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.int64)

    def count(
        self, matrix: np.ndarray, predicted: np.ndarray, present: np.ndarray | None = None
    ) -> np.ndarray:
        """Counts on this reference's slots of rows `matrix` [n, F] (columns in profile order, NaN
        for missing) and `predicted` [n]: class indices (-1 unknown) or regression outputs. A feature
        whose column is not `present` (the log lacks it) is not counted at all, so that its slots stay
        empty and the window does not judge it."""
        n = matrix.shape[0]
        counts = np.zeros(self.size, dtype=np.int64)
        numeric = self._numeric or NumericColumns.of(self.features)
        if present is not None:
            numeric = numeric.subset(present[numeric.columns])
        if numeric.columns.size:
            whole = numeric.columns.size == matrix.shape[1] and bool(
                (numeric.columns == np.arange(matrix.shape[1])).all()
            )
            values = matrix if whole else matrix[:, numeric.columns]
            slots = stats.bin_slots(values, numeric.inner, numeric.offsets, numeric.missing)
            counts += np.bincount(slots.ravel(), minlength=self.size)
        others = [feature for feature in self.features if feature.kind != "numeric"]
        slots = np.empty((n, len(others) + 1), dtype=np.int64)
        for j, feature in enumerate(others):
            if present is not None and not present[feature.column]:
                slots[:, j] = -1
                continue
            values = matrix[:, feature.column]
            missing = np.isnan(values)
            codes = np.where(missing, -1.0, values)
            known = (codes >= 0) & (codes < feature.size) & (codes == np.floor(codes))
            index = np.where(known, codes, feature.size).astype(np.int64)  # unseen
            index[missing] = feature.size + 1
            slots[:, j] = feature.offset + index
        if self.task == "classification":
            classes = np.asarray(predicted, dtype=np.int64)
            slots[:, -1] = np.where(classes >= 0, self.prediction_offset + classes, -1)
        else:
            values = np.asarray(predicted, dtype=np.float64)
            index = stats.bin_index(values, self.prediction_edges)
            slots[:, -1] = np.where(index >= 0, self.prediction_offset + index, -1)
        flat = slots.ravel()
        return counts + np.bincount(flat[flat >= 0], minlength=self.size)

    def class_index(self, label: str) -> int:
        return self._class_index.get(label, -1)

    def judge(self, counts: np.ndarray, sample_count: int, rule: Judgement) -> WindowResult:
        """Every statistic of a window, the one the spec's method judges each feature by, and whether
        the window drifted: any judged feature crossed the threshold, or the predictions' PSI did."""
        judged = sample_count >= rule.min_samples and sample_count > 0
        by_p_value = rule.method in ("ks", "chi2")
        # A feature no row of the window logged (the log lacks it) is left out, not judged as empty.
        observed = [
            feature
            for feature in self.features
            if sample_count <= 0 or counts[feature.offset : feature.offset + feature.reference.size].any()
        ]
        p_threshold = rule.threshold
        if by_p_value and rule.p_value_correction == "bonferroni" and observed:
            p_threshold = rule.threshold / len(observed)
        statistics: list[monitoring_pb2.FeatureDrift] = []
        chosen: list[monitoring_pb2.FeatureDrift] = []
        psi_alpha = rule.psi_significance / max(len(observed), 1)
        for feature in observed:
            live = counts[feature.offset : feature.offset + feature.reference.size]
            psi_score = stats.psi(feature.reference, live)
            psi_p = stats.psi_p_value(feature.reference, live)
            psi_item = monitoring_pb2.FeatureDrift(
                feature=feature.name,
                method="psi",
                score=psi_score,
                p_value=psi_p,
                drifted=judged and rule.method == "psi" and psi_score > rule.threshold and psi_p < psi_alpha,
            )
            if feature.kind == "numeric":
                # Missing values are not part of the ordered scale the KS test compares.
                d, p = stats.ks_binned(feature.reference[:-1], live[:-1])
                test = monitoring_pb2.FeatureDrift(feature=feature.name, method="ks", score=d, p_value=p)
            else:
                chi, p = stats.chi_squared(feature.reference, live)
                test = monitoring_pb2.FeatureDrift(feature=feature.name, method="chi2", score=chi, p_value=p)
            test.drifted = judged and by_p_value and p < p_threshold
            statistics.extend([psi_item, test])
            chosen.append(test if by_p_value else psi_item)
        live_prediction = counts[self.prediction_offset :]
        prediction_drift = stats.psi(self.prediction_reference, live_prediction)
        prediction_drifted = (
            prediction_drift > rule.prediction_threshold
            and stats.psi_p_value(self.prediction_reference, live_prediction) < rule.psi_significance
        )
        drifted = judged and (any(item.drifted for item in chosen) or prediction_drifted)
        return WindowResult(sample_count, judged, drifted, chosen, statistics, prediction_drift)


def advance_run(
    consecutive: int,
    *,
    judged: bool,
    crossed: bool,
    needed: int,
    last_alarm_at: float | None,
    now: float,
    cooldown_s: float,
    action: str,
) -> tuple[int, bool]:
    """(windows in a row that crossed the bound, whether to raise the alarm now).

    A window too small to judge leaves the run as it is; a judged window that did not cross ends it.
    The alarm goes off once the run is `needed` long, unless the policy is "none" or the version
    raised it less than `cooldown_s` ago (a lasting drift does not ask for a retrain every window).
    """
    if judged:
        consecutive = consecutive + 1 if crossed else 0
    cooled = last_alarm_at is None or now - last_alarm_at >= cooldown_s
    alarm = judged and crossed and consecutive >= max(needed, 1) and cooled and action != "none"
    return consecutive, alarm
