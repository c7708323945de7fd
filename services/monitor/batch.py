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
    feature_lengths = [len(r.features) for r in records]
    output_lengths = [len(r.outputs) for r in records]
    failed = np.fromiter((bool(r.error) for r in records), dtype=bool, count=n)
    for i, (flen, olen) in enumerate(zip(feature_lengths, output_lengths, strict=True)):
        if flen != width and not (failed[i] and flen == 0):
            raise InvalidBatch(
                f"record {i} ({records[i].request_id!r}) has {flen} features; feature_names lists {width}"
            )
        if olen != outputs_width and not (failed[i] and olen == 0):
            raise InvalidBatch(
                f"record {i} ({records[i].request_id!r}) has {olen} outputs; expected {outputs_width} "
                + ("(one per class label)" if classes else "(one prediction)")
            )
    if all(length == width for length in feature_lengths):
        features = np.fromiter(
            itertools.chain.from_iterable(r.features for r in records), dtype=np.float64, count=n * width
        ).reshape(n, width)
    else:
        features = np.full((n, width), np.nan)
        for i, r in enumerate(records):
            if feature_lengths[i]:
                features[i] = r.features
    if all(length == outputs_width for length in output_lengths):
        outputs = np.fromiter(
            itertools.chain.from_iterable(r.outputs for r in records),
            dtype=np.float64,
            count=n * outputs_width,
        ).reshape(n, outputs_width)
    else:
        outputs = np.full((n, outputs_width), np.nan)
        for i, r in enumerate(records):
            if output_lengths[i]:
                outputs[i] = r.outputs
    versions = np.fromiter((r.version for r in records), dtype=np.int64, count=n)
    if n and versions.min() < 1:
        bad = int(np.argmin(versions))
        raise InvalidBatch(f"record {bad} ({records[bad].request_id!r}) has no model version")
    timestamps = np.fromiter(
        (r.timestamp.seconds + r.timestamp.nanos * 1e-9 for r in records), dtype=np.float64, count=n
    )
    if n and timestamps.min() <= 0:
        bad = int(np.argmin(timestamps))
        raise InvalidBatch(f"record {bad} ({records[bad].request_id!r}) has no timestamp")
    return BatchRows(
        model=event.model,
        feature_names=names,
        class_labels=classes,
        sampling_rate=rate,
        request_ids=[r.request_id for r in records],
        versions=versions,
        timestamps=timestamps,
        latency_us=np.fromiter((r.latency_us for r in records), dtype=np.int64, count=n),
        failed=failed,
        features=features,
        outputs=outputs,
        labels=[r.label for r in records],
        roles=np.fromiter((r.role for r in records), dtype=np.int64, count=n),
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
