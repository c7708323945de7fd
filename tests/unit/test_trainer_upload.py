"""A trained model waits out an S3 outage before its upload gives up: an outage of a minute costs the
job a wait, not its model; a refusal fails the job at UPLOAD; an outage past the patience is raised
as the outage it is, so the job goes back to the queue instead of failing for good."""

from __future__ import annotations

import pytest

from mlops.errors import PermissionDenied, Unavailable
from mlops.outages import is_outage
from mlops.store import ArtifactRef
from services.trainer.runs import STAGE, JobFailed, RunBook
from services.trainer.training import TrainOutcome


class _Store:
    """Fails the first `failures` puts with `error`, then stores."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.puts: list[str] = []

    async def put_bytes(self, namespace: str, filename: str, data: bytes) -> ArtifactRef:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.puts.append(filename)
        return ArtifactRef(f"s3://mlops/{namespace}/{filename}", "0" * 64, len(data))


class _Clock:
    """Time that moves only when the book sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _book(store: _Store, clock: _Clock, patience_s: float) -> RunBook:
    return RunBook(None, store, upload_patience_s=patience_s, sleep=clock.sleep, clock=clock)


OUTCOME = TrainOutcome(ok=True, onnx=b"onnx bytes", profile_json="{}")
OUTAGE = Unavailable(
    "S3 put of s3://mlops/models/wine failed for now, connection refused; it is worth retrying"
)


async def test_an_outage_shorter_than_the_patience_costs_a_wait_not_the_model():
    store, clock = _Store(5, OUTAGE), _Clock()
    model, profile = await _book(store, clock, patience_s=60).upload("models/wine", OUTCOME)
    assert store.puts == ["model.onnx", "profile.json"]
    assert model.uri.endswith("model.onnx") and profile.uri.endswith("profile.json")
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 8.0], "backing off, each wait at most 10 s"


async def test_an_outage_past_the_patience_is_raised_as_an_outage():
    store, clock = _Store(1_000, OUTAGE), _Clock()
    with pytest.raises(Unavailable) as caught:
        await _book(store, clock, patience_s=30).upload("models/wine", OUTCOME)
    assert is_outage(caught.value), "the job goes back to the queue; it does not fail"
    assert clock.now <= 30 and store.puts == []


async def test_a_refusal_fails_the_job_at_upload_without_waiting():
    denied = PermissionDenied("S3 put of s3://mlops/models/wine was refused: AccessDenied")
    store, clock = _Store(1, denied), _Clock()
    with pytest.raises(JobFailed) as caught:
        await _book(store, clock, patience_s=300).upload("models/wine", OUTCOME)
    assert caught.value.stage == STAGE.TRAINING_STAGE_UPLOAD
    assert "AccessDenied" in caught.value.reason
    assert clock.slept == []
