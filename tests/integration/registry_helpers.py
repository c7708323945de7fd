"""What the registry's integration tests share: the registry's servicer on a free port (a module fixture)
with its outbox relay publishing to the real Kafka, a ModelSpec read from YAML, a model version
registered."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
import yaml
from google.protobuf import json_format

from mlops.bus import EventPublisher, OutboxRelay
from mlops.grpc import GrpcServer, open_channel
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings, GrpcServerSettings
from services.registry.__main__ import MIGRATIONS
from services.registry.core import RegistryCore
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA

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


# --- Models registered from outside, and files (RegisterModel, DownloadArtifact, UploadRunArtifact) ---


@pytest.fixture(scope="module")
async def file_registry(database, kafka, bus, artifact_settings):
    """The registry with the artifact store, as `python -m services.registry` builds it; its events go
    to the tests' topics (`tests.` prefix), so that the stack's evaluator never gates these models."""
    from mlops.db import migrate
    from mlops.store import open_store
    from services.registry.datasets import DatasetChecker

    await migrate(database, MIGRATIONS, SCHEMA)
    store = open_store(artifact_settings)
    publisher = EventPublisher(kafka, bus, source="mlops-registry-tests")
    await publisher.start()
    outbox = Outbox(SCHEMA, source="mlops-registry-tests", topic_prefix=bus.topic_prefix)
    core = RegistryCore(database, outbox, RegistrySettings(), DatasetChecker(store), store=store)
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
    yield registry_pb2_grpc.RegistryStub(channel), store, f"127.0.0.1:{port}"
    await channel.close()
    await server.stop()
    await relay.stop()
    await relay_task
    await publisher.stop()


async def record_frame(stub, store, dataset: str, frame) -> pb.DatasetVersion:
    """A data frame committed as CSV and recorded by the registry (which reads its columns back)."""
    data = frame.to_csv(index=False).encode()
    ref = await store.put_bytes(f"datasets/{dataset}", "data.csv", data)
    reply = await stub.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=dataset, uri=ref.uri, sha256=ref.sha256, format="csv", committed_by="tests"
        )
    )
    return reply.dataset_version


async def register_bytes(
    stub, data: bytes, *, chunk: int = 1 << 20, **header: object
) -> pb.RegisterModelVersionResponse:
    """RegisterModel with `data` in chunks of `chunk` bytes after the header."""

    async def parts():
        yield pb.RegisterModelRequest(header=pb.RegisterModelRequest.Header(**header))
        for offset in range(0, len(data), chunk):
            yield pb.RegisterModelRequest(chunk=data[offset : offset + chunk])

    return await stub.RegisterModel(parts())


async def download_bytes(stub, request: pb.DownloadArtifactRequest) -> tuple[bytes, pb.ArtifactChunk]:
    """The artifact's bytes joined, and its first chunk (which says the size, sha256 and uri)."""
    chunks = [chunk async for chunk in stub.DownloadArtifact(request)]
    return b"".join(c.data for c in chunks), chunks[0]
