"""Counting one decoded batch, pure and vectorised: per (version, window) count deltas on the
reference slots, per-version health rows, and the prediction rows kept for the ground-truth join.
`count_batch` runs in a worker thread; what it needs from the registry is looked up beforehand
(`Prepared`), and what it returns is merged on the event loop (`OpenWindows.merge`, `Queries.add_health`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.monitor.batch import BatchRows, predicted_classes
from services.monitor.inputs import match_inputs
from services.monitor.predictions import PredictionBatch
from services.monitor.reference import Reference
from services.monitor.times import utc

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.monitor.clients import VersionInfo


@dataclass(frozen=True)
class Prepared:
    """What counting a batch needs from the registry, looked up (and cached) beforehand."""

    rows: BatchRows
    window_seconds: int
    task: str
    versions: dict[int, VersionInfo]
    partition: int
    traceparent: str | None
    label: str = ""
    """The spec's label column: never a feature."""


@dataclass
class WindowDelta:
    model: str
    version: int
    start: int
    counts: np.ndarray | None
    samples: int


@dataclass
class HealthDelta:
    model: str
    version: int
    seconds: np.ndarray
    latency_us: np.ndarray
    failed: np.ndarray
    sampling_rate: float
    classes: np.ndarray | None
    n_classes: int
    values: np.ndarray | None


@dataclass
class CountedBatch:
    windows: list[WindowDelta] = field(default_factory=list)
    health: list[HealthDelta] = field(default_factory=list)
    predictions: list[PredictionBatch] = field(default_factory=list)
    rows: int = 0
    partition: int = 0
    traceparent: str | None = None
    model: str = ""
    window_seconds: int = 0
    references: dict[int, Reference | None] = field(default_factory=dict)
    latest: float = 0.0
    """The latest request time in the batch."""
    unmatched: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    """Per version: the profile features the batch lacks, and the inputs it logs that the profile
    lacks (both left out of drift; reported once)."""


def count_batch(prepared: Prepared, *, store_predictions: bool) -> CountedBatch:
    """Count one batch: per (version, window) deltas on the reference slots, health rows, and the
    prediction rows kept for the ground-truth join. Pure and vectorised; run it in a worker thread."""
    rows = prepared.rows
    out = CountedBatch(
        rows=len(rows),
        partition=prepared.partition,
        traceparent=prepared.traceparent,
        model=rows.model,
        window_seconds=prepared.window_seconds,
    )
    if not len(rows):
        return out
    out.latest = float(rows.timestamps.max())
    classification = prepared.task == "classification"
    width = prepared.window_seconds
    starts = (np.floor(rows.timestamps / width) * width).astype(np.int64)
    seconds = np.floor(rows.timestamps).astype(np.int64)
    for version, info in prepared.versions.items():
        selected = rows.versions == version
        reference = info.reference
        out.references[version] = reference
        class_labels = list(info.version.signature.class_labels) or (
            reference.class_labels if reference else list(rows.class_labels)
        )
        sub_rows = _subset(rows, selected)
        classes = predicted_classes(sub_rows, class_labels) if classification else None
        values = None if classification else np.where(sub_rows.failed, np.nan, sub_rows.outputs[:, 0])
        out.health.append(
            HealthDelta(
                rows.model,
                version,
                seconds[selected],
                sub_rows.latency_us,
                sub_rows.failed,
                rows.sampling_rate,
                classes,
                len(class_labels),
                values,
            )
        )
        ok = ~sub_rows.failed
        matrix = present = None
        if reference is not None:
            matched = match_inputs(sub_rows, reference, label=prepared.label)
            matrix, present = matched.matrix, matched.present
            if matched.missing or matched.extra:
                out.unmatched[version] = (matched.missing, matched.extra)
        version_starts = starts[selected]
        for start in np.unique(version_starts[ok]):
            in_window = ok & (version_starts == start)
            counts = None
            if reference is not None and matrix is not None:
                predicted = classes[in_window] if classes is not None else values[in_window]
                counts = reference.count(matrix[in_window], predicted, present)
            out.windows.append(WindowDelta(rows.model, version, int(start), counts, int(in_window.sum())))
        if store_predictions and ok.any():
            stored = matrix if matrix is not None else sub_rows.features
            times = sub_rows.timestamps[ok]
            request_ids = sub_rows.request_ids
            if not ok.all():
                request_ids = [request_ids[i] for i in np.flatnonzero(ok)]
            out.predictions.append(
                PredictionBatch.of(
                    model=rows.model,
                    version=version,
                    logged_at=utc(float(times.min())),
                    request_ids=request_ids,
                    timestamps=times,
                    class_labels=class_labels if classification else None,
                    classes=classes[ok] if classes is not None else None,
                    predictions=values[ok] if values is not None else None,
                    features=stored[ok],
                )
            )
    return out


def _subset(rows: BatchRows, selected: np.ndarray) -> BatchRows:
    if selected.all():
        return rows
    index = np.flatnonzero(selected)
    return BatchRows(
        model=rows.model,
        feature_names=rows.feature_names,
        class_labels=rows.class_labels,
        sampling_rate=rows.sampling_rate,
        request_ids=[rows.request_ids[i] for i in index],
        versions=rows.versions[selected],
        timestamps=rows.timestamps[selected],
        latency_us=rows.latency_us[selected],
        failed=rows.failed[selected],
        features=rows.features[selected],
        text_feature_names=rows.text_feature_names,
        texts=rows.texts[selected],
        outputs=rows.outputs[selected],
        labels=[rows.labels[i] for i in index],
        roles=rows.roles[selected],
    )
