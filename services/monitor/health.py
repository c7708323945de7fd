"""Recent health of every model version, in memory, in one-second buckets by request time.

GetHealth is on the deployer's tick path, so it reads only this: the buckets of the last
`window_seconds` are summed on demand (a few hundred small arrays at most). Per bucket: sampled and
scaled request and error counts, a latency histogram on log-spaced bins (40 per decade, so a
percentile is within about 3% of the exact one), and the predicted distribution (class counts, or
the raw regression outputs, bounded per bucket) for prediction drift against a baseline version.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from services.monitor import stats

LATENCY_EDGES_US = np.logspace(0, 8, 321)
"""1 µs to 100 s; a latency outside lands in the end bins."""
MAX_VALUES_PER_BUCKET = 512


@dataclass
class Bucket:
    second: int
    sampled: int = 0
    requests: float = 0.0
    errors: float = 0.0
    sampled_errors: int = 0
    latency: np.ndarray = field(default_factory=lambda: np.zeros(LATENCY_EDGES_US.size + 1, dtype=np.int64))
    classes: np.ndarray | None = None
    values: list[np.ndarray] = field(default_factory=list)
    value_count: int = 0


@dataclass
class HealthFigures:
    start: float
    end: float
    sampled: int
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float
    latency_p99_ms: float


class VersionHealth:
    def __init__(self, horizon_s: int) -> None:
        self.horizon_s = horizon_s
        self.buckets: deque[Bucket] = deque()
        self._by_second: dict[int, Bucket] = {}

    def add(
        self,
        seconds: np.ndarray,
        latency_us: np.ndarray,
        failed: np.ndarray,
        sampling_rate: float,
        classes: np.ndarray | None,
        n_classes: int,
        values: np.ndarray | None,
        now: float,
    ) -> None:
        """Rows of one version: their request second, latency, failure and prediction."""
        oldest = int(now) - self.horizon_s
        keep = seconds >= oldest
        if not keep.all():
            seconds, latency_us, failed = seconds[keep], latency_us[keep], failed[keep]
            classes = classes[keep] if classes is not None else None
            values = values[keep] if values is not None else None
        if seconds.size == 0:
            return
        latency_bins = np.searchsorted(LATENCY_EDGES_US, latency_us, side="right")
        for second in np.unique(seconds):
            rows = seconds == second
            bucket = self._bucket(int(second))
            count = int(rows.sum())
            errors = int(failed[rows].sum())
            bucket.sampled += count
            bucket.sampled_errors += errors
            bucket.requests += count / sampling_rate
            bucket.errors += errors / sampling_rate
            bucket.latency += np.bincount(latency_bins[rows], minlength=bucket.latency.size)
            if classes is not None and n_classes:
                picked = classes[rows]
                counts = np.bincount(picked[picked >= 0], minlength=n_classes)[:n_classes]
                bucket.classes = counts if bucket.classes is None else bucket.classes + counts
            if values is not None and bucket.value_count < MAX_VALUES_PER_BUCKET:
                picked = values[rows]
                picked = picked[~np.isnan(picked)][: MAX_VALUES_PER_BUCKET - bucket.value_count]
                bucket.values.append(picked)
                bucket.value_count += picked.size
        self.expire(now)

    def _bucket(self, second: int) -> Bucket:
        bucket = self._by_second.get(second)
        if bucket is None:
            bucket = self._by_second[second] = Bucket(second)
            if not self.buckets or self.buckets[-1].second < second:
                self.buckets.append(bucket)
            else:  # out of order: rare, keep the deque sorted
                items = sorted([*self.buckets, bucket], key=lambda b: b.second)
                self.buckets = deque(items)
        return bucket

    def expire(self, now: float) -> None:
        oldest = int(now) - self.horizon_s
        while self.buckets and self.buckets[0].second < oldest:
            del self._by_second[self.buckets.popleft().second]

    def window(self, start: float, end: float) -> list[Bucket]:
        return [b for b in self.buckets if start <= b.second < end]

    def figures(self, start: float, end: float) -> HealthFigures:
        buckets = self.window(start, end)
        sampled = sum(b.sampled for b in buckets)
        requests = sum(b.requests for b in buckets)
        errors = sum(b.errors for b in buckets)
        p50 = p99 = 0.0
        if sampled:
            histogram = np.sum([b.latency for b in buckets], axis=0)
            p50, p99 = (percentile_us(histogram, q) / 1000 for q in (0.5, 0.99))
        return HealthFigures(
            start=start,
            end=end,
            sampled=sampled,
            requests=round(requests),
            errors=round(errors),
            error_rate=errors / requests if requests else 0.0,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
        )

    def class_counts(self, start: float, end: float) -> np.ndarray | None:
        picked = [b.classes for b in self.window(start, end) if b.classes is not None]
        return np.sum(picked, axis=0) if picked else None

    def values(self, start: float, end: float) -> np.ndarray:
        picked = [v for b in self.window(start, end) for v in b.values]
        return np.concatenate(picked) if picked else np.empty(0)


def percentile_us(histogram: np.ndarray, q: float) -> float:
    """The q-quantile of a latency histogram on LATENCY_EDGES_US, interpolated within its bin on the
    log scale."""
    total = histogram.sum()
    if total <= 0:
        return 0.0
    cumulative = np.cumsum(histogram)
    rank = q * total
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index == 0:
        return float(LATENCY_EDGES_US[0])
    if index >= LATENCY_EDGES_US.size:
        return float(LATENCY_EDGES_US[-1])
    low, high = np.log(LATENCY_EDGES_US[index - 1]), np.log(LATENCY_EDGES_US[index])
    before = cumulative[index] - histogram[index]
    fraction = (rank - before) / histogram[index] if histogram[index] else 0.5
    return float(np.exp(low + np.clip(fraction, 0.0, 1.0) * (high - low)))


def prediction_psi_classes(candidate: np.ndarray, baseline: np.ndarray) -> float:
    return stats.psi(baseline, candidate)


def prediction_psi_values(candidate: np.ndarray, baseline: np.ndarray, edges: np.ndarray) -> float:
    """PSI of regression outputs binned on `edges` (the baseline's profile bins, or its quantiles)."""
    base = np.bincount(stats.bin_index(baseline, edges), minlength=max(edges.size - 1, 1))
    cand = np.bincount(stats.bin_index(candidate, edges), minlength=max(edges.size - 1, 1))
    return stats.psi(base, cand)
