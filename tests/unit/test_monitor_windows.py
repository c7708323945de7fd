"""Window accumulation, judgement, alarm runs, health figures and live metrics: pure logic only."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from mlops.events.v1 import common_pb2, monitoring_pb2
from mlops.profile import ReferenceProfile, histogram
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor import stats
from services.monitor.batch import InvalidBatch, decode_batch, predicted_classes
from services.monitor.clients import VersionInfo
from services.monitor.counting import Prepared, count_batch
from services.monitor.health import VersionHealth, percentile_us
from services.monitor.performance import Sums, gate_bound, live_metrics
from services.monitor.predictions import CLASSES as PREDICTED
from services.monitor.predictions import TIMES, PredictionBatch, class_at, value_at
from services.monitor.reference import Judgement, Reference, advance_run

FEATURES = ["a", "b", "colour"]
CLASSES = ["x", "y"]


def training(rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.column_stack([rng.normal(0, 1, n), rng.exponential(2.0, n), rng.integers(0, 3, n)])
    probabilities = np.column_stack([rng.uniform(0, 1, n)])
    probabilities = np.hstack([probabilities, 1 - probabilities])
    return matrix, probabilities


@pytest.fixture
def reference() -> Reference:
    rng = np.random.default_rng(0)
    matrix, probabilities = training(rng)
    profile = ReferenceProfile.compute(
        task="classification",
        features=matrix,
        feature_names=FEATURES,
        categorical={"colour": ["red", "green", "blue"]},
        predictions=probabilities,
        class_labels=CLASSES,
    )
    return Reference.of(ReferenceProfile.from_json(profile.to_json()), "0" * 64)


def test_counts_of_a_window_equal_the_profile_histograms_of_its_rows(reference):
    rng = np.random.default_rng(1)
    matrix, probabilities = training(rng, 500)
    matrix[:5, 0] = np.nan
    matrix[5, 2] = 7  # unseen category
    predicted = probabilities.argmax(axis=1)
    counts = reference.count(matrix, predicted)
    a, colour = reference.features[0], reference.features[2]
    expected, missing = histogram(matrix[:, 0], a.edges.tolist())
    assert counts[a.offset : a.offset + a.size].tolist() == expected
    assert counts[a.offset + a.size] == missing == 5
    assert counts[colour.offset + colour.size] == 1  # unseen
    assert counts[reference.prediction_offset :].tolist() == np.bincount(predicted, minlength=2).tolist()
    # Two halves counted apart add up to the whole: a window is summarised as it fills.
    halves = reference.count(matrix[:200], predicted[:200]) + reference.count(matrix[200:], predicted[200:])
    assert halves.tolist() == counts.tolist()


def test_in_distribution_window_is_not_drifted_and_a_shifted_one_is(reference):
    rng = np.random.default_rng(2)
    rule = Judgement(method="psi", threshold=0.2, min_samples=200)
    matrix, probabilities = training(rng, 1000)
    same = reference.judge(reference.count(matrix, probabilities.argmax(axis=1)), 1000, rule)
    assert same.judged and not same.drifted
    assert {f.feature for f in same.features} == set(FEATURES)
    assert {(f.feature, f.method) for f in same.statistics} == {
        ("a", "psi"),
        ("a", "ks"),
        ("b", "psi"),
        ("b", "ks"),
        ("colour", "psi"),
        ("colour", "chi2"),
    }
    matrix[:, 0] += 1.5
    shifted = reference.judge(reference.count(matrix, probabilities.argmax(axis=1)), 1000, rule)
    assert shifted.drifted
    drifted = {f.feature for f in shifted.features if f.drifted}
    assert drifted == {"a"}


def test_p_value_methods_use_a_bonferroni_corrected_threshold(reference):
    rng = np.random.default_rng(3)
    matrix, probabilities = training(rng, 2000)
    matrix[:, 1] *= 1.15
    counts = reference.count(matrix, probabilities.argmax(axis=1))
    ks = reference.judge(counts, 2000, Judgement(method="ks", threshold=0.05, min_samples=10))
    b = next(f for f in ks.features if f.feature == "b")
    assert b.method == "ks"
    assert b.drifted == (b.p_value < 0.05 / 3)
    raw = reference.judge(
        counts, 2000, Judgement(method="ks", threshold=0.05, min_samples=10, p_value_correction="none")
    )
    assert next(f for f in raw.features if f.feature == "b").drifted == (b.p_value < 0.05)


def test_a_window_below_min_samples_is_not_judged(reference):
    rng = np.random.default_rng(4)
    matrix, probabilities = training(rng, 50)
    matrix[:, 0] += 5
    result = reference.judge(
        reference.count(matrix, probabilities.argmax(axis=1)), 50, Judgement("psi", 0.2, 200)
    )
    assert not result.judged and not result.drifted and result.features[0].score > 1


def test_the_alarm_needs_consecutive_judged_windows_and_respects_cooldown_and_policy():
    run = dict(needed=2, last_alarm_at=None, now=100.0, cooldown_s=60.0, action="retrain")
    assert advance_run(0, judged=True, crossed=True, **run) == (1, False)
    assert advance_run(1, judged=True, crossed=True, **run) == (2, True)
    assert advance_run(1, judged=True, crossed=False, **run) == (0, False)
    assert advance_run(1, judged=False, crossed=False, **run) == (1, False)  # too small: run unchanged
    assert advance_run(2, judged=True, crossed=True, **{**run, "last_alarm_at": 90.0}) == (3, False)
    assert advance_run(2, judged=True, crossed=True, **{**run, "last_alarm_at": 30.0}) == (3, True)
    assert advance_run(1, judged=True, crossed=True, **{**run, "action": "none"}) == (2, False)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _batch(n: int, start: float, *, version: int = 1, fail_every: int = 0) -> monitoring_pb2.InferenceLogged:
    rng = np.random.default_rng(5)
    batch = monitoring_pb2.InferenceLogged(
        model="m", feature_names=["colour", "a", "b"], class_labels=CLASSES, sampling_rate=0.5
    )
    for i in range(n):
        failed = fail_every and i % fail_every == 0
        p = rng.uniform()
        batch.records.add(
            request_id=f"r{i}",
            version=version,
            timestamp=_timestamp(start + i * 0.01),
            features=[] if failed else [float(i % 3), rng.normal(), rng.exponential(2)],
            outputs=[] if failed else [p, 1 - p],
            label="" if failed else CLASSES[int(p < 0.5)],
            latency_us=1000 + i,
            error="boom" if failed else "",
        )
    return batch


def test_decode_refuses_a_record_that_contradicts_its_batch():
    batch = _batch(3, 1000.0)
    batch.records[1].features.append(1.0)
    with pytest.raises(InvalidBatch, match=r"record 1 \('r1'\) has 4 features; feature_names lists 3"):
        decode_batch(batch)
    batch = _batch(3, 1000.0)
    batch.records[2].outputs.pop()
    with pytest.raises(InvalidBatch, match=r"record 2 .* has 1 outputs; expected 2"):
        decode_batch(batch)
    with pytest.raises(InvalidBatch, match="sampling_rate"):
        decode_batch(monitoring_pb2.InferenceLogged(model="m", sampling_rate=2))
    batch = _batch(3, 1000.0)
    batch.records[2].request_id = "r\0"  # PostgreSQL stores no NUL: the commit would fail forever
    with pytest.raises(InvalidBatch, match=r"record 2 .* NUL character in its request id"):
        decode_batch(batch)


def test_decode_reads_every_column_as_the_protobuf_runtime_does():
    batch = _batch(50, 1000.0, fail_every=7)
    rows = decode_batch(batch)
    ok = ~rows.failed
    assert rows.failed.sum() == 8
    assert rows.features[ok].tolist() == [list(r.features) for r in batch.records if not r.error]
    assert rows.outputs[ok].tolist() == [list(r.outputs) for r in batch.records if not r.error]
    assert np.isnan(rows.features[~ok]).all() and np.isnan(rows.outputs[~ok]).all()
    assert rows.request_ids == [r.request_id for r in batch.records]
    assert rows.labels == [r.label for r in batch.records]
    assert rows.latency_us.tolist() == [r.latency_us for r in batch.records]
    assert rows.timestamps.tolist() == pytest.approx([1000.0 + i * 0.01 for i in range(50)])


def test_decode_reads_doubles_a_producer_did_not_pack():
    def varint(value: int) -> bytes:
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes([*out, value])

    def delimited(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    def doubles(number: int, values: list[float]) -> bytes:  # one fixed64 field per value
        return b"".join(varint(number << 3 | 1) + np.float64(v).tobytes() for v in values)

    record = (
        delimited(1, b"r0")
        + varint(2 << 3)
        + varint(1)
        + delimited(3, varint(1 << 3) + varint(1000))
        + doubles(4, [0.0, 1.5, -2.25])
        + doubles(5, [0.25, 0.75])
        + delimited(6, b"y")
    )
    wire = delimited(1, b"m") + b"".join(delimited(2, n.encode()) for n in FEATURES) + delimited(4, record)
    batch = monitoring_pb2.InferenceLogged.FromString(wire + delimited(3, b"x") + delimited(3, b"y"))
    rows = decode_batch(batch)
    assert rows.features.tolist() == [[0.0, 1.5, -2.25]] and rows.outputs.tolist() == [[0.25, 0.75]]
    assert rows.timestamps.tolist() == [1000.0] and rows.labels == ["y"]


def test_count_batch_maps_columns_by_name_splits_windows_and_skips_failures(reference):
    rows = decode_batch(_batch(300, 1000.0, fail_every=10))
    version = pb.ModelVersion(model="m", version=1)
    version.signature.class_labels.extend(CLASSES)
    prepared = Prepared(rows, 2, "classification", {1: VersionInfo(version, reference)}, 0, None)
    counted = count_batch(prepared, store_predictions=True)
    assert sorted(w.start for w in counted.windows) == [1000, 1002]
    assert sum(w.samples for w in counted.windows) == 270
    (stored,) = counted.predictions
    ok = ~rows.failed
    assert (stored.model, stored.version, stored.width) == ("m", 1, 3)
    assert stored.request_ids == [r for r, good in zip(rows.request_ids, ok, strict=True) if good]
    assert list(stored.positions) == list(range(270))
    assert np.frombuffer(stored.timestamps, TIMES).tolist() == rows.timestamps[ok].tolist()
    assert stored.class_labels == CLASSES and stored.predictions is None
    predicted = [CLASSES[i] for i in np.frombuffer(stored.classes, PREDICTED)]
    assert predicted == [label for label, good in zip(rows.labels, ok, strict=True) if good]
    assert np.frombuffer(stored.features).reshape(-1, 3).tolist() == rows.features[ok][:, [1, 2, 0]].tolist()
    whole = sum(w.counts for w in counted.windows)
    matrix = rows.features[ok][:, [1, 2, 0]]  # profile order a, b, colour
    assert whole.tolist() == reference.count(matrix, predicted_classes(rows, CLASSES)[ok]).tolist()
    health = counted.health[0]
    assert health.failed.sum() == 30 and health.sampling_rate == 0.5


def test_a_stored_batch_locates_each_request_id_at_its_first_row():
    stored = PredictionBatch.of(
        model="m",
        version=1,
        logged_at=datetime.fromtimestamp(1000, UTC),
        request_ids=["a", "b", "a", "c"],
        timestamps=np.array([1000.0, 1000.5, 1001.0, 1001.5]),
        class_labels=CLASSES,
        classes=np.array([1, 0, 1, -1]),
        predictions=None,
        features=np.zeros((4, 2)),
    )
    assert list(zip(stored.request_ids, stored.positions, strict=True)) == [("a", 0), ("b", 1), ("c", 3)]
    # What the join's substring of one row's element gives back.
    codes = [stored.classes[4 * p : 4 * p + 4] for p in range(4)]
    assert [class_at(stored.class_labels, code) for code in codes] == ["y", "x", "y", None]
    values = np.array([2.5, -1.0]).astype(">f8").tobytes()
    assert [value_at(values[8 * p : 8 * p + 8]) for p in range(2)] == [2.5, -1.0]
    assert value_at(None) is None and class_at(None, b"\0\0\0\0") is None


def test_count_batch_skips_a_profile_feature_the_batch_lacks_and_says_which(reference):
    batch = _batch(300, 1000.0)
    batch.feature_names[2] = "other"
    rows = decode_batch(batch)
    prepared = Prepared(rows, 2, "classification", {1: VersionInfo(pb.ModelVersion(), reference)}, 0, None)
    counted = count_batch(prepared, store_predictions=False)
    assert counted.unmatched == {1: (("b",), ("other",))}
    b = reference.features[1]
    counts = sum(w.counts for w in counted.windows)
    assert not counts[b.offset : b.offset + b.reference.size].any()
    result = reference.judge(counts, 300, Judgement(method="psi", threshold=0.2, min_samples=10))
    assert [f.feature for f in result.features] == ["a", "colour"]


def test_health_scales_counts_by_the_sampling_rate_and_finds_percentiles():
    board = VersionHealth(horizon_s=600)
    latency = np.concatenate([np.full(980, 2_000), np.full(20, 80_000)])
    failed = np.zeros(1000, dtype=bool)
    failed[:10] = True
    seconds = np.repeat(np.arange(1000, 1010), 100)
    board.add(seconds, latency, failed, 0.25, np.zeros(1000, dtype=np.int64), 2, None, now=1010)
    figures = board.figures(1000, 1010)
    assert figures.sampled == 1000 and figures.requests == 4000 and figures.errors == 40
    assert figures.error_rate == pytest.approx(0.01)
    assert figures.latency_p50_ms == pytest.approx(2.0, rel=0.06)
    assert figures.latency_p99_ms == pytest.approx(80.0, rel=0.06)
    assert board.figures(1005, 1010).sampled == 500
    assert board.figures(2000, 2010).requests == 0


def test_percentile_of_a_single_value_is_within_its_bin():
    from services.monitor.health import LATENCY_EDGES_US

    histogram_ = np.bincount(np.searchsorted(LATENCY_EDGES_US, [12_345] * 10, side="right"), minlength=322)
    assert percentile_us(histogram_, 0.99) == pytest.approx(12_345, rel=0.06)


def test_live_metrics_and_the_gates_bound():
    assert live_metrics("classification", Sums(labelled=10, correct=7)) == pytest.approx(
        {"accuracy": 0.7, "error_rate": 0.3}
    )
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.5, 2.0, 2.0, 4.0])
    error = predicted - truth
    sums = Sums(4, 0, float((error**2).sum()), float(np.abs(error).sum()), truth.sum(), (truth**2).sum())
    metrics = live_metrics("regression", sums)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(error)))
    assert metrics["r2"] == pytest.approx(1 - (error**2).sum() / ((truth - truth.mean()) ** 2).sum())
    bound = gate_bound(pb.GateSpec(metric="accuracy", min=0.85))
    assert bound.comparison == common_pb2.COMPARISON_GREATER_OR_EQUAL and bound.crossed(0.8)
    assert not bound.crossed(0.9)
    assert gate_bound(pb.GateSpec(metric="rmse", max=10)).crossed(11)
    assert gate_bound(pb.GateSpec(metric="roc_auc", min=0.9)) is None


def test_prediction_psi_of_regression_outputs_on_baseline_edges():
    from services.monitor.health import prediction_psi_values

    rng = np.random.default_rng(6)
    baseline = rng.normal(0, 1, 2000)
    edges = np.quantile(baseline, np.linspace(0, 1, 11))
    assert prediction_psi_values(rng.normal(0, 1, 2000), baseline, edges) < 0.05
    assert prediction_psi_values(rng.normal(1, 1, 2000), baseline, edges) > 0.3
    assert stats.psi(np.array([1, 1]), np.array([1, 1])) == 0


def test_a_window_is_due_after_its_grace_once_its_partition_is_read_to_the_end():
    from services.monitor.core import MonitorCore, OpenWindow
    from services.monitor.settings import MonitorSettings

    core = MonitorCore(
        database=None,
        outbox=None,
        catalog=None,
        registry=None,
        store=None,
        settings=MonitorSettings(window_grace_ms=500, metrics_port=None),
        consumer_group="g",
    )
    window = OpenWindow("m", 1, 100, 10, 2, None, "")
    core.windows[("m", 1, 100)] = window
    assert core.due(110.4) == []  # within the grace
    assert core.due(200.0) == []  # its partition's backlog not read yet (after a restart, say)
    core.watermarks[2] = 110.2
    assert core.due(200.0) == []  # a later row, but not later than the grace
    core.watermarks[2] = 110.6
    assert core.due(200.0) == [window]
    core.watermarks.clear()
    core.caught_up[2] = True
    assert core.due(110.6) == [window]
    plan = core.snapshot(110.6)
    assert plan.closing == [window] and core.windows == {} and core.closed[("m", 1)] == 100
