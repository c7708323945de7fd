"""A model trained outside the platform (spec.training.external): an alarm whose policy says retrain
asks for a new model instead, writes no DataCommitted or RetrainRequested, and the version's state
records when and why. No server: the registry, the outbox and the session are stand-ins."""

from __future__ import annotations

from opentelemetry import trace

from mlops.events.v1 import monitoring_pb2
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor.alarms import Closing
from services.monitor.clients import VersionInfo
from services.monitor.external import asks_for_new_model, show_new_model, trained_elsewhere
from services.monitor.retraining import Retraining
from services.monitor.settings import MonitorSettings
from services.monitor.times import timestamp
from services.monitor.windows import OpenWindow


class _Registry:
    async def aliased_version(self, model: str, alias: str) -> pb.ModelVersion | None:
        return pb.ModelVersion(model=model, version=2)


class _Outbox:
    def __init__(self) -> None:
        self.added: list = []

    async def add(self, session, message) -> str:
        self.added.append(message)
        return f"event-{len(self.added)}"


class _Session:
    def __init__(self) -> None:
        self.statements: list[tuple[str, dict]] = []

    async def exec(self, statement, params=None):
        self.statements.append((str(statement), params or {}))


def _spec(*, external: bool, on_drift: str = "retrain") -> pb.ModelSpecVersion:
    spec = pb.ModelSpecVersion(model="m", version=1)
    spec.spec.spec.monitor.method, spec.spec.spec.monitor.on_drift = "psi", on_drift
    spec.spec.spec.training.external = external
    return spec


def _closing(spec: pb.ModelSpecVersion) -> Closing:
    body = monitor_pb2.DriftWindow(drifted=True, prediction_drift_score=0.1)
    body.features.append(monitoring_pb2.FeatureDrift(feature="a", method="psi", score=0.9, drifted=True))
    return Closing(
        window=OpenWindow("m", 2, 1000, 10, 0, None, "", 500),
        body=body,
        drifted=True,
        consecutive=2,
        alarm=True,
        spec=spec,
        info=VersionInfo(pb.ModelVersion(model="m", version=2), None),
        span=trace.INVALID_SPAN,
    )


def test_only_a_retrain_policy_of_an_outside_model_asks_for_a_new_model():
    assert trained_elsewhere(_spec(external=True)) and not trained_elsewhere(_spec(external=False))
    assert not trained_elsewhere(None)
    assert asks_for_new_model(_spec(external=True), "retrain")
    assert not asks_for_new_model(_spec(external=True), "alert")
    assert not asks_for_new_model(_spec(external=False), "retrain")


async def test_an_outside_models_alarm_records_the_request_for_a_new_model_and_asks_no_retrain():
    outbox, session = _Outbox(), _Session()
    retraining = Retraining(
        database=None,
        outbox=outbox,
        registry=_Registry(),
        store=None,
        settings=MonitorSettings(metrics_port=None),
    )
    closing = _closing(_spec(external=True))
    assert await retraining.wanted(closing)  # production serves it: the alarm asks for something
    closing.new_model = trained_elsewhere(closing.spec)  # as the core decides before recording
    await retraining.follow_alarm(session, closing, "drift-1", now=1234.0)
    closing.end_spans()
    assert outbox.added == []  # no DataCommitted, no RetrainRequested
    ((sql, params),) = session.statements
    assert "new_model_needed_at" in sql and params["model"] == "m" and params["version"] == 2
    assert params["reason"].startswith("psi drift on 1 of 1 features for 2 windows; m is trained outside")
    assert "register it" in params["reason"]


async def test_a_platform_models_alarm_still_asks_for_a_retrain():
    outbox, session = _Outbox(), _Session()
    retraining = Retraining(
        database=None,
        outbox=outbox,
        registry=_Registry(),
        store=None,
        settings=MonitorSettings(metrics_port=None),
    )
    closing = _closing(_spec(external=False))
    closing.new_model = trained_elsewhere(closing.spec)
    await retraining.follow_alarm(session, closing, "drift-1", now=1234.0)
    closing.end_spans()
    assert [type(m).__name__ for m in outbox.added] == ["RetrainRequested"] and session.statements == []


def test_the_drift_status_shows_when_and_why_a_new_model_was_asked_for():
    item = monitor_pb2.VersionDrift(version=2)
    show_new_model(item, timestamp(1234.0), "why")
    assert item.new_model_reason == "why" and item.new_model_needed_at.seconds == 1234
