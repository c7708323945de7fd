"""One `InferenceLogged` record (a batch of predictions) as numpy arrays, checked against its own
declarations; a batch that contradicts itself is refused whole, naming the first bad record."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mlops.errors import InvalidArgument
from mlops.events.v1 import monitoring_pb2


class InvalidBatch(InvalidArgument):
    """The batch cannot be counted; it goes to the dead-letter topic with this reason."""


@dataclass
class BatchRows:
    model: str
    feature_names: tuple[str, ...]
    class_labels: tuple[str, ...]
    sampling_rate: float
    request_ids: list[str]
    versions: np.ndarray
    timestamps: np.ndarray
    """Seconds since the epoch."""
    latency_us: np.ndarray
    failed: np.ndarray
    features: np.ndarray
    """[n, F] in `feature_names` order; NaN rows for failed requests that logged no features."""
    outputs: np.ndarray
    """[n, C] probabilities (classification) or [n, 1] predictions; NaN for failed requests."""
    labels: list[str]
    roles: np.ndarray

    def __len__(self) -> int:
        return len(self.request_ids)


def decode_batch(event: monitoring_pb2.InferenceLogged) -> BatchRows:
    """Arrays of one batch. One pass over the records in Python, the rest in numpy."""
    if not event.model:
        raise InvalidBatch("InferenceLogged.model is empty")
    rate = event.sampling_rate or 1.0
    if not 0 < rate <= 1:
        raise InvalidBatch(f"InferenceLogged.sampling_rate must be in (0, 1], got {event.sampling_rate}")
    names = tuple(event.feature_names)
    if len(set(names)) != len(names):
        raise InvalidBatch("InferenceLogged.feature_names has duplicates")
    classes = tuple(event.class_labels)
    records = event.records
    n, width = len(records), len(names)
    outputs_width = len(classes) if classes else 1
    # One pass over the records for every scalar field (each access crosses into the protobuf runtime).
    meta = [
        (
            r.version,
            r.timestamp,
            r.latency_us,
            r.role,
            len(r.features),
            len(r.outputs),
            r.error,
            r.request_id,
            r.label,
        )
        for r in records
    ]
    if n:
        versions_, stamps, latencies, roles, flens, olens, errors, request_ids, labels = map(
            list, zip(*meta, strict=True)
        )
    else:
        versions_, stamps, latencies, roles, flens, olens, errors, request_ids, labels = (
            [] for _ in range(9)
        )
    failed = np.fromiter((bool(e) for e in errors), dtype=bool, count=n)
    feature_lengths = np.asarray(flens, dtype=np.int64)
    output_lengths = np.asarray(olens, dtype=np.int64)
    bad_features = (feature_lengths != width) & ~(failed & (feature_lengths == 0))
    if bad_features.any():
        i = int(np.argmax(bad_features))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has {flens[i]} features; feature_names lists {width}"
        )
    bad_outputs = (output_lengths != outputs_width) & ~(failed & (output_lengths == 0))
    if bad_outputs.any():
        i = int(np.argmax(bad_outputs))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has {olens[i]} outputs; expected {outputs_width} "
            + ("(one per class label)" if classes else "(one prediction)")
        )
    if n and (feature_lengths == width).all():
        features = np.fromiter(
            itertools.chain.from_iterable(r.features for r in records), dtype=np.float64, count=n * width
        ).reshape(n, width)
    else:
        features = np.full((n, width), np.nan)
        for i, r in enumerate(records):
            if flens[i]:
                features[i] = r.features
    if n and (output_lengths == outputs_width).all():
        outputs = np.fromiter(
            itertools.chain.from_iterable(r.outputs for r in records),
            dtype=np.float64,
            count=n * outputs_width,
        ).reshape(n, outputs_width)
    else:
        outputs = np.full((n, outputs_width), np.nan)
        for i, r in enumerate(records):
            if olens[i]:
                outputs[i] = r.outputs
    versions = np.asarray(versions_, dtype=np.int64)
    if n and versions.min() < 1:
        bad = int(np.argmin(versions))
        raise InvalidBatch(f"record {bad} ({request_ids[bad]!r}) has no model version")
    timestamps = np.fromiter((t.seconds + t.nanos * 1e-9 for t in stamps), dtype=np.float64, count=n)
    if n and timestamps.min() <= 0:
        bad = int(np.argmin(timestamps))
        raise InvalidBatch(f"record {bad} ({request_ids[bad]!r}) has no timestamp")
    return BatchRows(
        model=event.model,
        feature_names=names,
        class_labels=classes,
        sampling_rate=rate,
        request_ids=request_ids,
        versions=versions,
        timestamps=timestamps,
        latency_us=np.asarray(latencies, dtype=np.int64),
        failed=failed,
        features=features,
        outputs=outputs,
        labels=labels,
        roles=np.asarray(roles, dtype=np.int64),
    )


def predicted_classes(rows: BatchRows, class_labels: list[str]) -> np.ndarray:
    """Index in `class_labels` of each row's predicted class: its label if logged, else the argmax of
    its probabilities; -1 for failed rows and labels the model does not list."""
    n = len(rows)
    if rows.class_labels and list(rows.class_labels) != list(class_labels):
        raise InvalidBatch(f"class_labels {list(rows.class_labels)} differ from the model's {class_labels}")
    result = np.full(n, -1, dtype=np.int64)
    ok = ~rows.failed
    if ok.any():
        result[ok] = np.argmax(np.nan_to_num(rows.outputs[ok], nan=-np.inf), axis=1)
    index = {label: i for i, label in enumerate(class_labels)}
    for i, label in enumerate(rows.labels):
        if label and ok[i]:
            result[i] = index.get(label, -1)
    return result
