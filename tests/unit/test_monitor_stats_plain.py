"""The monitor's binning and statistics pinned to plain numpy / scipy computations of the same
definitions: bins by `np.histogram` on the profile's edges with infinite ends, PSI and the binned KS
by their formulas, p-values by scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mlops.profile import ReferenceProfile, histogram, quantile_edges
from services.monitor import stats
from services.monitor.reference import Judgement, Reference


def plain_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts on `edges` with both end bins open, NaN left out: np.histogram on infinite ends."""
    bins = [-np.inf, *edges[1:-1], np.inf]
    return np.histogram(values[~np.isnan(values)], bins=bins)[0]


def plain_psi(ref: np.ndarray, live: np.ndarray) -> float:
    p = np.maximum(ref / ref.sum(), stats.PSI_EPSILON)
    q = np.maximum(live / live.sum(), stats.PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def plain_ks(ref: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    n, m = ref.sum(), live.sum()
    d = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(live) / m)))
    return d, float(sps.kstwo.sf(d, np.round(n * m / (n + m))))


def columns(rng: np.random.Generator, rows: int, *, infinite: bool = False) -> np.ndarray:
    """Assorted columns: continuous, heavy-tailed, few distinct values, constant; NaN in all of
    them, and ±inf too in `infinite` (live) ones."""
    matrix = np.column_stack(
        [
            rng.normal(size=rows),
            rng.exponential(size=rows),
            rng.integers(0, 3, size=rows).astype(np.float64),
            np.full(rows, 2.5),
            rng.standard_cauchy(size=rows),
            rng.uniform(size=rows),
        ]
    )
    matrix[rng.random(matrix.shape) < 0.05] = np.nan
    if infinite:
        matrix[rng.random(matrix.shape) < 0.001] = np.inf
        matrix[rng.random(matrix.shape) < 0.001] = -np.inf
    return matrix


def test_bin_slots_equals_histogram_per_feature_with_nan_constant_columns_and_values_on_edges():
    rng = np.random.default_rng(5)
    training = columns(rng, 5_000)
    edges = [quantile_edges(training[:, j]) for j in range(training.shape[1])]
    live = columns(rng, 3_000, infinite=True)
    live[:50, 0] = edges[0][3]  # exactly on an inner edge: the bin above it, as in the profile
    live[50:60, 1] = edges[1][0]
    sizes = [max(len(e) - 1, 1) for e in edges]
    offsets = np.cumsum([0, *[s + 1 for s in sizes[:-1]]])
    missing = offsets + np.asarray(sizes)
    slots = stats.bin_slots(live, stats.inner_edges([np.asarray(e) for e in edges]), offsets, missing)
    counts = np.bincount(slots.ravel(), minlength=int(missing[-1]) + 1)
    for j, e in enumerate(edges):
        expected, nan = histogram(live[:, j], e)
        assert counts[offsets[j] : missing[j]].tolist() == expected == plain_counts(live[:, j], e).tolist()
        assert counts[missing[j]] == nan == np.isnan(live[:, j]).sum()
    assert len(edges[3]) == 2 and counts[offsets[3]] == np.sum(~np.isnan(live[:, 3]))  # constant: one bin


def test_reference_count_matches_the_profile_counts_on_its_own_rows_and_skips_absent_columns():
    rng = np.random.default_rng(6)
    training = columns(rng, 4_000)
    names = [f"x{j}" for j in range(training.shape[1])]
    profile = ReferenceProfile.compute(
        task="regression", features=training, feature_names=names, categorical={}, predictions=training[:, 5]
    )
    reference = Reference.of(profile, "0" * 64)
    counts = reference.count(training, training[:, 5])
    for feature, item in zip(reference.features, profile.numeric, strict=True):
        assert counts[feature.offset : feature.offset + feature.reference.size].tolist() == [
            *item.counts,
            item.missing,
        ]
    present = np.ones(len(names), dtype=bool)
    present[2] = False
    partial = reference.count(training, training[:, 5], present)
    absent = reference.features[2]
    assert not partial[absent.offset : absent.offset + absent.reference.size].any()
    assert partial.sum() == counts.sum() - len(training)
    assert reference.count(training[:0], training[:0, 5]).sum() == 0


def test_psi_and_binned_ks_equal_the_plain_formulas_on_random_counts_with_empty_bins():
    rng = np.random.default_rng(7)
    for _ in range(200):
        bins = int(rng.integers(2, 15))
        ref = rng.integers(0, 1_000, size=bins) * (rng.random(bins) > 0.2)
        live = rng.integers(0, 300, size=bins) * (rng.random(bins) > 0.2)
        if ref.sum() == 0 or live.sum() == 0:
            continue
        assert stats.psi(ref, live) == pytest.approx(plain_psi(ref, live), abs=1e-9)
        d, p = stats.ks_binned(ref, live)
        expected_d, expected_p = plain_ks(ref, live)
        assert d == pytest.approx(expected_d, abs=1e-12)
        assert p == pytest.approx(expected_p, abs=1e-9)


def test_edge_cases_empty_sides_and_a_single_bin():
    assert stats.psi(np.array([0, 0, 0]), np.array([1, 2, 3])) == 0.0
    assert stats.psi(np.array([1, 2, 3]), np.array([0, 0, 0])) == 0.0
    assert stats.ks_binned(np.array([5, 5]), np.array([0, 0])) == (0.0, 1.0)
    assert stats.psi(np.array([400]), np.array([7])) == pytest.approx(0.0)  # a constant column
    assert stats.ks_binned(np.array([400]), np.array([7])) == (0.0, 1.0)


def test_judged_statistics_equal_plain_numpy_scipy_on_the_raw_values():
    """Profile, count in batches and judge, against np.histogram on the same edges and the plain
    formulas; the binned KS D never exceeds the exact ks_2samp statistic of the raw values."""
    rng = np.random.default_rng(8)
    training = columns(rng, 6_000)
    live = columns(rng, 4_000, infinite=True)
    live[:, 0] += 0.4
    names = [f"x{j}" for j in range(training.shape[1])]
    profile = ReferenceProfile.compute(
        task="regression", features=training, feature_names=names, categorical={}, predictions=training[:, 5]
    )
    reference = Reference.of(profile, "0" * 64)
    counts = sum(reference.count(live[i : i + 700], live[i : i + 700, 5]) for i in range(0, len(live), 700))
    window = reference.judge(counts, len(live), Judgement("ks", 0.05, 1, p_value_correction="none"))
    by_method = {(item.feature, item.method): item for item in window.statistics}
    for j, item in enumerate(profile.numeric):
        ref = plain_counts(training[:, j], item.bin_edges)
        cur = plain_counts(live[:, j], item.bin_edges)
        # PSI counts missing values as one more bin; KS compares the ordered bins only
        missing = np.isnan(training[:, j]).sum(), np.isnan(live[:, j]).sum()
        psi = plain_psi(np.append(ref, missing[0]), np.append(cur, missing[1]))
        assert by_method[(item.name, "psi")].score == pytest.approx(psi, abs=1e-6)
        ks = by_method[(item.name, "ks")]
        d, p = plain_ks(ref, cur)
        assert ks.score == pytest.approx(d, abs=1e-6) and ks.p_value == pytest.approx(p, abs=1e-6)
        finite = ~np.isnan(training[:, j]), ~np.isnan(live[:, j])
        exact = sps.ks_2samp(training[finite[0], j], live[finite[1], j]).statistic
        assert ks.score <= exact + 1e-12
    assert by_method[("x0", "ks")].drifted and not by_method[("x3", "ks")].drifted
