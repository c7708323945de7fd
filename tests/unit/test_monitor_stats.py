"""The monitor's statistics on binned counts, against scipy on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from mlops.profile import histogram, quantile_edges
from services.monitor import stats


def test_psi_is_zero_for_equal_shares_and_matches_its_definition():
    assert stats.psi(np.array([10, 20, 30]), np.array([1, 2, 3])) == pytest.approx(0.0)
    ref, live = np.array([50, 30, 20]), np.array([20, 30, 50])
    p, q = ref / ref.sum(), live / live.sum()
    assert stats.psi(ref, live) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_psi_of_an_empty_bin_is_finite_and_large():
    score = stats.psi(np.array([100, 0]), np.array([50, 50]))
    assert math.isfinite(score) and score > 1.0
    assert stats.psi(np.array([0, 0]), np.array([1, 2])) == 0.0


def test_binned_ks_equals_scipy_when_values_sit_on_the_bin_edges():
    """On a grid of values with the edges at the grid, the binned CDFs are the exact ones."""
    rng = np.random.default_rng(1)
    grid = np.arange(20, dtype=np.float64)
    reference = rng.choice(grid, size=4000, p=np.full(20, 0.05))
    live = rng.choice(grid, size=1500, p=np.linspace(1, 2, 20) / np.linspace(1, 2, 20).sum())
    edges = [*grid.tolist(), 19.0]
    ref_counts, _ = histogram(reference, edges)
    live_counts, _ = histogram(live, edges)
    d, p = stats.ks_binned(np.array(ref_counts), np.array(live_counts))
    expected = sps.ks_2samp(reference, live, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)


def test_binned_ks_is_close_to_scipy_on_continuous_data_with_fine_bins():
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, 20_000)
    live = rng.normal(0.1, 1, 5_000)
    edges = quantile_edges(reference, bins=200)
    d, p = stats.ks_binned(np.array(histogram(reference, edges)[0]), np.array(histogram(live, edges)[0]))
    expected = sps.ks_2samp(reference, live, method="asymp")
    assert d <= expected.statistic + 1e-12  # a lower bound: the CDFs are compared at the edges only
    assert d == pytest.approx(expected.statistic, abs=0.01)
    assert p == pytest.approx(expected.pvalue, abs=0.02)


def test_binned_ks_on_the_profiles_ten_bins_sees_a_shift_and_not_noise():
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, 5_000)
    edges = quantile_edges(reference)
    ref_counts = np.array(histogram(reference, edges)[0])
    same = np.array(histogram(rng.normal(0, 1, 1_000), edges)[0])
    shifted = np.array(histogram(rng.normal(1, 1, 1_000), edges)[0])
    assert stats.ks_binned(ref_counts, same)[1] > 0.01
    d, p = stats.ks_binned(ref_counts, shifted)
    assert d > 0.3 and p < 1e-10


def test_ks_p_value_matches_scipy_for_unequal_sizes():
    for d, n, m in [(0.05, 1000, 800), (0.2, 60, 90), (0.01, 100_000, 50_000)]:
        big, small = max(n, m), min(n, m)
        expected = sps.kstwo.sf(d, round(big * small / (big + small)))
        assert stats.ks_p_value(d, n, m) == pytest.approx(expected, rel=1e-9)


def test_chi_squared_matches_scipy_contingency_without_correction():
    ref, live = np.array([120, 80, 40, 0]), np.array([30, 50, 20, 0])
    statistic, p = stats.chi_squared(ref, live)
    expected = sps.chi2_contingency(np.vstack([ref[:3], live[:3]]), correction=False)
    assert statistic == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)


def test_chi_squared_of_one_category_or_an_empty_side_says_no_difference():
    assert stats.chi_squared(np.array([10, 0]), np.array([5, 0])) == (0.0, 1.0)
    assert stats.chi_squared(np.array([10, 5]), np.array([0, 0])) == (0.0, 1.0)


def test_bin_index_follows_the_profile_histogram_rules():
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    values = np.array([-5.0, 0.0, 0.99, 1.0, 2.5, 3.0, 99.0, np.nan])
    index = stats.bin_index(values, edges)
    assert index.tolist() == [0, 0, 0, 1, 2, 2, 2, -1]
    counts, missing = histogram(values, edges.tolist())
    assert np.bincount(index[index >= 0], minlength=3).tolist() == counts and missing == 1


def test_a_small_windows_psi_over_the_threshold_is_told_apart_from_a_real_shift():
    rng = np.random.default_rng(3)
    edges = quantile_edges(rng.normal(size=178))
    reference = np.asarray(histogram(rng.normal(size=178), edges)[0])
    noisy = []
    for _ in range(200):  # undrifted windows of 100 rows: their PSI crosses 0.2 now and then
        live = np.asarray(histogram(rng.normal(size=100), edges)[0])
        score = stats.psi(reference, live)
        noisy.append((score, stats.psi_p_value(reference, live)))
    crossed = [p for score, p in noisy if score > 0.2]
    assert crossed, "expected some undrifted windows above 0.2 by chance"
    assert all(p > 0.01 / 13 for p in crossed)
    shifted = np.asarray(histogram(rng.normal(loc=1.0, size=100), edges)[0])
    score = stats.psi(reference, shifted)
    assert score > 0.2 and stats.psi_p_value(reference, shifted) < 1e-6
