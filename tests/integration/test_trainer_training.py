"""The trainer against the real stack (see `trainer_helpers`): Kafka, PostgreSQL, the S3 server and
the running registry. Committed data trains and registers checked models; retrains, searches,
validation failures and unknown models.
"""

# The fixtures are imported from trainer_helpers, and pytest hands them to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format
from opentelemetry import trace
from sklearn.datasets import load_diabetes, load_wine
from sqlalchemy import text

from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from mlops.tracecontext import parse_traceparent
from services.registry.tables import SCHEMA as REGISTRY_SCHEMA
from services.trainer.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import eventually, jaeger_trace
from tests.integration.trainer_helpers import (
    PREFIX,
    check_onnx_matches_torch,
    commit,
    events,  # noqa: F401 - a shared fixture
    registry,  # noqa: F401 - a shared fixture
    spec_for,
    trainer,  # noqa: F401 - a shared fixture
    trainer_bus,  # noqa: F401 - a shared fixture
    upload,
    wait_trained,
)


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
    # every reader feeds the input from these columns and reads the class from the probabilities
    assert (
        list(signature.inputs[0].columns) == list(signature.feature_names)
        and len(signature.feature_names) == 13
    )
    assert [t.role for t in signature.outputs] == ["probabilities", ""]
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
    assert [t.role for t in version.signature.outputs] == ["value"] and version.signature.inputs[0].columns
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
