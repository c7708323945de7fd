"""Closing windows: judgement against the training profile, the alarm run across windows, its cooldown
and policy, and what a closing without a spec amounts to. No server: runs are held in memory."""

from __future__ import annotations

import numpy as np
import pytest

from mlops.errors import NotFound
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor.alarms import Alarms, VersionState, policy
from services.monitor.clients import VersionInfo
from services.monitor.reference import Reference
from services.monitor.settings import MonitorSettings
from services.monitor.windows import OpenWindow

FEATURES = ["a", "b"]
CLASSES = ["x", "y"]


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.column_stack([rng.normal(shift, 1, n), rng.exponential(2.0, n)])
    probabilities = rng.uniform(0, 1, n)
    return matrix, np.column_stack([probabilities, 1 - probabilities])


@pytest.fixture(scope="module")
def reference() -> Reference:
    matrix, probabilities = _rows(np.random.default_rng(0), 4000)
    profile = ReferenceProfile.compute(
        task="classification",
        features=matrix,
        feature_names=FEATURES,
        categorical={},
        predictions=probabilities,
        class_labels=CLASSES,
    )
    return Reference.of(ReferenceProfile.from_json(profile.to_json()), "0" * 64)


def _spec(*, on_drift: str = "retrain", consecutive: int = 2) -> pb.ModelSpecVersion:
    spec = pb.ModelSpecVersion(model="m", version=1)
    spec.spec.spec.task = "classification"
    monitor = spec.spec.spec.monitor
    monitor.window_seconds, monitor.method, monitor.threshold = 10, "psi", 0.2
    monitor.consecutive_windows, monitor.on_drift, monitor.min_samples = consecutive, on_drift, 200
    return spec


class _Catalog:
    def __init__(self, spec: pb.ModelSpecVersion | None, reference: Reference | None) -> None:
        self._spec = spec
        self._reference = reference

    async def spec(self, model: str) -> pb.ModelSpecVersion:
        if self._spec is None:
            raise NotFound(f"model {model!r} has no spec in the registry")
        return self._spec

    async def version(self, model: str, version: int) -> VersionInfo:
        return VersionInfo(pb.ModelVersion(model=model, version=version), self._reference)


def _alarms(catalog: _Catalog, **settings) -> Alarms:
    alarms = Alarms(
        database=None,
        outbox=None,
        catalog=catalog,
        settings=MonitorSettings(metrics_port=None, **settings),
        consumer_group="g",
    )
    alarms.states[("m", 1)] = VersionState()  # as committed: no run yet
    return alarms


def _window(reference: Reference, start: int, *, shift: float, n: int = 1000, seed: int = 1) -> OpenWindow:
    matrix, probabilities = _rows(np.random.default_rng(seed + start), n, shift)
    counts = reference.count(matrix, probabilities.argmax(axis=1))
    return OpenWindow("m", 1, start, 10, 0, counts, reference.sha256, n)


async def _close(alarms: Alarms, window: OpenWindow, now: float):
    closing = await alarms.judge(window, now)
    alarms.settle([closing], now)
    closing.end_spans()
    return closing


async def test_a_version_alarms_after_its_consecutive_drifted_windows_and_a_clean_one_resets_the_run(
    reference,
):
    alarms = _alarms(_Catalog(_spec(), reference), alarm_cooldown_s=0)
    first = await _close(alarms, _window(reference, 0, shift=1.5), now=20.0)
    assert first.body.judged and first.drifted and first.consecutive == 1 and not first.alarm
    assert {f.feature for f in first.body.features if f.drifted} == {"a"}
    assert first.body.window.start.seconds == 0 and first.body.window.end.seconds == 10
    assert first.body.sample_count == 1000
    second = await _close(alarms, _window(reference, 10, shift=1.5), now=30.0)
    assert second.consecutive == 2 and second.alarm
    assert alarms.states[("m", 1)] == VersionState(consecutive=2, last_alarm_at=30.0)
    clean = await _close(alarms, _window(reference, 20, shift=0.0), now=40.0)
    assert clean.body.judged and not clean.drifted and clean.consecutive == 0 and not clean.alarm
    assert alarms.states[("m", 1)] == VersionState(consecutive=0, last_alarm_at=30.0)


async def test_no_second_alarm_within_the_cooldown_and_none_where_the_policy_says_none(reference):
    alarms = _alarms(_Catalog(_spec(consecutive=1), reference), alarm_cooldown_s=300)
    assert (await _close(alarms, _window(reference, 0, shift=1.5), now=20.0)).alarm
    within = await _close(alarms, _window(reference, 10, shift=1.5), now=30.0)
    assert within.drifted and not within.alarm and within.consecutive == 2
    after = await _close(alarms, _window(reference, 400, shift=1.5), now=410.0)
    assert after.alarm

    quiet = _alarms(_Catalog(_spec(on_drift="none", consecutive=1), reference))
    closing = await _close(quiet, _window(reference, 0, shift=1.5), now=20.0)
    assert closing.drifted and not closing.alarm and policy(closing, "on_drift") == "none"


async def test_a_small_window_is_not_judged_and_leaves_the_run_as_it_was(reference):
    alarms = _alarms(_Catalog(_spec(), reference))
    alarms.states[("m", 1)] = VersionState(consecutive=1)
    closing = await _close(alarms, _window(reference, 0, shift=3.0, n=50), now=20.0)
    assert not closing.body.judged and not closing.drifted and closing.consecutive == 1
    assert alarms.states[("m", 1)].consecutive == 1


async def test_a_window_of_a_model_without_spec_or_profile_closes_unjudged(reference):
    no_spec = await _close(_alarms(_Catalog(None, reference)), _window(reference, 0, shift=3.0), now=20.0)
    assert no_spec.spec is None and no_spec.info is None and policy(no_spec, "on_drift") == "none"
    assert not no_spec.body.judged and not no_spec.alarm and no_spec.body.sample_count == 1000
    no_profile = _alarms(_Catalog(_spec(consecutive=1), None))
    window = OpenWindow("m", 1, 0, 10, 0, None, "", 1000)
    closing = await _close(no_profile, window, now=20.0)
    assert closing.spec is not None and not closing.body.judged and not closing.alarm


async def test_a_run_pushed_out_of_memory_is_not_written_back_by_a_late_settle(reference):
    alarms = _alarms(_Catalog(_spec(), reference), max_tracked_versions=1)
    closing = await alarms.judge(_window(reference, 0, shift=1.5), 20.0)
    closing.end_spans()
    alarms.states[("m", 2)] = VersionState()  # v1's run pushed out before the commit
    alarms.settle([closing], 20.0)
    assert ("m", 1) not in alarms.states  # read back, as committed, when next needed
