"""The trainer's job queue and workers against the real stack (see `trainer_helpers`): dead and
killed workers, time limits, networks too large for the data, and unreadable job rows.
"""

# The fixtures are imported from trainer_helpers, and pytest hands them to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
from sklearn.datasets import load_wine
from sqlalchemy import text

from mlops.events.v1 import common_pb2, training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.trainer.storage import JobQueue, job_key
from services.trainer.tables import SCHEMA
from tests.integration.bus_helpers import read_until
from tests.integration.conftest import eventually
from tests.integration.trainer_helpers import (
    PREFIX,
    commit,
    events,  # noqa: F401 - a shared fixture
    registry,  # noqa: F401 - a shared fixture
    spec_for,
    trainer,  # noqa: F401 - a shared fixture
    trainer_bus,  # noqa: F401 - a shared fixture
    upload,
    wait_trained,
)


async def test_a_job_whose_worker_died_is_claimed_again_and_finished_once(
    trainer, registry, events, artifact_settings, database, tmp_path, unique
):
    """A job left `running` with a lapsed lease (its worker died) is retried and registers one version."""
    trained_reader, _ = events
    dataset = f"orphan-{unique}"
    model = f"orphan-{unique}"
    uri, sha = await upload(artifact_settings, dataset, load_wine(as_frame=True).frame, tmp_path)
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec_for(model, dataset), applied_by="tests"))
    spec = await registry.GetModelSpec(pb.GetModelSpecRequest(model=model))
    recorded = await registry.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(dataset=dataset, uri=uri, sha256=sha, format="csv")
    )
    queue = JobQueue(database, lane=PREFIX)  # the lane of the in-process trainer under test
    async with database.transaction() as tx:
        job_id = await queue.enqueue(
            tx,
            spec=spec,
            dataset=recorded.dataset_version,
            trigger=common_pb2.TRAINING_TRIGGER_MANUAL,
            trigger_event_id="",
            trace_context={},
        )
        await tx.exec(
            text(
                f"UPDATE \"{SCHEMA}\".training_jobs SET status = 'running', attempts = 1, worker = 'dead', "
                "lease_until = now() - interval '1 second' WHERE job_id = :id"
            ),
            params={"id": job_id},
        )
    event, _ = await wait_trained(trained_reader, model)
    assert event.run_id == job_id and event.version == 1
    status = await queue.status(job_id)
    assert status["status"] == "succeeded" and status["attempts"] == 2 and status["model_version"] == 1


async def _apply(registry, artifact_settings, tmp_path, name: str, frame, **training) -> tuple[str, str, str]:
    """A data set and a model spec on it (training settings changed as given); returns (model, uri, sha)."""
    uri, sha = await upload(artifact_settings, name, frame, tmp_path)
    spec = spec_for(name, name)
    for field, value in training.items():
        if field == "hidden_layers":
            del spec.spec.training.hidden_layers[:]
            spec.spec.training.hidden_layers.extend(value)
        else:
            setattr(spec.spec.training, field, value)
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    return name, uri, sha


async def _kill_worker_of(trainer, job_id: str, spared: set[int]) -> int:
    """SIGKILL the worker process running `job_id` (the OOM killer's way), once it runs it."""
    pids = await eventually(
        lambda: [p for p in trainer.core.worker_pids(job_id) if p not in spared],
        timeout_s=60,
        interval_s=0.02,
        what=f"job {job_id} running in a worker process",
    )
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


async def _trains_fine(trainer, registry, events, artifact_settings, tmp_path, name: str) -> None:
    trained_reader, _ = events
    model, uri, sha = await _apply(
        registry, artifact_settings, tmp_path, name, load_wine(as_frame=True).frame
    )
    await trainer.publish(commit(model, uri, sha))
    event, _ = await wait_trained(trained_reader, model)
    assert event.version == 1


async def test_a_worker_killed_mid_training_is_retried_and_later_jobs_train(
    trainer, registry, events, artifact_settings, database, tmp_path, unique
):
    """The OOM killer's SIGKILL on a busy worker: the job is retried once, registers one version."""
    trained_reader, _ = events
    # Long enough to be killed mid-run: no early stopping, many epochs.
    model, uri, sha = await _apply(
        registry,
        artifact_settings,
        tmp_path,
        f"killed-{unique}",
        load_wine(as_frame=True).frame,
        epochs=1500,
        early_stopping_patience=0,
    )
    job_id = job_key(model=model, spec_version=1, dataset=model, dataset_sha256=sha)
    await trainer.publish(commit(model, uri, sha))
    await _kill_worker_of(trainer, job_id, spared=set())

    event, _ = await wait_trained(trained_reader, model, timeout_s=180)
    assert event.run_id == job_id and event.version == 1 and event.epochs_run == 1500
    listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model=model))
    assert [v.version for v in listed.model_versions] == [1]
    status = await JobQueue(database, lane=PREFIX).status(job_id)
    assert status["status"] == "succeeded" and status["attempts"] == 2 and status["worker_kills"] == 1

    await _trains_fine(trainer, registry, events, artifact_settings, tmp_path, f"after-kill-{unique}")


async def test_a_job_whose_worker_is_killed_every_time_fails_naming_the_signal(
    trainer, registry, events, artifact_settings, database, tmp_path, unique
):
    _, failed_reader = events
    model, uri, sha = await _apply(
        registry,
        artifact_settings,
        tmp_path,
        f"oom-{unique}",
        load_wine(as_frame=True).frame,
        epochs=1500,
        early_stopping_patience=0,
    )
    job_id = job_key(model=model, spec_version=1, dataset=model, dataset_sha256=sha)
    await trainer.publish(commit(model, uri, sha))
    killed: set[int] = set()
    for _ in range(trainer.core.settings.job_max_attempts):
        killed.add(await _kill_worker_of(trainer, job_id, spared=killed))

    record = await read_until(
        failed_reader, lambda r: training_pb2.TrainingFailed.FromString(r.value).model == model, timeout_s=60
    )
    failed = training_pb2.TrainingFailed.FromString(record.value)
    assert failed.stage == training_pb2.TRAINING_STAGE_TRAIN and failed.error_type == "WorkerKilled"
    assert "worker killed by signal 9 (SIGKILL) 3 times" in failed.reason, failed.reason
    status = await JobQueue(database, lane=PREFIX).status(job_id)
    assert status["status"] == "failed" and status["attempts"] == 3 and status["worker_kills"] == 3
    listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model=model))
    assert not listed.model_versions


async def test_a_job_past_max_seconds_is_stopped_and_fails_naming_the_limit(
    trainer, registry, events, artifact_settings, database, tmp_path, unique
):
    _, failed_reader = events
    model, uri, sha = await _apply(
        registry,
        artifact_settings,
        tmp_path,
        f"slow-{unique}",
        load_wine(as_frame=True).frame,
        epochs=10_000,
        early_stopping_patience=0,
        max_seconds=1,
    )
    await trainer.publish(commit(model, uri, sha))
    record = await read_until(
        failed_reader, lambda r: training_pb2.TrainingFailed.FromString(r.value).model == model, timeout_s=90
    )
    failed = training_pb2.TrainingFailed.FromString(record.value)
    assert failed.stage == training_pb2.TRAINING_STAGE_TRAIN and failed.error_type == "TrainingTimeout"
    assert "spec.training.max_seconds = 1 s" in failed.reason, failed.reason
    run = await registry.GetRun(pb.GetRunRequest(run_id=failed.run_id))
    assert run.status == pb.RUN_STATUS_FAILED
    # The stopped worker was replaced: the next job trains.
    await _trains_fine(trainer, registry, events, artifact_settings, tmp_path, f"after-slow-{unique}")


async def test_a_network_too_large_for_the_data_set_fails_before_training(
    trainer, registry, events, artifact_settings, tmp_path, unique
):
    """[4096, 4096] passes `mlops apply`; 3,000 categories of a text column make it too large to train."""
    _, failed_reader = events
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(3000, 4)), columns=["a", "b", "c", "d"])
    frame["code"] = [f"c{i}" for i in range(3000)]
    frame["target"] = (frame["a"] > 0).astype(int)
    model, uri, sha = await _apply(
        registry, artifact_settings, tmp_path, f"huge-{unique}", frame, hidden_layers=[4096, 4096]
    )
    await trainer.publish(commit(model, uri, sha))
    record = await read_until(
        failed_reader, lambda r: training_pb2.TrainingFailed.FromString(r.value).model == model, timeout_s=90
    )
    failed = training_pb2.TrainingFailed.FromString(record.value)
    assert failed.stage == training_pb2.TRAINING_STAGE_VALIDATE_DATA
    assert failed.error_type == "TooManyParameters" and "at most 20,000,000" in failed.reason, failed.reason
    listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model=model))
    assert not listed.model_versions


async def test_a_job_row_no_worker_can_read_is_failed_once_not_claimed_forever(database, unique):
    queue = JobQueue(database, lane=f"tests.unreadable.{unique}.")  # no trainer works this lane
    job_id = f"unreadable-{unique}"
    async with database.transaction() as tx:
        await tx.exec(
            text(
                f'INSERT INTO "{SCHEMA}".training_jobs (job_id, model, spec_version, dataset, dataset_version, '
                "dataset_sha256, dataset_uri, dataset_format, spec, trigger, trigger_event_id, trace_context, "
                "status, attempts, announced, worker, model_version, failed_stage, error, lane) VALUES "
                "(:id, :id, 1, :id, 1, :id, 'file:///x', 'csv', :spec, 0, '', '{}', 'pending', 0, false, "
                "'', 0, 0, '', :lane)"
            ),
            params={"id": job_id, "spec": b"\xff\xff not a protobuf", "lane": queue.lane},
        )
    assert await queue.claim("w", lease_s=0.01) is None
    status = await queue.status(job_id)
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["failed_stage"] == training_pb2.TRAINING_STAGE_RESOLVE
    assert status["error"].startswith("unreadable job row: DecodeError"), status["error"]
    assert await queue.claim("w", lease_s=0.01) is None and (await queue.status(job_id))["attempts"] == 1
