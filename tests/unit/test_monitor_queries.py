"""What the monitor answers from memory: health per version, prediction drift against a baseline, and
requests refused before anything is read. No server: health comes from merged rows."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mlops.errors import InvalidArgument, NotFound
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor.counting import HealthDelta
from services.monitor.queries import Queries
from services.monitor.settings import MonitorSettings


class _Catalog:
    """Knows model "m", with a 30-second window."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def cached_spec(self, model: str) -> pb.ModelSpecVersion | None:
        return None

    def cached_version(self, model: str, version: int):
        return None

    async def spec(self, model: str) -> pb.ModelSpecVersion:
        self.asked.append(model)
        if model != "m":
            raise NotFound(f"model {model!r} has no spec in the registry")
        spec = pb.ModelSpecVersion(model=model)
        spec.spec.spec.monitor.window_seconds = 30
        return spec


def _queries(**settings) -> Queries:
    return Queries(database=None, catalog=_Catalog(), settings=MonitorSettings(metrics_port=None, **settings))


def _rows(
    version: int, n: int, *, failed_every: int = 0, classes: np.ndarray | None = None, model: str = "m"
) -> HealthDelta:
    now = int(time.time())
    failed = np.zeros(n, dtype=bool)
    if failed_every:
        failed[::failed_every] = True
    return HealthDelta(
        model,
        version,
        np.full(n, now - 1, dtype=np.int64),
        np.full(n, 4_000),
        failed,
        0.5,  # every other request logged
        classes if classes is not None else np.zeros(n, dtype=np.int64),
        2,
        None,
    )


async def test_health_counts_every_request_the_sample_stands_for_with_live_metrics():
    queries = _queries()
    queries.add_health([_rows(1, 40, failed_every=4)], time.time())
    queries.live_metrics[("m", 1)] = {"accuracy": 0.9}
    reply = await queries.get_health(monitor_pb2.GetHealthRequest(model="m", version=1))
    assert reply.sample_count == 40
    health = reply.health
    assert health.version == 1 and health.request_count == 80 and health.error_count == 20
    assert health.error_rate == pytest.approx(0.25)
    assert 3.5 < health.latency_p50_ms < 4.5 and dict(health.metrics) == {"accuracy": pytest.approx(0.9)}
    assert health.window.end.seconds - health.window.start.seconds == 30  # the spec's window
    quiet = await queries.get_health(monitor_pb2.GetHealthRequest(model="m", version=2, window_seconds=5))
    assert quiet.sample_count == 0 and quiet.health.request_count == 0
    assert quiet.health.window.end.seconds - quiet.health.window.start.seconds == 5


async def test_prediction_drift_against_the_baseline_needs_enough_rows_of_both():
    queries = _queries(min_prediction_drift_samples=50)
    rng = np.random.default_rng(0)
    queries.add_health([_rows(1, 400, classes=rng.integers(0, 2, 400))], time.time())
    queries.add_health([_rows(2, 30, classes=np.ones(30, dtype=np.int64))], time.time())
    request = monitor_pb2.GetHealthRequest(model="m", version=2, baseline_version=1)
    few = await queries.get_health(request)
    assert few.baseline_version == 1 and not few.HasField("prediction_drift")
    queries.add_health([_rows(2, 370, classes=np.ones(370, dtype=np.int64))], time.time())
    skewed = await queries.get_health(request)
    assert skewed.prediction_drift > 1  # every prediction one class against an even baseline
    queries.add_health([_rows(3, 400, classes=rng.integers(0, 2, 400))], time.time())
    same = await queries.get_health(monitor_pb2.GetHealthRequest(model="m", version=3, baseline_version=1))
    assert same.prediction_drift < 0.05


async def test_model_health_lists_the_models_tracked_versions_in_order():
    queries = _queries()
    queries.add_health([_rows(3, 2), _rows(1, 2), _rows(1, 2, model="other")], time.time())
    reply = await queries.get_model_health(monitor_pb2.GetModelHealthRequest(model="m"))
    assert reply.model == "m" and [v.version for v in reply.versions] == [1, 3]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (monitor_pb2.GetHealthRequest(version=1), "GetHealthRequest.model is required"),
        (monitor_pb2.GetHealthRequest(model="m"), r"version must be a version number \(1 or more\), got 0"),
        (
            monitor_pb2.GetHealthRequest(model="m", version=1, window_seconds=901),
            r"window_seconds must be from 0 .* to 900 \(MLOPS_MONITOR_HEALTH_HORIZON_S\), got 901",
        ),
    ],
)
async def test_a_health_request_that_cannot_be_answered_says_why(request_, message):
    with pytest.raises(InvalidArgument, match=message):
        await _queries().get_health(request_)


async def test_a_model_unknown_here_and_to_the_registry_is_not_found_and_a_tracked_one_needs_no_lookup():
    queries = _queries()
    with pytest.raises(NotFound, match="'nobody' is unknown to the monitor and the registry"):
        await queries.get_health(monitor_pb2.GetHealthRequest(model="nobody", version=1))
    with pytest.raises(NotFound):
        await queries.get_model_health(monitor_pb2.GetModelHealthRequest(model="nobody"))
    queries.add_health([_rows(1, 2, model="tracked")], time.time())
    assert await queries.known("tracked")
    assert "tracked" not in queries.catalog.asked


async def test_a_drift_status_request_is_checked_before_anything_is_read():
    queries = _queries()  # no database: a request that got as far as reading would fail otherwise
    with pytest.raises(InvalidArgument, match=r"GetDriftStatusRequest\.model is required"):
        await queries.get_drift_status(monitor_pb2.GetDriftStatusRequest())
    with pytest.raises(InvalidArgument, match="must not be negative"):
        await queries.get_drift_status(monitor_pb2.GetDriftStatusRequest(model="m", window_limit=-1))
