"""The trainer's integration harness, shared by the test_trainer_* modules.

The trainer runs in this process (its consumer, outbox relay and workers; training in spawned
worker processes) on topics prefixed `tests.trainer.`, so that services running beside the tests
never see these events. The registry is the one the local stack runs (`MLOPS_REGISTRY_ADDR`).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from google.protobuf import json_format

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.db import migrate
from mlops.events.v1 import data_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings
from mlops.store import open_store
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
