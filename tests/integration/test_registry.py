"""The registry over its gRPC API and its Kafka consumer, against the real PostgreSQL, Kafka and S3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from google.protobuf import json_format

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.errors import NotFound
from mlops.event_catalog import DLQ_SUFFIX
from mlops.events.v1 import common_pb2, data_pb2, evaluation_pb2, monitoring_pb2
from mlops.grpc import GrpcServer, open_channel
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings, GrpcServerSettings
from mlops.store import open_store
from services.registry.__main__ import MIGRATIONS
from services.registry.core import RegistryCore
from services.registry.datasets import DatasetChecker
from services.registry.handlers import RegistryHandlers
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import eventually

DESIGN_SPEC = """
apiVersion: mlops/v1
kind: ModelSpec
metadata:
  name: NAME
spec:
  dataset: DATASET
  task: classification
  label: target
  features: []
  slices: []
  training: {hidden_layers: [64, 32], epochs: 30, learning_rate: 0.001, batch_size: 128, seed: 7}
  gate: {metric: accuracy, min: 0.85, max_regression: 0.01, max_p99_latency_ms: 5}
  rollout: {strategy: canary, steps: [10, 50, 100], step_seconds: 20, max_error_rate: 0.01, max_p99_latency_ms: 50}
  monitor: {window_seconds: 30, method: psi, threshold: 0.2, consecutive_windows: 2, on_drift: retrain}
"""


def spec_from_yaml(text: str, name: str, dataset: str) -> pb.ModelSpec:
    document = yaml.safe_load(text.replace("NAME", name).replace("DATASET", dataset))
    return json_format.ParseDict(document, pb.ModelSpec())


@pytest.fixture(scope="module")
async def registry(database, kafka):
    """The registry's servicer on a free port, with its outbox relay publishing to the real Kafka topics."""
    from mlops.db import migrate

    bus = BusSettings(outbox_poll_interval_ms=200)
    await migrate(database, MIGRATIONS, SCHEMA)
    publisher = EventPublisher(kafka, bus, source="mlops-registry-tests")
    await publisher.start()
    core = RegistryCore(database, Outbox(SCHEMA, source="mlops-registry-tests"), RegistrySettings())
    relay = OutboxRelay(database, SCHEMA, publisher, bus)
    relay_task = asyncio.create_task(relay.run())
    server = GrpcServer(GrpcServerSettings(port=0))
    server.add(
        lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(core), s),
        "mlops.registry.v1.Registry",
    )
    port = await server.start()
    await server.set_serving()
    channel = open_channel(f"127.0.0.1:{port}")
    yield registry_pb2_grpc.RegistryStub(channel), core, publisher
    await channel.close()
    await server.stop()
    await relay.stop()
    await relay_task
    await publisher.stop()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def register(stub, model: str, run_id: str | None = None, **fields) -> pb.ModelVersion:
    reply = await stub.RegisterModelVersion(
        pb.RegisterModelVersionRequest(
            model=model,
            run_id=run_id or uuid.uuid4().hex,
            artifact_uri=f"s3://mlops/models/{model}/{'a' * 64}/model.onnx",
            artifact_sha256="a" * 64,
            **fields,
        )
    )
    return reply.model_version


async def test_dataset_versions_are_immutable_and_idempotent_on_sha256(registry, unique):
    stub, _, _ = registry
    name = f"ds-{unique}"
    first = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name,
            uri="s3://mlops/x/1.csv",
            sha256=sha("1"),
            format="csv",
            row_count=10,
            committed_by="alice",
        )
    )
    again = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri="s3://mlops/x/1.csv", sha256=sha("1"), format="csv", row_count=10
        )
    )
    second = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri="s3://mlops/x/2.csv", sha256=sha("2"), format="csv", row_count=12
        )
    )
    assert (first.created, again.created, second.created) == (True, False, True)
    assert again.dataset_version == first.dataset_version
    assert second.dataset_version.version == 2
    assert second.dataset_version.parent_version == 1 and second.dataset_version.parent_sha256 == sha("1")
    by_sha = await stub.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=name, sha256=sha("1")))
    latest = await stub.GetDatasetVersion(pb.GetDatasetVersionRequest(dataset=name))
    # the ledger records who called (the operator, by certificate), not the name the request typed
    assert (by_sha.version, latest.version, by_sha.committed_by) == (1, 2, "user:admin")
    listed = await stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset=name, page_size=1))
    assert [v.version for v in listed.versions] == [2] and listed.next_page_token
    rest = await stub.ListDatasetVersions(
        pb.ListDatasetVersionsRequest(dataset=name, page_size=1, page_token=listed.next_page_token)
    )
    assert [v.version for v in rest.versions] == [1] and not rest.next_page_token
    datasets = await stub.ListDatasets(pb.ListDatasetsRequest(name_prefix=name))
    assert [(d.name, d.latest_version) for d in datasets.datasets] == [(name, 2)]


async def test_bad_requests_get_invalid_argument_with_a_message(registry, unique):
    stub, _, _ = registry
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordDatasetVersion(
            pb.RecordDatasetVersionRequest(
                dataset=f"ds-{unique}", uri="s3://mlops/x.csv", sha256=sha("x"), format="xlsx"
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "format must be one of csv, parquet, got 'xlsx'"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModelVersion(pb.GetModelVersionRequest(model=f"m-{unique}", alias="production"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == f"model 'm-{unique}' has no alias 'production'"


async def test_specs_apply_like_kubectl_and_bad_specs_name_every_field(registry, unique):
    stub, _, _ = registry
    name = f"wine-{unique}"
    spec = spec_from_yaml(DESIGN_SPEC, name, f"ds-{unique}")
    first = await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="alice"))
    same = await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec))
    assert (first.spec_version, first.changed, same.spec_version, same.changed) == (1, True, 1, False)
    assert first.applied.spec.spec.serving.max_batch_size == 64, "defaults are filled in and stored"
    spec.spec.training.epochs = 40
    changed = await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec))
    assert (changed.spec_version, changed.changed) == (2, True)
    fetched = await stub.GetModelSpec(pb.GetModelSpecRequest(model=name))
    assert fetched.version == 2 and fetched.spec.spec.training.epochs == 40
    listed = await stub.ListModelSpecs(pb.ListModelSpecsRequest(dataset=f"ds-{unique}"))
    assert [(s.model, s.version) for s in listed.specs] == [(name, 2)]

    bad = spec_from_yaml(DESIGN_SPEC, "Bad_Name", "ds")
    bad.spec.task = "clustering"
    bad.spec.training.epochs = 0
    del bad.spec.rollout.steps[:]
    bad.spec.rollout.steps.extend([50, 10])
    bad.spec.monitor.method = "wasserstein"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    for path in (
        "metadata.name:",
        "spec.task:",
        "spec.training.epochs:",
        "spec.rollout.steps:",
        "spec.monitor.method:",
    ):
        assert path in details, f"{path} missing from: {details}"


async def test_racing_registrations_get_gapless_unique_versions(registry, unique):
    stub, _, _ = registry
    model = f"race-{unique}"
    versions = await asyncio.gather(*(register(stub, model) for _ in range(24)))
    assert sorted(v.version for v in versions) == list(range(1, 25))
    same_run = await asyncio.gather(
        *(
            stub.RegisterModelVersion(
                pb.RegisterModelVersionRequest(
                    model=model, run_id="run-once", artifact_uri="s3://mlops/m.onnx", artifact_sha256="b" * 64
                )
            )
            for _ in range(6)
        )
    )
    assert {r.model_version.version for r in same_run} == {25}, "registration is idempotent on the run id"
    assert sum(r.created for r in same_run) == 1
    listed = await stub.ListModelVersions(pb.ListModelVersionsRequest(model=model, page_size=1000))
    assert len(listed.model_versions) == 25


async def test_aliases_resolve_and_every_move_is_in_the_ledger(registry, kafka, unique):
    stub, _, _ = registry
    model = f"alias-{unique}"
    v1, v2 = await register(stub, model), await register(stub, model)
    async with raw_reader(kafka, "mlops.alias.changed") as reader:
        set1 = await stub.SetAlias(
            pb.SetAliasRequest(
                model=model, alias="production", version=1, actor="alice", reason="first release"
            )
        )
        event = await read_until(reader, lambda r: r.key == model.encode())
    changed = json_format.MessageToDict(_parse_alias_changed(event.value))
    # the actor typed in the request is not believed: the ledger names the authenticated caller
    assert (
        changed["alias"] == "production" and changed["toVersion"] == "1" and changed["actor"] == "user:admin"
    )

    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    moved = await stub.SetAlias(
        pb.SetAliasRequest(
            model=model, alias="production", version=2, actor="bob", reason="better", expected_version=1
        )
    )
    assert (set1.changed, moved.previous_version, moved.changed) == (True, 1, True)
    resolved = await stub.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert resolved.version == v2.version == 2 and list(resolved.aliases) == ["production"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetAlias(
            pb.SetAliasRequest(model=model, alias="production", version=1, expected_version=1)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetAlias(pb.SetAliasRequest(model=model, alias="production", version=99))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    deleted = await stub.DeleteAlias(pb.DeleteAliasRequest(model=model, alias="production", actor="carol"))
    assert (deleted.deleted, deleted.previous_version) == (True, 2)

    history = await stub.GetAliasHistory(pb.GetAliasHistoryRequest(model=model, alias="production"))
    assert [(c.from_version, c.to_version, c.actor) for c in history.changes] == [
        (2, 0, "user:admin"),
        (1, 2, "user:admin"),
        (0, 1, "user:admin"),
    ]
    at = pb.GetAliasHistoryRequest(model=model)
    at.at.FromDatetime(between)
    then = await stub.GetAliasHistory(at)
    assert [(a.alias, a.version) for a in then.aliases_at] == [("production", v1.version)], (
        "what served at time X"
    )


def _parse_alias_changed(value: bytes):
    from mlops.events.v1 import model_pb2

    message = model_pb2.AliasChanged()
    message.ParseFromString(value)
    return message


async def test_runs_track_params_and_per_epoch_metrics(registry, unique):
    stub, _, _ = registry
    run_id = f"run-{unique}"
    request = pb.CreateRunRequest(
        run_id=run_id,
        model=f"m-{unique}",
        params={"lr": "0.001"},
        hardware=pb.Hardware(device="cpu", cpu_count=2),
    )
    created = await stub.CreateRun(request)
    again = await stub.CreateRun(request)
    assert created.run_id == again.run_id and again.status == pb.RUN_STATUS_RUNNING
    await stub.LogRunMetrics(
        pb.LogRunMetricsRequest(
            run_id=run_id,
            epochs=[pb.EpochMetrics(epoch=e, metrics={"loss": 1.0 / (e + 1)}) for e in range(3)],
        )
    )
    finished = await stub.FinishRun(
        pb.FinishRunRequest(run_id=run_id, status=pb.RUN_STATUS_SUCCEEDED, metrics={"accuracy": 0.93})
    )
    assert finished.status == pb.RUN_STATUS_SUCCEEDED and finished.HasField("ended_at")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.FinishRun(pb.FinishRunRequest(run_id=run_id, status=pb.RUN_STATUS_FAILED))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    fetched = await stub.GetRun(pb.GetRunRequest(run_id=run_id, include_history=True))
    assert [h.epoch for h in fetched.history] == [0, 1, 2] and fetched.metrics["accuracy"] == 0.93
    listed = await stub.ListRuns(pb.ListRunsRequest(model=f"m-{unique}", status=pb.RUN_STATUS_SUCCEEDED))
    assert [r.run_id for r in listed.runs] == [run_id]


async def test_search_filters_by_tags_metrics_and_orders_by_metric(registry, unique):
    stub, _, _ = registry
    model = f"search-{unique}"
    for accuracy, team in ((0.80, "a"), (0.95, "b"), (0.90, "b")):
        await register(stub, model, metrics={"accuracy": accuracy}, tags={"team": team})
    found = await stub.SearchModelVersions(
        pb.SearchModelVersionsRequest(
            models=[model],
            tags={"team": "b"},
            order_by="metrics.accuracy desc",
            metric_filters=[
                pb.MetricFilter(
                    metric="accuracy", comparison=common_pb2.COMPARISON_GREATER_OR_EQUAL, value=0.85
                )
            ],
        )
    )
    assert [v.metrics["accuracy"] for v in found.model_versions] == [0.95, 0.90]
    tagged = await stub.UpdateModelVersionTags(
        pb.UpdateModelVersionTagsRequest(
            model=model, version=1, set_tags={"stage": "archived"}, remove_tags=["team"]
        )
    )
    assert dict(tagged.tags) == {"stage": "archived"}


async def test_lineage_ties_data_run_evaluation_deployment_aliases_and_drift(registry, unique):
    stub, core, _ = registry
    dataset, model = f"ds-{unique}", f"lin-{unique}"
    await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=dataset, uri="s3://mlops/d/1.csv", sha256=sha(unique + "1"), format="csv"
        )
    )
    parent = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=dataset, uri="s3://mlops/d/2.csv", sha256=sha(unique + "2"), format="csv"
        )
    )
    await stub.CreateRun(
        pb.CreateRunRequest(run_id=f"run-{unique}", model=model, dataset=dataset, dataset_version=2)
    )
    version = await register(
        stub,
        model,
        run_id=f"run-{unique}",
        dataset=dataset,
        dataset_version=2,
        dataset_sha256=parent.dataset_version.sha256,
    )
    await stub.RecordEvaluation(
        pb.RecordEvaluationRequest(
            evaluation=pb.Evaluation(
                evaluation_id=f"ev-{unique}",
                model=model,
                version=version.version,
                passed=True,
                metrics={"accuracy": 0.9},
                gates=[evaluation_pb2.GateResult(gate="min_accuracy", passed=True)],
            )
        )
    )
    await stub.RecordDeployment(
        pb.RecordDeploymentRequest(
            deployment=pb.Deployment(
                rollout_id=f"ro-{unique}",
                model=model,
                version=version.version,
                strategy="canary",
                traffic_percent=10,
            )
        )
    )
    await stub.SetAlias(pb.SetAliasRequest(model=model, alias="production", version=version.version))
    async with core.database.transaction() as session:
        await core.record_monitor_event(
            f"drift-{unique}",
            monitoring_pb2.DriftDetected(
                model=model, version=version.version, method="psi", prediction_drift_score=0.4
            ),
            session,
        )
    with pytest.raises(NotFound, match=rf"names {model}@99, which the registry does not hold"):
        async with core.database.transaction() as session:
            await core.record_monitor_event(
                f"drift-{unique}-ghost", monitoring_pb2.DriftDetected(model=model, version=99), session
            )

    again = await stub.RecordEvaluation(
        pb.RecordEvaluationRequest(
            evaluation=pb.Evaluation(
                evaluation_id=f"ev-{unique}", model=model, version=version.version, passed=False
            )
        )
    )
    assert not again.created and again.evaluation.passed, "an evaluation is recorded once, by its id"
    fetched = await stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=f"ev-{unique}"))
    assert fetched.gates[0].gate == "min_accuracy"
    passed = await stub.ListEvaluations(pb.ListEvaluationsRequest(model=model, passed=True))
    assert [e.evaluation_id for e in passed.evaluations] == [f"ev-{unique}"]
    deployments = await stub.ListDeployments(pb.ListDeploymentsRequest(model=model, version=version.version))
    assert [d.traffic_percent for d in deployments.deployments] == [10]
    aliases = await stub.ListAliases(pb.ListAliasesRequest(model=model))
    assert [(a.alias, a.version) for a in aliases.aliases] == [("production", version.version)]

    lineage = await stub.GetLineage(pb.GetLineageRequest(model=model, alias="production"))
    assert lineage.model_version.version == version.version
    assert lineage.dataset_version.version == 2
    assert [a.version for a in lineage.dataset_ancestors] == [1]
    assert lineage.run.run_id == f"run-{unique}"
    assert [e.evaluation_id for e in lineage.evaluations] == [f"ev-{unique}"]
    assert [d.rollout_id for d in lineage.deployments] == [f"ro-{unique}"]
    assert [c.to_version for c in lineage.alias_changes] == [version.version]
    assert [d.prediction_drift_score for d in lineage.drift_events] == [0.4]


@pytest.fixture
async def commit_consumer(registry, kafka, database, artifact_settings):
    """The registry's DataCommitted handler on the real topic, in a consumer group of its own, with
    a core that reads every data set back from the real S3 as the service's does."""
    _, _, publisher = registry
    store = open_store(artifact_settings)
    core = RegistryCore(
        database, Outbox(SCHEMA, source="mlops-registry-tests"), RegistrySettings(), DatasetChecker(store)
    )
    handlers = RegistryHandlers(core)
    plain_bus = BusSettings(max_attempts=2, retry_backoff_ms=20)
    consumer = EventConsumer(
        kafka,
        plain_bus,
        group_id=f"registry-tests-{uuid.uuid4().hex[:8]}",
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
        from_end=True,
    )
    consumer.subscribe(data_pb2.DataCommitted, handlers.on_data_committed)
    await consumer.start()
    await consumer.wait_assigned()
    task = asyncio.create_task(consumer.run())
    yield store
    await consumer.stop()
    await task


async def test_a_json_data_commit_from_a_plain_producer_is_recorded_with_its_schema(
    registry, commit_consumer, kafka, unique, tmp_path: Path
):
    stub, _, _ = registry
    store = commit_consumer
    path = tmp_path / "data.csv"
    path.write_text("alcohol,colour,target\n13.2,red,1\n12.1,white,0\n14.0,red,1\n")
    ref = await store.put_file(f"datasets/ds-{unique}", "data.csv", path)
    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        body = {
            "dataset": f"ds-{unique}",
            "uri": ref.uri,
            "sha256": ref.sha256,
            "format": "csv",
            "committed_by": "nightly-export",
        }
        await producer.send_and_wait(
            "mlops.data.committed",
            json.dumps(body).encode(),
            key=f"ds-{unique}".encode(),
            headers=[("content-type", b"application/json"), ("ce_type", b"mlops.data.committed.v1")],
        )
    finally:
        await producer.stop()

    async def recorded():
        try:
            return await stub.GetDatasetVersion(
                pb.GetDatasetVersionRequest(dataset=f"ds-{unique}", version=1)
            )
        except grpc.aio.AioRpcError:
            return None

    version = await eventually(recorded, what="the committed data set recorded")
    assert (
        version.sha256 == ref.sha256 and version.row_count == 3 and version.committed_by == "nightly-export"
    )
    assert [(c.name, c.type) for c in version.columns] == [
        ("alcohol", "float64"),
        ("colour", "string"),
        ("target", "int64"),
    ]


async def test_a_data_commit_whose_sha256_does_not_match_goes_to_the_dlq(
    registry, commit_consumer, kafka, unique
):
    _, _, publisher = registry
    store = commit_consumer
    ref = await store.put_bytes(f"datasets/ds-{unique}", "data.csv", b"a,b\n1,2\n")
    async with raw_reader(kafka, "mlops.data.committed" + DLQ_SUFFIX) as dlq:
        await publisher.publish(
            data_pb2.DataCommitted(dataset=f"ds-{unique}", uri=ref.uri, sha256="0" * 64, format="csv")
        )
        await publisher.publish(
            data_pb2.DataCommitted(
                dataset=f"ds-{unique}-missing",
                uri=ref.uri.replace("data.csv", "gone.csv"),
                sha256=ref.sha256,
                format="csv",
            )
        )
        mismatch = await read_until(dlq, lambda r: r.key == f"ds-{unique}".encode())
        missing = await read_until(dlq, lambda r: r.key == f"ds-{unique}-missing".encode())
    reason = dict(mismatch.headers)["mlops_dlq_reason"].decode()
    assert "refusing to use it" in reason and "0" * 64 in reason
    assert "does not exist" in dict(missing.headers)["mlops_dlq_reason"].decode()


async def test_registrations_and_recorded_versions_are_announced_on_kafka(registry, kafka, unique):
    from mlops.events.v1 import model_pb2

    stub, _, _ = registry
    async with (
        raw_reader(kafka, "mlops.model.registered") as registered,
        raw_reader(kafka, "mlops.dataset.recorded") as recorded,
    ):
        version = await register(stub, f"ann-{unique}", metrics={"accuracy": 0.9}, dataset=f"ds-{unique}")
        await stub.RecordDatasetVersion(
            pb.RecordDatasetVersionRequest(
                dataset=f"ds-{unique}", uri="s3://mlops/d.csv", sha256=sha(unique), format="csv", row_count=7
            )
        )
        model_record = await read_until(registered, lambda r: r.key == f"ann-{unique}".encode())
        data_record = await read_until(recorded, lambda r: r.key == f"ds-{unique}".encode())
    event = model_pb2.ModelRegistered.FromString(model_record.value)
    assert (event.model, event.version, event.artifact_sha256) == (version.model, version.version, "a" * 64)
    assert event.metrics["accuracy"] == 0.9 and event.registered_at == version.created_at
    data_event = data_pb2.DatasetVersionRecorded.FromString(data_record.value)
    assert (data_event.version, data_event.sha256, data_event.row_count) == (1, sha(unique), 7)
