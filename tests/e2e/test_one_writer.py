"""One writer per data set version: however a commit arrives, repeats and races, the registry records
it once and the trainer trains each spec on it once. Against the running stack."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from sklearn.datasets import load_wine
from sqlalchemy import text

from mlops.bus import EventPublisher
from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings, KafkaSettings
from tests.e2e.conftest import mlops
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import database, eventually  # noqa: F401 - shared fixtures

REGISTRY = os.environ.get("MLOPS_REGISTRY_ADDR", "127.0.0.1:50051")
SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {name}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{hidden_layers: [16], epochs: {epochs}, learning_rate: 0.01, batch_size: 32, seed: 7}}
  gate: {{metric: accuracy, min: 0.5, max_regression: 0.5, max_p99_latency_ms: 200}}
"""


async def _handled(database, schema: str, event_ids: list[str]) -> bool:  # noqa: F811 - the fixture's value
    async with database.session() as session:
        rows = (
            await session.exec(
                text(f'SELECT count(*) FROM "{schema}".inbox WHERE event_id = ANY(:ids)'),
                params={"ids": event_ids},
            )
        ).scalar_one()
    return rows == len(event_ids)


async def _jobs_of(database, model: str) -> list[tuple[int, int, int]]:  # noqa: F811
    async with database.session() as session:
        rows = (
            await session.exec(
                text(
                    'SELECT spec_version, dataset_version, trigger FROM "trainer".training_jobs '
                    "WHERE model = :m ORDER BY spec_version"
                ),
                params={"m": model},
            )
        ).all()
    return [tuple(row) for row in rows]


@pytest.mark.timeout(420)
async def test_replayed_and_racing_commits_record_once_and_train_once(
    kafka,
    database,  # noqa: F811
    unique,
    tmp_path: Path,
):
    model, dataset = f"once-{unique}", f"oncedata-{unique}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name=model, dataset=dataset, epochs=5))
    mlops("apply", "-f", str(spec))
    data = tmp_path / "wine.csv"
    load_wine(as_frame=True).frame.to_csv(data, index=False)
    publisher = EventPublisher(KafkaSettings(), BusSettings(), source="mlops-tests")
    await publisher.start()
    channel = open_channel(REGISTRY)
    registry = registry_pb2_grpc.RegistryStub(channel)
    try:
        async with raw_reader(kafka, "mlops.model.trained") as trained:
            committed = mlops("data", "commit", str(data), "--dataset", dataset)
            version = committed["datasetVersion"]
            assert committed["created"] is True and version["version"] == "1"
            commit = data_pb2.DataCommitted(
                dataset=dataset,
                uri=version["uri"],
                sha256=version["sha256"],
                format="csv",
                committed_by="etl",
            )
            # While the first training runs: the commit's own id replayed, fresh ids for the same bytes
            # from an upstream producer, and a person committing the same file again, all at once.
            fresh = [f"again-{unique}-{i}" for i in range(3)]
            await asyncio.gather(
                *(publisher.publish(commit, event_id=committed["eventId"]) for _ in range(3)),
                *(publisher.publish(commit, event_id=event_id) for event_id in fresh),
                asyncio.to_thread(mlops, "data", "commit", str(data), "--dataset", dataset),
            )
            first = await read_until(
                trained, lambda r: training_pb2.ModelTrained.FromString(r.value).model == model, timeout_s=180
            )
            first = training_pb2.ModelTrained.FromString(first.value)
            await eventually(
                lambda: _handled(database, "registry", fresh),
                timeout_s=60,
                what="the repeated commits handled",
            )
            assert first.version == 1 and first.dataset_version == 1
            assert first.trigger == common_pb2.TRAINING_TRIGGER_DATA_COMMITTED
            run = await registry.GetRun(pb.GetRunRequest(run_id=first.run_id))
            assert run.trigger_event_id == committed["eventId"], "the job answers to the person's commit"

            # A person asks for a retrain of what is trained already: nothing new; then the spec
            # changes and the same request trains the new spec on the same data, once.
            asked = await registry.RequestRetrain(pb.RequestRetrainRequest(model=model, reason="tests"))
            assert (asked.spec_version, asked.dataset, asked.dataset_version) == (1, dataset, 1)
            assert asked.requested_by == "user:admin"
            spec.write_text(SPEC.format(name=model, dataset=dataset, epochs=6))
            mlops("apply", "-f", str(spec))
            retrains = await asyncio.gather(
                *(
                    registry.RequestRetrain(
                        pb.RequestRetrainRequest(model=model, dataset=dataset, dataset_version=1)
                    )
                    for _ in range(3)
                )
            )
            assert {r.spec_version for r in retrains} == {2}
            second = await read_until(
                trained, lambda r: training_pb2.ModelTrained.FromString(r.value).model == model, timeout_s=180
            )
            second = training_pb2.ModelTrained.FromString(second.value)
            ids = [asked.event_id, *(r.event_id for r in retrains)]
            await eventually(
                lambda: _handled(database, "trainer", ids), timeout_s=60, what="the retrains handled"
            )
    finally:
        await publisher.stop()
        await channel.close()

    assert (second.version, second.spec_version, second.dataset_version) == (2, 2, 1)
    assert second.trigger == common_pb2.TRAINING_TRIGGER_MANUAL
    versions = await registry_versions(dataset)
    assert versions == [1], "the registry recorded the data once"
    assert await _jobs_of(database, model) == [
        (1, 1, common_pb2.TRAINING_TRIGGER_DATA_COMMITTED),
        (2, 1, common_pb2.TRAINING_TRIGGER_MANUAL),
    ]
    listed = mlops("models", "list", model)
    assert sorted(int(v["version"]) for v in listed["modelVersions"]) == [1, 2]


async def registry_versions(dataset: str) -> list[int]:
    listed = mlops("data", "list", dataset)
    return [int(v["version"]) for v in listed["versions"]]


async def test_a_retrain_is_refused_with_the_reason_when_it_cannot_happen(unique, tmp_path: Path):
    model, dataset = f"refused-{unique}", f"refuseddata-{unique}"
    async with open_channel(REGISTRY) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.RequestRetrain(pb.RequestRetrainRequest(model=model))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        assert model in caught.value.details()

        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC.format(name=model, dataset=dataset, epochs=5))
        mlops("apply", "-f", str(spec))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.RequestRetrain(pb.RequestRetrainRequest(model=model))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, "no version of its data set yet"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.RequestRetrain(pb.RequestRetrainRequest(model=model, dataset="elsewhere"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"trains on data set {dataset!r}, not 'elsewhere'" in caught.value.details()

        outside = SPEC.format(name=model, dataset=dataset, epochs=5).replace(
            "seed: 7", "seed: 7, external: true"
        )
        spec.write_text(outside)
        mlops("apply", "-f", str(spec))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry.RequestRetrain(pb.RequestRetrainRequest(model=model))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "trained outside the platform" in caught.value.details()
