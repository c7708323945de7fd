"""Drift statistics on binned counts: the live window is only ever held as counts on the reference
bins of the training profile, so every statistic here takes two count vectors on the same bins.

- PSI: sum over bins of (live - ref) * ln(live / ref) on the bins' shares. An empty bin on either
  side gets the share `PSI_EPSILON` instead of 0, so that the logarithm stays finite.
- KS from binned counts: both empirical CDFs are known exactly at the bin edges, so the statistic
  is D = max over the inner edges of |F_ref - F_live|. It equals the two-sample KS statistic of
  the raw values when every value sits on a bin edge and is a lower bound otherwise (the raw
  CDFs may differ more between two edges than at them); with the profile's ten quantile bins the
  test loses power against shifts inside one bin, never raises false alarms. The p-value is the
  one `scipy.stats.ks_2samp(method="asymp")` gives for the same D: the exact one-sample Kolmogorov
  distribution `kstwo` at the effective size round(n * m / (n + m)).
- Chi-squared: the 2 x K contingency test of reference against live counts (no continuity
  correction), over the categories that occur on either side; K - 1 degrees of freedom.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

PSI_EPSILON = 1e-4
"""Share given to a bin that is empty on one side, so that PSI stays finite."""


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of `live` against `reference`; 0 when either side is empty."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    ref_total, cur_total = ref.sum(), cur.sum()
    if ref_total <= 0 or cur_total <= 0:
        return 0.0
    p = np.maximum(ref / ref_total, PSI_EPSILON)
    q = np.maximum(cur / cur_total, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_p_value(reference: np.ndarray, live: np.ndarray) -> float:
    """How likely sampling noise alone explains the difference a PSI measures between two count
    vectors: the chi-squared test of homogeneity on the same bins.

    A small window's PSI is noisy (about (bins - 1)(1/n + 1/m) under no drift, with a long tail
    from bins that happen to be empty), so a PSI over the threshold only means drift when this
    p-value is small too."""
    return chi_squared(reference, live)[1]


def ks_binned(reference: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """(D, p-value) of the two-sample Kolmogorov-Smirnov test on counts over the same ordered bins."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    n, m = ref.sum(), cur.sum()
    if n <= 0 or m <= 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(cur) / m)))
    return d, ks_p_value(d, int(n), int(m))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Two-sided p-value of the KS statistic `d` for samples of sizes n and m (asymptotic, as scipy)."""
    big, small = max(n, m), min(n, m)
    effective = big * small / (big + small)
    return float(np.clip(sps.kstwo.sf(d, np.round(effective)), 0.0, 1.0))


def chi_squared(reference: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the chi-squared test of homogeneity of two count vectors."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return 0.0, 1.0
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(sps.chi2.sf(statistic, table.shape[1] - 1))


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of every value by `mlops.profile.histogram`'s rules (open end bins); NaN gets -1."""
    index = np.searchsorted(edges[1:-1], values, side="right")
    index[np.isnan(values)] = -1
    return index


def inner_edges(edges: list[np.ndarray]) -> np.ndarray:
    """The inner edges of several features' bins as one [K, F] matrix, column j feature j's, padded
    below with NaN: no value is >= NaN, so padding never moves a value to another bin."""
    inner = [np.asarray(e, dtype=np.float64)[1:-1] for e in edges]
    matrix = np.full((max((len(e) for e in inner), default=0), len(inner)), np.nan)
    for j, column in enumerate(inner):
        matrix[: len(column), j] = column
    return matrix


def bin_slots(values: np.ndarray, inner: np.ndarray, offsets: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Slot of every value of `values` [n, F]: offsets[j] plus its bin on feature j's edges by
    `mlops.profile.histogram`'s rules, or missing[j] for NaN. `inner` is `inner_edges` of the F
    features. A value's bin is the number of inner edges <= it (what `searchsorted(side="right")`
    gives on sorted edges, with both end bins open), counted here with one comparison of the whole
    matrix against each row of `inner`: K vectorised passes instead of F binary searches."""
    top = int(max(offsets.max(initial=0), missing.max(initial=0))) + inner.shape[0] + 1
    dtype = np.int16 if top <= np.iinfo(np.int16).max else np.int64
    slots = np.empty(values.shape, dtype=dtype)
    slots[...] = offsets.astype(dtype)
    for row in inner:
        slots += values >= row
    np.copyto(slots, missing.astype(dtype), where=np.isnan(values))
    return slots
