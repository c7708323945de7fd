"""The monitor's profiling of whatever tabular inputs a model's signature has: numeric inputs from
`features`, text inputs from `text_features`, matched by name to the training profile's numeric and
categorical columns (the label never a feature); what one side lacks is left out and said. Pure logic."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from mlops.events.v1 import monitoring_pb2
from mlops.profile import ReferenceProfile, histogram
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor.batch import InvalidBatch, decode_batch, predicted_classes
from services.monitor.clients import VersionInfo
from services.monitor.counting import Prepared, count_batch
from services.monitor.inputs import match_inputs
from services.monitor.reference import Judgement, Reference

COLOURS = ["red", "green", "blue"]
CLASSES = ["no", "yes"]


def _reference(*, with_label: bool = False) -> Reference:
    """A profile of the data set's columns: `age` numeric, `colour` text, and maybe the label."""
    rng = np.random.default_rng(0)
    n = 3000
    columns = [rng.normal(40, 10, n), rng.integers(0, 3, n).astype(float)]
    names = ["age", "colour"]
    if with_label:
        columns.append(rng.integers(0, 2, n).astype(float))
        names.append("target")
    p = rng.uniform(0, 1, n)
    profile = ReferenceProfile.compute(
        task="classification",
        features=np.column_stack(columns),
        feature_names=names,
        categorical={"colour": COLOURS, **({"target": CLASSES} if with_label else {})},
        predictions=np.column_stack([p, 1 - p]),
        class_labels=CLASSES,
    )
    return Reference.of(ReferenceProfile.from_json(profile.to_json()), "0" * 64)


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _batch(
    ages: list[float], texts: list[list[str]], *, numeric=("age",), text=("colour", "city"), classes=CLASSES
) -> monitoring_pb2.InferenceLogged:
    batch = monitoring_pb2.InferenceLogged(
        model="m", feature_names=list(numeric), text_feature_names=list(text), class_labels=list(classes)
    )
    for i, (age, row) in enumerate(zip(ages, texts, strict=True)):
        batch.records.add(
            request_id=f"r{i}",
            version=1,
            timestamp=_stamp(1000.0 + i * 0.001),
            features=[age] if numeric else [],
            text_features=row,
            outputs=[0.7, 0.3],
            latency_us=1000,
        )
    return batch


def test_text_inputs_are_coded_by_the_profiles_vocabulary_and_numeric_ones_binned():
    reference = _reference()
    colours = ["red", "green", "blue", "purple", "", "red"] * 50
    ages = np.linspace(10, 80, len(colours)).tolist()
    rows = decode_batch(_batch(ages, [[c, "paris"] for c in colours]))
    matched = match_inputs(rows, reference)
    assert matched.present.tolist() == [True, True]
    assert matched.missing == () and matched.extra == ("city",)
    assert matched.matrix[:6, 1].tolist()[:4] == [0.0, 1.0, 2.0, -1.0] and np.isnan(matched.matrix[4, 1])
    counts = reference.count(matched.matrix, np.zeros(len(colours), dtype=np.int64), matched.present)
    age, colour = reference.features
    assert (
        counts[age.offset : age.offset + age.size].tolist()
        == histogram(np.asarray(ages), age.edges.tolist())[0]
    )
    # red, green, blue, then unseen (purple), then missing (the empty value)
    assert counts[colour.offset : colour.offset + colour.size + 2].tolist() == [100, 50, 50, 50, 50]


def test_a_profile_feature_fed_as_text_is_read_as_a_number_and_the_label_is_never_a_feature():
    reference = _reference(with_label=True)
    rows = decode_batch(
        _batch(
            [0.0] * 3,
            [["41.5", "red", "yes"], ["x", "blue", "no"], ["39", "green", "no"]],
            numeric=(),
            text=("age", "colour", "target"),
        )
    )
    matched = match_inputs(rows, reference, label="target")
    assert matched.matrix[:, 0].tolist()[0] == 41.5 and np.isnan(matched.matrix[1, 0])
    assert matched.matrix[:, 1].tolist() == [0.0, 2.0, 1.0]
    assert matched.present.tolist() == [True, True, False]  # the label column is left out
    assert matched.missing == () and matched.extra == ()


def test_a_batch_without_a_profile_feature_is_counted_on_the_others_and_the_gap_is_said():
    reference = _reference()
    rows = decode_batch(_batch([40.0] * 300, [["paris"]] * 300, text=("city",)))
    prepared = Prepared(rows, 10, "classification", {1: VersionInfo(pb.ModelVersion(), reference)}, 0, None)
    counted = count_batch(prepared, store_predictions=True)
    assert counted.unmatched == {1: (("colour",), ("city",))}
    (window,) = counted.windows
    result = reference.judge(
        window.counts, window.samples, Judgement(method="chi2", threshold=0.05, min_samples=10)
    )
    assert [f.feature for f in result.features] == ["age"]  # colour is not judged as an empty column
    # the stored rows are in the profile's order, NaN where the log had nothing
    stored = np.frombuffer(counted.predictions[0].features, dtype=np.float64).reshape(-1, 2)
    assert (stored[:, 0] == 40.0).all() and np.isnan(stored[:, 1]).all()


def test_text_features_that_contradict_their_names_refuse_the_batch():
    batch = _batch([1.0, 2.0], [["red", "paris"], ["red"]])
    with pytest.raises(
        InvalidBatch, match=r"record 1 \('r1'\) has 1 text features; text_feature_names lists 2"
    ):
        decode_batch(batch)
    batch = _batch([1.0], [["red", "paris"]], text=("age", "city"))
    with pytest.raises(InvalidBatch, match="'age' in both feature_names and text_feature_names"):
        decode_batch(batch)


def test_probabilities_in_another_class_order_and_labels_without_probabilities_are_counted():
    batch = _batch([1.0, 2.0], [["red", "x"], ["blue", "y"]], classes=["yes", "no"])
    rows = decode_batch(batch)  # outputs [0.7, 0.3]: "yes" in the batch's order
    assert predicted_classes(rows, CLASSES).tolist() == [1, 1]
    label_only = monitoring_pb2.InferenceLogged(model="m", class_labels=CLASSES)
    label_only.records.add(request_id="a", version=1, timestamp=_stamp(1000.0), label="yes")
    label_only.records.add(request_id="b", version=1, timestamp=_stamp(1000.0), label="no")
    assert predicted_classes(decode_batch(label_only), CLASSES).tolist() == [1, 0]


def test_a_profile_of_data_set_columns_leaves_the_label_out_and_judges_text_logged_as_text():
    n = 600
    rng = np.random.default_rng(3)
    colour = rng.choice(["red", "green", "blue"], size=n).astype(object)
    colour[:6] = None
    p = rng.uniform(0, 1, n)
    profile = ReferenceProfile.of_columns(
        {"age": rng.normal(40, 10, n), "colour": colour, "target": rng.choice(CLASSES, size=n)},
        task="classification",
        label="target",
        predictions=np.column_stack([p, 1 - p]),
        class_labels=CLASSES,
    )
    assert profile.feature_names == ["age", "colour"]
    (categorical,) = profile.categorical
    assert categorical.categories == ["blue", "green", "red"] and categorical.missing == 6
    assert sum(categorical.counts) == n - 6
    reference = Reference.of(ReferenceProfile.from_json(profile.to_json()), "0" * 64)
    rows = decode_batch(_batch([40.0] * 3, [["red", "x"], ["blue", "x"], ["", "x"]]))
    matched = match_inputs(rows, reference, label="target")
    assert matched.matrix[:2, 1].tolist() == [2.0, 0.0] and np.isnan(matched.matrix[2, 1])
