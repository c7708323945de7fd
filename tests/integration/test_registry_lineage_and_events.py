"""The registry's lineage over its gRPC API, its Kafka consumer of DataCommitted and its announcements on
Kafka, against the real PostgreSQL, Kafka and S3."""

# The registry fixture, imported from registry_helpers: pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaProducer

from mlops.bus import EventConsumer, Inbox
from mlops.errors import NotFound
from mlops.event_catalog import DLQ_SUFFIX
from mlops.events.v1 import data_pb2, evaluation_pb2, monitoring_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.settings import BusSettings
from mlops.store import open_store
from services.registry.core import RegistryCore
from services.registry.datasets import DatasetChecker
from services.registry.handlers import RegistryHandlers
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import eventually
from tests.integration.registry_helpers import (
    register,
    registry,  # noqa: F401 - fixture
    sha,
)


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
