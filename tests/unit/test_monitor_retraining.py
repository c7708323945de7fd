"""What a drift alarm asks for: whether a retrain follows (policy, and candidates left alone), the
RetrainRequested written with it, and the fallback to the latest data set. No server: the registry
and the outbox are stand-ins that record what they are asked."""

from __future__ import annotations

import math

from opentelemetry import trace

from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2, training_pb2
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor.alarms import Closing
from services.monitor.clients import VersionInfo
from services.monitor.retraining import REQUESTED_BY, Retraining, _csv_number
from services.monitor.settings import MonitorSettings
from services.monitor.windows import OpenWindow


class _Registry:
    def __init__(self, production: int | Exception | None) -> None:
        self.production = production
        self.asked: list[tuple[str, str]] = []

    async def aliased_version(self, model: str, alias: str) -> pb.ModelVersion | None:
        self.asked.append((model, alias))
        if isinstance(self.production, Exception):
            raise self.production
        return None if self.production is None else pb.ModelVersion(model=model, version=self.production)


class _Outbox:
    def __init__(self) -> None:
        self.added: list = []

    async def add(self, session, message) -> str:
        self.added.append(message)
        return f"event-{len(self.added)}"


class _Database:
    def session(self):
        raise ConnectionError("the database is down")


def _retraining(registry=None, outbox=None, **settings) -> Retraining:
    return Retraining(
        database=_Database(),
        outbox=outbox,
        registry=registry,
        store=None,
        settings=MonitorSettings(metrics_port=None, **settings),
    )


def _closing(*, alarm: bool = True, on_drift: str = "retrain", consecutive: int = 3) -> Closing:
    spec = pb.ModelSpecVersion(model="m", version=1)
    spec.spec.spec.monitor.method, spec.spec.spec.monitor.on_drift = "psi", on_drift
    body = monitor_pb2.DriftWindow(drifted=True, prediction_drift_score=0.5)
    body.features.extend(
        [
            monitoring_pb2.FeatureDrift(feature="a", method="psi", score=0.9, drifted=True),
            monitoring_pb2.FeatureDrift(feature="b", method="psi", score=0.1, drifted=False),
        ]
    )
    return Closing(
        window=OpenWindow("m", 2, 1000, 10, 0, None, "", 500),
        body=body,
        drifted=True,
        consecutive=consecutive,
        alarm=alarm,
        spec=spec,
        info=VersionInfo(pb.ModelVersion(model="m", version=2), None),
        span=trace.INVALID_SPAN,
    )


async def test_an_alarm_asks_for_a_retrain_of_what_production_serves_only():
    assert await _retraining(_Registry(2)).wanted(_closing())
    assert await _retraining(_Registry(None)).wanted(_closing())  # nothing in production yet
    candidate = _closing()
    assert not await _retraining(_Registry(1)).wanted(candidate)
    assert candidate.retrain_skipped == "v2 is a candidate; production serves v1"
    # The registry not answering does not stop the retrain the policy asks for.
    assert await _retraining(_Registry(ConnectionError("registry down"))).wanted(_closing())


async def test_no_retrain_without_an_alarm_or_with_another_policy_and_the_registry_is_not_asked():
    registry = _Registry(2)
    assert not await _retraining(registry).wanted(_closing(alarm=False))
    assert not await _retraining(registry).wanted(_closing(on_drift="alert"))
    assert registry.asked == []


async def test_the_retrain_request_names_its_cause_and_the_drifted_run():
    outbox = _Outbox()
    closing = _closing()
    await _retraining(outbox=outbox).follow_alarm(None, closing, "drift-1", now=1234.5)
    closing.end_spans()
    (request,) = outbox.added  # one intent
    assert isinstance(request, training_pb2.RetrainRequested)
    assert request.model == "m" and request.version == 2 and request.cause_event_id == "drift-1"
    assert request.trigger == common_pb2.TRAINING_TRIGGER_DRIFT and request.requested_by == REQUESTED_BY
    assert request.reason == "psi drift on 1 of 2 features and prediction drift 0.5 for 3 windows"
    assert request.window.start.seconds == 980 and request.window.end.seconds == 1010  # the whole run
    assert request.dataset_version == 0 and request.requested_at.seconds == 1234  # the latest


async def test_assembled_data_is_the_one_intent_a_commit_carrying_the_retrain():
    outbox = _Outbox()
    closing = _closing()
    committed = data_pb2.DataCommitted(dataset="wine", uri="file:///x", sha256="a" * 64, format="csv")
    closing.committed = committed
    closing.dataset_note = "; on wine aaaaaaaaaaaa assembled from the drifted windows"
    await _retraining(outbox=outbox).follow_alarm(None, closing, "drift-1", now=1234.5)
    closing.end_spans()
    (stated,) = outbox.added  # no RetrainRequested beside it: the registry records, the trainer trains
    assert isinstance(stated, data_pb2.DataCommitted) and stated.sha256 == committed.sha256
    intent = stated.retrain
    assert (intent.model, intent.model_version, intent.cause_event_id) == ("m", 2, "drift-1")
    assert intent.trigger == common_pb2.TRAINING_TRIGGER_DRIFT and intent.requested_by == REQUESTED_BY
    assert intent.reason == (
        "psi drift on 1 of 2 features and prediction drift 0.5 for 3 windows"
        "; on wine aaaaaaaaaaaa assembled from the drifted windows"
    )
    assert intent.window.start.seconds == 980 and intent.window.end.seconds == 1010


async def test_a_skipped_or_unasked_retrain_writes_nothing():
    outbox = _Outbox()
    skipped = _closing()
    skipped.retrain_skipped = "v2 is a candidate; production serves v1"
    await _retraining(outbox=outbox).follow_alarm(None, skipped, "drift-1", now=0.0)
    await _retraining(outbox=outbox).follow_alarm(None, _closing(on_drift="alert"), "drift-2", now=0.0)
    assert outbox.added == []


async def test_a_data_set_that_cannot_be_assembled_leaves_the_retrain_on_the_latest_version():
    closing = _closing()
    await _retraining(retrain_dataset="latest").choose_dataset(closing)
    assert closing.committed is None and closing.dataset_note == ""
    await _retraining(retrain_dataset="auto").choose_dataset(closing)
    assert closing.committed is None
    assert (
        closing.dataset_note == "; assembling a data set failed (the database is down), latest version used"
    )


def test_assembled_rows_write_missing_values_as_empty_cells():
    assert _csv_number(math.nan) == "" and _csv_number(None) == ""
    assert _csv_number(1) == "1.0" and _csv_number(0.1) == "0.1"
