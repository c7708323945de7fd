"""The trainer against the real stack: Kafka, PostgreSQL, the S3 server and the running registry.

The trainer runs in this process (its consumer, outbox relay and workers; training in spawned
worker processes) on topics prefixed `tests.trainer.`, so that services running beside the tests
never see these events. The registry is the one the local stack runs (`MLOPS_REGISTRY_ADDR`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import yaml
from google.protobuf import json_format
from opentelemetry import trace
from sklearn.datasets import load_diabetes, load_wine
from sqlalchemy import text

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.db import migrate
from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings
from mlops.store import open_store
from mlops.tracecontext import parse_traceparent
from services.registry.core import RegistryCore
from services.registry.datasets import DatasetChecker
from services.registry.handlers import RegistryHandlers
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA as REGISTRY_SCHEMA
from services.trainer.__main__ import MIGRATIONS, stop_pool, training_pool
from services.trainer.clients import RegistryClient
from services.trainer.core import TrainerCore
from services.trainer.handlers import TrainerHandlers
from services.trainer.settings import TrainerSettings
from services.trainer.storage import JobQueue, job_key
from services.trainer.tables import SCHEMA
from services.trainer.training import (
    TrainingParams,
    TrainRequest,
    cpu_session,
    fit_model,
    init_worker,
    predict,
)
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import eventually, jaeger_trace

PREFIX = "tests.trainer."
SPEC = """
apiVersion: mlops/v1
kind: ModelSpec
metadata: {name: NAME}
spec:
  dataset: DATASET
  task: TASK
  label: target
  features: []
  training: {hidden_layers: [32, 16], epochs: 40, learning_rate: 0.01, batch_size: 32, seed: 7,
             early_stopping_patience: 8}
  gate: {metric: METRIC}
"""


def spec_for(name: str, dataset: str, task: str = "classification", label: str = "target") -> pb.ModelSpec:
    metric = "accuracy" if task == "classification" else "rmse"
    text_ = (
        SPEC.replace("NAME", name).replace("DATASET", dataset).replace("TASK", task).replace("METRIC", metric)
    )
    document = yaml.safe_load(text_.replace("label: target", f"label: {label}"))
    return json_format.ParseDict(document, pb.ModelSpec())


@pytest.fixture(scope="module")
async def registry():
    settings = TrainerSettings()
    host, port = settings.registry_addr.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1.0)
        if sock.connect_ex((host, int(port))) != 0:
            pytest.fail(
                f"the registry is not running at {settings.registry_addr}; run `bash infra/local/services.sh up`",
                pytrace=False,
            )
    channel = open_channel(settings.registry_addr)
    stub = registry_pb2_grpc.RegistryStub(channel)
    stub.channel = channel
    yield stub
    await channel.close()


@pytest.fixture(scope="module")
def trainer_bus() -> BusSettings:
    return BusSettings(
        retry_backoff_ms=20,
        retry_backoff_max_ms=200,
        max_attempts=3,
        outbox_poll_interval_ms=200,
        topic_prefix=PREFIX,
    )


@dataclass
class InProcessTrainer:
    publisher: EventPublisher
    core: TrainerCore

    async def publish(self, *args, **kwargs):
        return await self.publisher.publish(*args, **kwargs)


@pytest.fixture(scope="module")
async def trainer(database, kafka, trainer_bus, registry, artifact_settings, telemetry):
    """The trainer's consumer, relay and two workers, wired as its composition root wires them."""
    settings = TrainerSettings(
        metrics_port=None, max_parallel_jobs=2, job_poll_interval_s=0.2, device="cpu", registry_timeout_s=30
    )
    await migrate(database, MIGRATIONS, SCHEMA)
    publisher = EventPublisher(kafka, trainer_bus, source="mlops-trainer-tests")
    await publisher.start()
    pool = training_pool(settings)
    core = TrainerCore(
        database=database,
        outbox=Outbox(SCHEMA, source="mlops-trainer-tests", topic_prefix=PREFIX),
        registry=RegistryClient(registry.channel, timeout_s=settings.registry_timeout_s),
        store=open_store(artifact_settings),
        pool=pool,
        settings=settings,
    )
    handlers = TrainerHandlers(core)
    consumer = EventConsumer(
        kafka,
        trainer_bus,
        group_id=f"tests-trainer-{uuid.uuid4().hex[:8]}",
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
        from_end=True,
    )
    consumer.subscribe(data_pb2.DatasetVersionRecorded, handlers.on_dataset_recorded)
    consumer.subscribe(training_pb2.RetrainRequested, handlers.on_retrain_requested)
    relay = OutboxRelay(database, SCHEMA, publisher, trainer_bus)
    # The registry's side of a commit on the tests' topics: it records the version (object and sha256
    # checked, schema read) and its outbox carries DatasetVersionRecorded to the trainer, as in the stack.
    registry_core = RegistryCore(
        database,
        Outbox(REGISTRY_SCHEMA, source="mlops-registry-tests", topic_prefix=PREFIX),
        RegistrySettings(),
        DatasetChecker(open_store(artifact_settings)),
    )
    recorder = EventConsumer(
        kafka,
        trainer_bus,
        group_id=f"tests-trainer-registry-{uuid.uuid4().hex[:8]}",
        publisher=publisher,
        database=database,
        inbox=Inbox(REGISTRY_SCHEMA),
        from_end=True,
    )
    recorder.subscribe(data_pb2.DataCommitted, RegistryHandlers(registry_core).on_data_committed)
    registry_relay = OutboxRelay(database, REGISTRY_SCHEMA, publisher, trainer_bus)
    await consumer.start()
    await recorder.start()
    await consumer.wait_assigned()
    await recorder.wait_assigned()
    tasks = [
        asyncio.create_task(consumer.run()),
        asyncio.create_task(recorder.run()),
        asyncio.create_task(relay.run()),
        asyncio.create_task(registry_relay.run()),
        *core.start_workers(),
    ]
    yield InProcessTrainer(publisher, core)
    await recorder.stop()
    await registry_relay.stop()
    await consumer.stop()
    await core.stop()
    await stop_pool(pool)
    await relay.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    await publisher.stop()


@pytest.fixture
async def events(kafka):
    """Raw readers at the end of the trainer's result topics."""
    async with (
        raw_reader(kafka, PREFIX + "mlops.model.trained") as trained,
        raw_reader(kafka, PREFIX + "mlops.training.failed") as failed,
    ):
        yield trained, failed


async def upload(artifact_settings, dataset: str, frame, tmp_path) -> tuple[str, str]:
    path = tmp_path / f"{dataset}.csv"
    frame.to_csv(path, index=False)
    ref = await open_store(artifact_settings).put_file(f"datasets/{dataset}", path.name, path)
    return ref.uri, ref.sha256


def commit(dataset: str, uri: str, sha256: str) -> data_pb2.DataCommitted:
    return data_pb2.DataCommitted(dataset=dataset, uri=uri, sha256=sha256, format="csv", committed_by="tests")


async def wait_trained(reader, model: str, timeout_s: float = 90.0):
    record = await read_until(
        reader, lambda r: training_pb2.ModelTrained.FromString(r.value).model == model, timeout_s=timeout_s
    )
    return training_pb2.ModelTrained.FromString(record.value), dict(record.headers)


async def check_onnx_matches_torch(registry, artifact_settings, version: pb.ModelVersion, data_path, spec):
    """The registered ONNX against a torch model fitted again on the same data (training is deterministic)."""
    onnx_bytes = await open_store(artifact_settings).get_bytes(version.artifact_uri, version.artifact_sha256)
    body = spec.spec
    init_worker(1)  # the workers' threads and deterministic kernels, so the weights come out the same
    fitted = fit_model(
        TrainRequest(
            model=version.model,
            task=body.task,
            label=body.label,
            features=list(body.features),
            data_path=str(data_path),
            data_format="csv",
            params=TrainingParams.from_spec(body.training),
            device="cpu",
        )
    )
    rows = fitted.data.x["validation"]
    assert str(len(fitted.history)) == version.tags["trainer.epochs"]  # the same run, fitted again
    expected = predict(fitted.module, rows)[0]
    got = cpu_session(onnx_bytes).run(None, {"input": rows})[0]
    diff = float(np.max(np.abs(expected - got)))
    assert diff <= version.metrics["parity_tolerance"], diff
    return diff


async def test_wine_commit_trains_two_models_identically_and_registers_checked_onnx(
    trainer, registry, events, artifact_settings, database, jaeger_url, tmp_path, unique
):
    trained_reader, _ = events
    dataset = f"wine-{unique}"
    frame = load_wine(as_frame=True).frame
    uri, sha = await upload(artifact_settings, dataset, frame, tmp_path)
    models = [f"wine-a-{unique}", f"wine-b-{unique}"]
    for model in models:
        await registry.ApplyModelSpec(
            pb.ApplyModelSpecRequest(spec=spec_for(model, dataset), applied_by="tests")
        )

    with trace.get_tracer("tests").start_as_current_span("commit wine") as span:
        commit_id = f"commit-{unique}"
        await trainer.publish(commit(dataset, uri, sha), event_id=commit_id)
        trace_id = span.get_span_context().trace_id

    results = {}

    def collect(record) -> bool:
        event = training_pb2.ModelTrained.FromString(record.value)
        if event.model in models:
            results[event.model] = (event, dict(record.headers))
        return len(results) == len(models)

    await read_until(trained_reader, collect, timeout_s=90)
    first, _ = results[models[0]]
    second, headers = results[models[1]]

    # The data commit's trace continues through training into ModelTrained.
    assert parse_traceparent(headers["traceparent"].decode()).trace_id == trace_id

    assert first.version == 1 and first.dataset == dataset and first.dataset_sha256 == sha
    assert first.task == "classification" and first.class_labels == ["0", "1", "2"]
    assert list(first.feature_names) == [c for c in frame.columns if c != "target"]
    assert first.metrics["accuracy"] > 0.8
    assert first.parity_max_abs_diff <= first.parity_tolerance == pytest.approx(1e-4)
    # Same data and spec: same metrics, same bytes.
    assert dict(first.metrics) == dict(second.metrics)
    assert first.artifact_sha256 == second.artifact_sha256

    version = await registry.GetModelVersion(
        pb.GetModelVersionRequest(model=models[0], version=first.version)
    )
    signature = version.signature
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.inputs] == [("input", "FP32", [-1, 13])]
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.outputs] == [
        ("probabilities", "FP32", [-1, 3]),
        ("label", "INT64", [-1]),
    ]
    assert signature.onnx_opset == 17 and version.spec_version == 1 and version.dataset_version >= 1
    assert "test_accuracy" in version.metrics and version.profile_uri.endswith("/profile.json")
    assert f"models/{models[0]}/{version.artifact_sha256}/model.onnx" in version.artifact_uri

    run = await registry.GetRun(pb.GetRunRequest(run_id=first.run_id, include_history=True))
    assert run.status == pb.RUN_STATUS_SUCCEEDED and run.model_version == 1
    assert len(run.history) == first.epochs_run and run.params["hidden_layers"] == "32,16"
    assert run.hardware.device == "cpu"

    data_path = tmp_path / f"{dataset}.csv"
    await check_onnx_matches_torch(
        registry, artifact_settings, version, data_path, spec_for(models[0], dataset)
    )

    # In Jaeger: the consumer span of the commit is the parent of the training, epochs included.
    def training_traced():
        spans = jaeger_trace(jaeger_url, format(trace_id, "032x"))
        by_name = {span.name: span for span in spans}
        train = by_name.get(f"train {models[0]}")
        published = any(span.name.startswith("publish ") and "model.trained" in span.name for span in spans)
        # both models' epochs: the second training's spans may reach Jaeger after the first's
        epochs = sum(span.name.startswith("epoch ") for span in spans)
        if train is None or epochs < 2 * first.epochs_run or not published:
            return None
        return spans, by_name, train

    spans, by_name, train = await eventually(training_traced, timeout_s=20, what="the training in Jaeger")
    # the commit is recorded by the registry; the trainer trains on the registry's record
    assert f"process {PREFIX}mlops.data.committed" in by_name
    process = by_name[f"process {PREFIX}mlops.dataset.recorded"]
    assert train.parent_id == process.span_id
    assert train.attributes["mlops.dataset.name"] == dataset
    assert train.attributes["mlops.model.version"] == 1
    assert train.attributes["mlops.dataset.version"] == version.dataset_version
    assert sum(span.name.startswith("epoch ") for span in spans) == 2 * first.epochs_run
    assert any(span.name.startswith("publish ") and "model.trained" in span.name for span in spans)

    # Replays: the same ce_id again, then a new ce_id for the same bytes. Neither trains again.
    await trainer.publish(commit(dataset, uri, sha), event_id=commit_id)
    fresh_id = f"fresh-{unique}"
    await trainer.publish(commit(dataset, uri, sha), event_id=fresh_id)

    await eventually(
        lambda: _inbox_has(database, fresh_id, REGISTRY_SCHEMA), timeout_s=30, what="the fresh replay handled"
    )
    await asyncio.sleep(1.0)  # a job queued by mistake would be claimed well within this
    for model in models:
        listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model=model))
        assert [v.version for v in listed.model_versions] == [1]
    batch = await trained_reader.getmany(timeout_ms=500)
    assert not [
        r
        for records in batch.values()
        for r in records
        if training_pb2.ModelTrained.FromString(r.value).model in models
    ]


async def _inbox_has(database, event_id: str, schema: str = SCHEMA) -> bool:
    async with database.session() as session:
        row = (
            await session.exec(
                text(f'SELECT 1 FROM "{schema}".inbox WHERE event_id = :e'), params={"e": event_id}
            )
        ).first()
    return row is not None


async def test_diabetes_regression_registers_prediction_output(
    trainer, registry, events, artifact_settings, tmp_path, unique
):
    trained_reader, _ = events
    dataset = f"diabetes-{unique}"
    model = f"diabetes-{unique}"
    uri, sha = await upload(artifact_settings, dataset, load_diabetes(as_frame=True).frame, tmp_path)
    spec = spec_for(model, dataset, task="regression")
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    await trainer.publish(commit(dataset, uri, sha))
    event, _ = await wait_trained(trained_reader, model)
    assert event.task == "regression" and not event.class_labels
    assert 0 < event.metrics["rmse"] < 80 and event.metrics["r2"] > 0.2
    version = await registry.GetModelVersion(pb.GetModelVersionRequest(model=model, version=event.version))
    assert [(t.name, t.datatype, list(t.shape)) for t in version.signature.outputs] == [
        ("prediction", "FP32", [-1])
    ]
    await check_onnx_matches_torch(registry, artifact_settings, version, tmp_path / f"{dataset}.csv", spec)


async def test_data_without_the_label_fails_validation_and_registers_nothing(
    trainer, registry, events, artifact_settings, tmp_path, unique
):
    _, failed_reader = events
    dataset = f"nolabel-{unique}"
    model = f"nolabel-{unique}"
    frame = load_wine(as_frame=True).frame.drop(columns=["target"])
    uri, sha = await upload(artifact_settings, dataset, frame, tmp_path)
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec_for(model, dataset), applied_by="tests"))
    await trainer.publish(commit(dataset, uri, sha))
    record = await read_until(
        failed_reader, lambda r: training_pb2.TrainingFailed.FromString(r.value).model == model, timeout_s=90
    )
    failed = training_pb2.TrainingFailed.FromString(record.value)
    assert failed.stage == training_pb2.TRAINING_STAGE_VALIDATE_DATA
    assert "label column 'target' is missing" in failed.reason and not failed.retryable
    listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model=model))
    assert not listed.model_versions
    run = await registry.GetRun(pb.GetRunRequest(run_id=failed.run_id))
    assert (
        run.status == pb.RUN_STATUS_FAILED and run.failed_stage == training_pb2.TRAINING_STAGE_VALIDATE_DATA
    )


async def test_retrain_request_for_an_unknown_model_is_dead_lettered_with_the_reason(kafka, trainer, unique):
    model = f"ghost-{unique}"
    async with raw_reader(kafka, PREFIX + "mlops.retrain.requested.dlq") as dead_letters:
        await trainer.publish(training_pb2.RetrainRequested(model=model, reason="tests"))
        record = await read_until(
            dead_letters,
            lambda r: training_pb2.RetrainRequested.FromString(r.value).model == model,
            timeout_s=30,
        )
    reason = dict(record.headers)["mlops_dlq_reason"].decode()
    assert f"names model {model!r}, which has no spec" in reason


async def test_retrain_request_trains_the_latest_spec_once(
    trainer, registry, events, artifact_settings, database, tmp_path, unique
):
    trained_reader, _ = events
    dataset = f"retrain-{unique}"
    model = f"retrain-{unique}"
    uri, sha = await upload(artifact_settings, dataset, load_diabetes(as_frame=True).frame, tmp_path)
    spec = spec_for(model, dataset, task="regression")
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    await trainer.publish(commit(dataset, uri, sha))
    first, _ = await wait_trained(trained_reader, model)

    spec.spec.training.learning_rate = 0.005  # a new spec version; the data stays the same
    applied = await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    assert applied.spec_version == 2
    request = training_pb2.RetrainRequested(
        model=model, trigger=common_pb2.TRAINING_TRIGGER_DRIFT, reason="tests"
    )
    await trainer.publish(request)
    second, _ = await wait_trained(trained_reader, model)
    assert (first.version, first.spec_version) == (1, 1)
    assert (second.version, second.spec_version) == (2, 2)
    assert second.trigger == common_pb2.TRAINING_TRIGGER_DRIFT
    assert second.dataset_version == first.dataset_version

    # The same request again: spec v2 on this data is trained already.
    retry_id = f"retrain-again-{unique}"
    await trainer.publish(request, event_id=retry_id)
    await eventually(lambda: _inbox_has(database, retry_id), timeout_s=30, what="the retry handled")
    await asyncio.sleep(1.0)
    listed = await registry.ListModelVersions(pb.ListModelVersionsRequest(model=model))
    assert sorted(v.version for v in listed.model_versions) == [1, 2]


async def test_search_registers_the_best_trial_with_trials_as_child_runs(
    trainer, registry, events, artifact_settings, tmp_path, unique
):
    trained_reader, _ = events
    dataset = f"search-{unique}"
    model = f"search-{unique}"
    uri, sha = await upload(artifact_settings, dataset, load_wine(as_frame=True).frame, tmp_path)
    spec = spec_for(model, dataset)
    json_format.ParseDict(
        {
            "trials": 3,
            "metric": "log_loss",
            "params": {
                "learning_rate": {"log_uniform": {"low": 1e-3, "high": 3e-2}},
                "hidden_layers": {"choice": [[16], [32, 16]]},
            },
        },
        spec.spec.training.search,
    )
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    await trainer.publish(commit(dataset, uri, sha))
    event, _ = await wait_trained(trained_reader, model)

    listed = await registry.ListRuns(pb.ListRunsRequest(model=model))
    runs = {run.run_id: run for run in listed.runs}
    parent = next(run for run in runs.values() if not run.parent_run_id)
    trials = [run for run in runs.values() if run.parent_run_id == parent.run_id]
    assert len(trials) == 3 and all(run.status == pb.RUN_STATUS_SUCCEEDED for run in trials)
    assert event.run_id in {run.run_id for run in trials}  # the version comes from a trial
    best = min(trials, key=lambda run: run.metrics["log_loss"])
    assert event.run_id == best.run_id
    assert parent.status == pb.RUN_STATUS_SUCCEEDED and parent.model_version == event.version
    assert len({run.params["learning_rate"] for run in trials}) == 3


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


async def test_data_committed_to_retrain_one_model_trains_it_with_the_intents_trigger(
    trainer, registry, events, artifact_settings, tmp_path, unique
):
    """The monitor's single intent: data assembled for one model's retrain, committed as data. The
    registry records it once; the named model trains with the drift trigger, the data set's other
    model trains on it as on any new data."""
    trained_reader, _ = events
    dataset = f"intent-{unique}"
    drifted, other = f"intent-a-{unique}", f"intent-b-{unique}"
    uri, sha = await upload(artifact_settings, dataset, load_wine(as_frame=True).frame, tmp_path)
    for model in (drifted, other):
        await registry.ApplyModelSpec(
            pb.ApplyModelSpecRequest(spec=spec_for(model, dataset), applied_by="tests")
        )
    event = commit(dataset, uri, sha)
    event.retrain.CopyFrom(
        data_pb2.RetrainIntent(
            model=drifted,
            trigger=common_pb2.TRAINING_TRIGGER_DRIFT,
            reason="psi drift for 2 windows",
            cause_event_id=f"drift-{unique}",
            requested_by="mlops-monitor",
        )
    )
    await trainer.publish(event)
    results = {}

    def collect(record) -> bool:
        trained = training_pb2.ModelTrained.FromString(record.value)
        if trained.model in (drifted, other):
            results[trained.model] = trained
        return len(results) == 2

    await read_until(trained_reader, collect, timeout_s=120)
    assert results[drifted].trigger == common_pb2.TRAINING_TRIGGER_DRIFT
    assert results[other].trigger == common_pb2.TRAINING_TRIGGER_DATA_COMMITTED
    recorded = await registry.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=dataset))
    assert recorded.retrain.model == drifted and recorded.retrain.cause_event_id == f"drift-{unique}"
    listed = await registry.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset=dataset))
    assert [v.version for v in listed.versions] == [1]
