"""One `InferenceLogged` record (a batch of predictions) as numpy arrays, checked against its own
declarations; a batch that contradicts itself is refused whole, naming the first bad record."""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

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
    text_feature_names: tuple[str, ...]
    texts: np.ndarray
    """[n, T] str objects in `text_feature_names` order; None for failed requests that logged none."""
    outputs: np.ndarray
    """[n, C] probabilities (classification) or [n, 1] predictions; NaN for failed requests."""
    labels: list[str]
    roles: np.ndarray

    def __len__(self) -> int:
        return len(self.request_ids)


MIN_SAMPLING_RATE = 1e-6
"""Below one in a million, a logged row would stand for so many requests that the health counts
(integers in GetHealth) overflow."""
MAX_NAME = 253
"""Longest model name accepted (the longest Kubernetes object name); the registry's are shorter."""
LAST_SECOND = 253402300799
"""9999-12-31T23:59:59Z, the last second a Python datetime (and so the prediction store) can hold."""

_PACKED = ("features", "outputs")
_SECONDS = operator.attrgetter("seconds")
_NANOS = operator.attrgetter("nanos")
_FLOAT64 = np.dtype("<f8")


def _packed_as_bytes() -> type[Message]:
    """`InferenceLogged` as the monitor reads it: the same schema, except that each record's
    `features` and `outputs` are declared `bytes`. Both are packed doubles, which the wire format
    lays out as one length-delimited run of little-endian float64, so a record yields one bytes
    object per field instead of a Python float per value. Derived from the generated descriptors
    (in a pool of its own), so it follows the one schema; it reads only what that schema serialises.
    """
    record = monitoring_pb2.InferenceLogged.Record.DESCRIPTOR
    for name in _PACKED:
        if not record.fields_by_name[name].is_packed:
            raise TypeError(f"InferenceLogged.Record.{name} must stay a packed numeric field")
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        added.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        if file is monitoring_pb2.DESCRIPTOR:
            (logged,) = (m for m in proto.message_type if m.name == "InferenceLogged")
            (columns,) = (m for m in logged.nested_type if m.name == "Record")
            for field in columns.field:
                if field.name in _PACKED:
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                    field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
                    field.ClearField("options")
        pool.Add(proto)

    add(monitoring_pb2.DESCRIPTOR)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(monitoring_pb2.InferenceLogged.DESCRIPTOR.full_name)
    )


_COLUMNS = _packed_as_bytes()


def _matrix(runs: list[bytes], lengths: np.ndarray, width: int) -> np.ndarray:
    """[n, width] float64 from one packed run per record; NaN rows where a record has none."""
    n = len(runs)
    if n and (lengths == width).all():
        return np.frombuffer(b"".join(runs), dtype=_FLOAT64).reshape(n, width).astype(np.float64)
    matrix = np.full((n, width), np.nan)
    for i, run in enumerate(runs):
        if run:
            matrix[i] = np.frombuffer(run, dtype=_FLOAT64)
    return matrix


def _check_names(field: str, names: tuple[str, ...]) -> None:
    """PostgreSQL stores no NUL in text: a name with one would fail every commit after it."""
    for i, name in enumerate(names):
        if "\0" in name:
            raise InvalidBatch(f"InferenceLogged.{field}[{i}] ({name!r}) has a NUL character")


def decode_batch(
    event: monitoring_pb2.InferenceLogged, *, now: float | None = None, max_skew_s: float = 300.0
) -> BatchRows:
    """Arrays of one batch. One pass over the records in Python, the rest in numpy.

    Every value is checked here, before it reaches a conversion that would raise later (a datetime,
    a PostgreSQL text, a protobuf integer in GetHealth): a request time after the epoch and at most
    `max_skew_s` ahead of `now` (without `now`, within the calendar), nanos within a second, a
    latency not negative, a sampling rate in [MIN_SAMPLING_RATE, 1], names without NUL."""
    model = event.model
    if not model:
        raise InvalidBatch("InferenceLogged.model is empty")
    if "\0" in model:
        raise InvalidBatch(f"InferenceLogged.model ({model[:64]!r}) has a NUL character")
    if len(model) > MAX_NAME:
        raise InvalidBatch(f"InferenceLogged.model is {len(model)} characters long; at most {MAX_NAME}")
    rate = event.sampling_rate or 1.0
    if not MIN_SAMPLING_RATE <= rate <= 1:  # NaN fails this too
        raise InvalidBatch(
            f"InferenceLogged.sampling_rate must be in [{MIN_SAMPLING_RATE:g}, 1], got {event.sampling_rate}"
        )
    names = tuple(event.feature_names)
    if len(set(names)) != len(names):
        raise InvalidBatch("InferenceLogged.feature_names has duplicates")
    _check_names("feature_names", names)
    text_names = tuple(event.text_feature_names)
    if len(set(text_names)) != len(text_names):
        raise InvalidBatch("InferenceLogged.text_feature_names has duplicates")
    if both := set(names) & set(text_names):
        raise InvalidBatch(
            f"InferenceLogged names {sorted(both)[0]!r} in both feature_names and text_feature_names"
        )
    _check_names("text_feature_names", text_names)
    classes = tuple(event.class_labels)
    _check_names("class_labels", classes)
    # Serialising the parsed event costs far less than reading a float at a time from it; whatever
    # encoding the producer chose, the serialised form packs the doubles.
    records = _COLUMNS.FromString(event.SerializeToString()).records
    n, width = len(records), len(names)
    outputs_width = len(classes) if classes else 1
    # One pass over the records for every field (each access crosses into the protobuf runtime).
    meta = [
        (
            r.version,
            r.timestamp,
            r.latency_us,
            r.role,
            r.features,
            r.outputs,
            r.error,
            r.request_id,
            r.label,
        )
        for r in records
    ]
    if n:
        versions_, stamps, latencies, roles, feature_runs, output_runs, errors, request_ids, labels = map(
            list, zip(*meta, strict=True)
        )
    else:
        versions_, stamps, latencies, roles, feature_runs, output_runs, errors, request_ids, labels = (
            [] for _ in range(9)
        )
    # Text inputs are read only where the batch names some: text a record carries beyond its batch's
    # names is ignored, like an input the profile does not know.
    text_runs = [r.text_features for r in records] if text_names else []
    if "\0" in "".join(request_ids):
        i = next(i for i, request_id in enumerate(request_ids) if "\0" in request_id)
        raise InvalidBatch(f"record {i} ({request_ids[i]!r}) has a NUL character in its request id")
    failed = np.fromiter(map(bool, errors), dtype=bool, count=n)
    feature_lengths = np.fromiter(map(len, feature_runs), dtype=np.int64, count=n) // _FLOAT64.itemsize
    output_lengths = np.fromiter(map(len, output_runs), dtype=np.int64, count=n) // _FLOAT64.itemsize
    bad_features = (feature_lengths != width) & ~(failed & (feature_lengths == 0))
    if bad_features.any():
        i = int(np.argmax(bad_features))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has {feature_lengths[i]} features; feature_names lists {width}"
        )
    # A classifier that answers a label without probabilities logs no outputs; its label is counted.
    excused = failed
    if classes and not output_lengths.all():
        excused = failed | np.fromiter(map(bool, labels), dtype=bool, count=n)
    bad_outputs = (output_lengths != outputs_width) & ~(excused & (output_lengths == 0))
    if bad_outputs.any():
        i = int(np.argmax(bad_outputs))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has {output_lengths[i]} outputs; expected {outputs_width} "
            + ("(one per class label)" if classes else "(one prediction)")
        )
    features = _matrix(feature_runs, feature_lengths, width)
    texts = (
        _texts(text_runs, failed, text_names, request_ids) if text_names else np.empty((n, 0), dtype=object)
    )
    outputs = _matrix(output_runs, output_lengths, outputs_width)
    versions = np.asarray(versions_, dtype=np.int64)
    if n and versions.min() < 1:
        bad = int(np.argmin(versions))
        raise InvalidBatch(f"record {bad} ({request_ids[bad]!r}) has no model version")
    seconds = np.fromiter(map(_SECONDS, stamps), dtype=np.int64, count=n)
    nanos = np.fromiter(map(_NANOS, stamps), dtype=np.int64, count=n)
    bad_nanos = (nanos < 0) | (nanos >= 1_000_000_000)
    if bad_nanos.any():
        i = int(np.argmax(bad_nanos))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has timestamp.nanos={nanos[i]}; nanos run from 0 to 999999999"
        )
    timestamps = seconds + nanos * 1e-9
    if n and timestamps.min() <= 0:
        i = int(np.argmin(timestamps))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has no valid timestamp (seconds={seconds[i]}, "
            f"nanos={nanos[i]}): a request time is after 1970-01-01"
        )
    latest = LAST_SECOND if now is None else min(now + max_skew_s, LAST_SECOND)
    if n and timestamps.max() > latest:
        i = int(np.argmax(timestamps))
        if now is None or seconds[i] > LAST_SECOND:
            raise InvalidBatch(
                f"record {i} ({request_ids[i]!r}) has timestamp seconds={seconds[i]}, past the last "
                "second a request time can have (9999-12-31T23:59:59Z)"
            )
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has timestamp seconds={seconds[i]}, "
            f"{timestamps[i] - now:.0f} s ahead of the monitor's clock (at most {max_skew_s:g} s: "
            "MLOPS_MONITOR_MAX_CLOCK_SKEW_S)"
        )
    latency_us = np.asarray(latencies, dtype=np.int64)
    if n and latency_us.min() < 0:
        i = int(np.argmin(latency_us))
        raise InvalidBatch(f"record {i} ({request_ids[i]!r}) has latency_us={latency_us[i]}; not negative")
    return BatchRows(
        model=event.model,
        feature_names=names,
        class_labels=classes,
        sampling_rate=rate,
        request_ids=request_ids,
        versions=versions,
        timestamps=timestamps,
        latency_us=latency_us,
        failed=failed,
        features=features,
        text_feature_names=text_names,
        texts=texts,
        outputs=outputs,
        labels=labels,
        roles=np.asarray(roles, dtype=np.int64),
    )


def _texts(runs: list, failed: np.ndarray, names: tuple[str, ...], request_ids: list[str]) -> np.ndarray:
    """[n, T] object array of the records' text features; None rows for failed records without any.
    Text values are only looked up in the profile's vocabularies, never stored, so any string is taken."""
    n, width = len(runs), len(names)
    lengths = np.fromiter(map(len, runs), dtype=np.int64, count=n)
    bad = (lengths != width) & ~(failed & (lengths == 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidBatch(
            f"record {i} ({request_ids[i]!r}) has {lengths[i]} text features; text_feature_names lists {width}"
        )
    texts = np.full((n, width), None, dtype=object)
    if width:
        for i in np.flatnonzero(lengths == width):
            texts[i] = list(runs[i])
    return texts


def predicted_classes(rows: BatchRows, class_labels: list[str]) -> np.ndarray:
    """Index in `class_labels` of each row's predicted class: its label if logged, else the argmax of
    its probabilities (in the batch's class order, which may differ from the model's); -1 for failed
    rows and labels the model does not list."""
    n = len(rows)
    index = {label: i for i, label in enumerate(class_labels)}
    if rows.class_labels and set(rows.class_labels) != set(class_labels):
        raise InvalidBatch(f"class_labels {list(rows.class_labels)} differ from the model's {class_labels}")
    result = np.full(n, -1, dtype=np.int64)
    ok = ~rows.failed
    if ok.any():
        result[ok] = np.argmax(np.nan_to_num(rows.outputs[ok], nan=-np.inf), axis=1)
        if rows.class_labels and list(rows.class_labels) != list(class_labels):
            # The same classes in another order (a converter's own): the model's order counts.
            order = np.asarray([index[label] for label in rows.class_labels], dtype=np.int64)
            result[ok] = order[result[ok]]
    unlabelled = -2
    index[""] = unlabelled
    logged = np.fromiter(map(index.get, rows.labels, itertools.repeat(-1)), dtype=np.int64, count=n)
    labelled = ok & (logged != unlabelled)
    result[labelled] = logged[labelled]
    return result
