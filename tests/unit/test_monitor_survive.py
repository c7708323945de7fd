"""Records no producer should send, and state keyed by names producers choose: the monitor refuses
the first with a reason that names the problem and keeps the second within its bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from aiokafka import ConsumerRecord
from prometheus_client import Gauge

from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor import prometheus
from services.monitor.batch import InvalidBatch, decode_batch
from services.monitor.clients import ModelCatalog, VersionInfo
from services.monitor.core import MonitorCore
from services.monitor.counting import CountedBatch, HealthDelta, Prepared
from services.monitor.ingest import _count_all, _decode_all
from services.monitor.lru import LRU
from services.monitor.performance import PerformanceTracker
from services.monitor.settings import MonitorSettings

NOW = 1_700_000_000.0


def _batch(n: int = 3, seconds: int = int(NOW), nanos: int = 0) -> monitoring_pb2.InferenceLogged:
    batch = monitoring_pb2.InferenceLogged(
        model="m", feature_names=["a", "b"], class_labels=["x", "y"], sampling_rate=1.0
    )
    for i in range(n):
        record = batch.records.add(
            request_id=f"r{i}", version=1, features=[1.0, 2.0], outputs=[0.3, 0.7], label="y", latency_us=10
        )
        record.timestamp.seconds = seconds
        record.timestamp.nanos = nanos
    return batch


# --- decode guards --------------------------------------------------------------------------------


def test_a_timestamp_past_the_calendar_is_refused_not_raised_later():
    batch = _batch()
    batch.records[1].timestamp.seconds = 10**12  # year 33658: no datetime holds it
    with pytest.raises(InvalidBatch, match=r"record 1 \('r1'\) has timestamp seconds=1000000000000"):
        decode_batch(batch)


def test_a_timestamp_ahead_of_the_clock_is_refused_with_the_skew_allowed():
    batch = _batch()
    batch.records[2].timestamp.seconds = int(NOW) + 3600
    with pytest.raises(
        InvalidBatch, match=r"record 2 .* 3600 s ahead of the monitor's clock .*at most 300 s"
    ):
        decode_batch(batch, now=NOW, max_skew_s=300)
    batch.records[2].timestamp.seconds = int(NOW) + 100  # within the skew: counted
    assert decode_batch(batch, now=NOW, max_skew_s=300).timestamps.max() == NOW + 100


def test_timestamps_before_the_epoch_or_with_invalid_nanos_are_refused():
    batch = _batch()
    batch.records[0].timestamp.seconds = -5
    with pytest.raises(InvalidBatch, match=r"record 0 \('r0'\) has no valid timestamp .*seconds=-5"):
        decode_batch(batch)
    batch = _batch(nanos=1_500_000_000)
    with pytest.raises(InvalidBatch, match=r"record 0 .* timestamp.nanos=1500000000; .*0 to 999999999"):
        decode_batch(batch)
    batch = _batch(nanos=-1)
    with pytest.raises(InvalidBatch, match=r"timestamp.nanos=-1"):
        decode_batch(batch)


@pytest.mark.parametrize("rate", [math.nan, 1e-300, -0.5, math.inf])
def test_an_absurd_sampling_rate_is_refused(rate):
    batch = _batch()
    batch.sampling_rate = rate
    with pytest.raises(InvalidBatch, match=r"sampling_rate must be in \[1e-06, 1\]"):
        decode_batch(batch)


def test_names_postgresql_cannot_store_or_that_no_model_has_are_refused():
    batch = _batch()
    batch.class_labels[1] = "y\0"
    with pytest.raises(InvalidBatch, match=r"class_labels\[1\] .* NUL"):
        decode_batch(batch)
    batch = _batch()
    batch.feature_names[0] = "a\0"
    with pytest.raises(InvalidBatch, match=r"feature_names\[0\] .* NUL"):
        decode_batch(batch)
    batch = _batch()
    batch.model = "m\0"
    with pytest.raises(InvalidBatch, match=r"InferenceLogged.model .* NUL"):
        decode_batch(batch)
    batch.model = "m" * 300
    with pytest.raises(InvalidBatch, match=r"InferenceLogged.model is 300 characters long; at most 253"):
        decode_batch(batch)


def test_a_negative_latency_is_refused():
    batch = _batch()
    batch.records[1].latency_us = -3
    with pytest.raises(InvalidBatch, match=r"record 1 \('r1'\) has latency_us=-3"):
        decode_batch(batch)


def _record(value: bytes, offset: int = 0) -> ConsumerRecord:
    return ConsumerRecord(
        topic="mlops.inference.logged",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"m",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=[("ce_type", b"mlops.inference.logged.v1")],
    )


def test_decoding_a_poll_gives_each_record_its_rows_or_its_reason():
    poison = _batch()
    poison.records[0].timestamp.seconds = 10**12
    good = _batch(4)
    results = _decode_all(
        [_record(poison.SerializeToString()), _record(b"\xff\xff", 1), _record(good.SerializeToString(), 2)],
        "",
        now=NOW,
        max_skew_s=300,
    )
    assert isinstance(results[0], InvalidBatch) and "seconds=1000000000000" in results[0].message
    assert isinstance(results[1], InvalidArgument) and "does not parse" in results[1].message
    assert len(results[2]) == 4


def test_an_unexpected_error_counting_one_batch_is_that_batch_s_result_not_the_loop_s():
    rows = decode_batch(_batch(3))
    rows.timestamps[:] = 1e12  # what decode now refuses: counting it raises ValueError from datetime
    version = pb.ModelVersion(model="m", version=1)
    version.signature.class_labels.extend(["x", "y"])
    poison = Prepared(rows, 10, "classification", {1: VersionInfo(version, None)}, 0, None)
    fine = Prepared(decode_batch(_batch(2)), 10, "classification", {1: VersionInfo(version, None)}, 0, None)
    results = _count_all([poison, fine], store_predictions=True)
    assert isinstance(results[0], ValueError) and "out of range" in str(results[0])
    assert isinstance(results[1], CountedBatch) and results[1].rows == 2


async def test_ground_truth_with_an_absurd_field_is_refused_before_the_database():
    settings = MonitorSettings(metrics_port=None)
    tracker = PerformanceTracker(database=None, outbox=None, catalog=None, core=None, settings=settings)
    bad = [
        (monitoring_pb2.GroundTruthLogged(model="m", request_id="r\0", label="y"), r"request_id .* NUL"),
        (monitoring_pb2.GroundTruthLogged(model="m", request_id="r", label="y\0"), r"label .* NUL"),
        (monitoring_pb2.GroundTruthLogged(model="m\0", request_id="r", label="y"), r"model .* NUL"),
    ]
    future = monitoring_pb2.GroundTruthLogged(model="m", request_id="r", label="y")
    future.observed_at.seconds = 10**12
    bad.append((future, r"observed_at seconds=1000000000000 .* ahead of the monitor's clock"))
    for event, reason in bad:
        with pytest.raises(InvalidArgument, match=reason):
            await tracker.record_truth(event, event_time="2024-01-01T00:00:00Z", session=None)
    with pytest.raises(InvalidArgument, match=r"ce_time 'yesterday' is not an RFC 3339 time"):
        await tracker.record_truth(
            monitoring_pb2.GroundTruthLogged(model="m", request_id="r", label="y"),
            event_time="yesterday",
            session=None,
        )


# --- bounds ---------------------------------------------------------------------------------------


def test_an_lru_keeps_its_bound_and_the_newest_entries():
    evicted = []
    lru: LRU[int, str] = LRU(3, on_evict=lambda key, value: evicted.append(key))
    for i in range(10):
        lru[i] = str(i)
    assert len(lru) == 3 and list(lru) == [7, 8, 9] and evicted == list(range(7))
    assert lru.get(7) == "7"  # read: now the newest
    lru[10] = "10"
    assert list(lru) == [9, 7, 10]  # 8, the least recently used, went
    with pytest.raises(ValueError, match="bound must be 1 or more"):
        LRU(0)


class _Registry:
    """The registry as the catalog sees it: knows one model, and version 1 of it without a profile."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def model_spec(self, model: str) -> pb.ModelSpecVersion:
        self.asked.append(model)
        if model != "known":
            raise NotFound(f"no model {model}")
        return pb.ModelSpecVersion(model=model)

    async def model_version(self, model: str, version: int) -> pb.ModelVersion:
        if version > 1000:
            raise NotFound(f"no version {version}")
        return pb.ModelVersion(model=model, version=version)


async def test_the_catalog_remembers_at_most_its_bound_of_models_versions_and_locks():
    catalog = ModelCatalog(_Registry(), None, spec_ttl_s=60, unknown_ttl_s=60, max_models=10, max_versions=5)
    for i in range(50):
        with pytest.raises(NotFound):
            await catalog.spec(f"made-up-{i}")
    assert len(catalog._specs) == 10 and len(catalog._locks) <= 10 + 5
    assert "made-up-49" in catalog._specs and "made-up-0" not in catalog._specs
    for version in range(1, 21):
        await catalog.version("known", version)
    for version in range(2000, 2030):  # versions no registry has: each was a lock of its own
        with pytest.raises(NotFound):
            await catalog.version("known", version)
    assert len(catalog._versions) == 5 and catalog.cached_version("known", 20) is not None
    assert len(catalog._locks) <= 15


def _core(**settings) -> MonitorCore:
    return MonitorCore(
        database=None,
        outbox=None,
        catalog=ModelCatalog(_Registry(), None, spec_ttl_s=60, unknown_ttl_s=60),
        registry=None,
        store=None,
        settings=MonitorSettings(metrics_port=None, **settings),
        consumer_group="g",
    )


def _health_only(model: str, version: int) -> CountedBatch:
    seconds = np.array([int(NOW)], dtype=np.int64)
    delta = HealthDelta(
        model, version, seconds, np.array([10]), np.array([False]), 1.0, None, 0, np.array([1.0])
    )
    return CountedBatch(health=[delta], rows=1, model=model)


def test_per_version_state_stays_within_max_tracked_versions():
    core = _core(max_tracked_versions=4)
    for version in range(1, 11):
        core.merge(_health_only("m", version), now=NOW)
        core.closed[("m", version)] = 0
        core.live_metrics[("m", version)] = {"accuracy": 1.0}
    for state in (core.health, core.closed, core.live_metrics):
        assert len(state) == 4 and ("m", 10) in state and ("m", 6) not in state


def test_prometheus_series_stay_within_their_bound_and_evicted_versions_leave_the_endpoint():
    gauge = Gauge("mlops_test_bounded_series", "test", ["model"], registry=None)
    series = prometheus.BoundedSeries(5)
    for i in range(12):
        series.labels(gauge, f"model-{i}").set(i)
    names = {s.labels["model"] for s in next(iter(gauge.collect())).samples}
    assert names == {f"model-{i}" for i in range(7, 12)} and len(series) == 5

    core = _core(max_tracked_versions=2)
    for version in range(1, 5):
        core.merge(_health_only("bounded", version), now=NOW)
        core.publish_gauges()  # every version exported while it is tracked
    exported = {
        s.labels["version"]
        for s in next(iter(prometheus.ERROR_RATE.collect())).samples
        if s.labels["model"] == "bounded"
    }
    assert exported == {"3", "4"}


# --- the ingest loop ------------------------------------------------------------------------------


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def publish_encoded(self, topic: str, key, value: bytes, headers) -> None:
        self.sent.append((topic, value, headers))


class _Core:
    """The core's `prepare`, failing as told: `errors` are raised in turn, then it answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)

    async def prepare(self, rows, *, partition: int, traceparent: str | None):
        if self.errors:
            raise self.errors.pop(0)
        return Prepared(rows, 10, "classification", {}, partition, traceparent)


def _ingest(core: _Core, publisher: _Publisher):
    from mlops.settings import BusSettings, KafkaSettings
    from services.monitor.ingest import InferenceLogIngest

    return InferenceLogIngest(
        KafkaSettings(),
        BusSettings(retry_backoff_ms=0),
        core=core,
        publisher=publisher,
        settings=MonitorSettings(metrics_port=None),
    )


async def test_an_unexpected_error_preparing_a_batch_dead_letters_it_with_the_error_text():
    publisher = _Publisher()
    ingest = _ingest(_Core(KeyError("no such slot")), publisher)
    record = _record(_batch().SerializeToString(), offset=7)
    assert await ingest._prepare(record, decode_batch(_batch())) is None
    ((topic, value, headers),) = publisher.sent
    assert topic == "mlops.inference.logged.dlq" and value == record.value
    assert dict(headers)["mlops_dlq_reason"] == b"KeyError: 'no such slot'"
    assert dict(headers)["ce_type"] == b"mlops.inference.logged.v1"  # the original headers kept


async def test_an_outage_while_preparing_a_batch_is_waited_out_not_dead_lettered():
    publisher = _Publisher()
    ingest = _ingest(_Core(ConnectionError("registry down"), ConnectionError("still down")), publisher)
    prepared = await ingest._prepare(_record(_batch().SerializeToString()), decode_batch(_batch()))
    assert prepared is not None and len(prepared.rows) == 3 and publisher.sent == []


async def test_a_traceparent_is_kept_only_as_the_canonical_form_of_a_valid_context():
    publisher = _Publisher()
    ingest = _ingest(_Core(), publisher)
    trace_id, span_id = "ab" * 16, "cd" * 8
    record = _record(_batch().SerializeToString())
    record.headers = [("traceparent", f"01-{trace_id}-{span_id}-00-\0junk".encode())]
    prepared = await ingest._prepare(record, decode_batch(_batch()))
    assert prepared.traceparent == f"00-{trace_id}-{span_id}-00"  # no NUL for jsonb to refuse
    record.headers = [("traceparent", b"not a traceparent\0")]
    assert (await ingest._prepare(record, decode_batch(_batch()))).traceparent is None
