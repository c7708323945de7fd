"""Composition root of the evaluator: the shared runtime (its gRPC server carries only the health
service, so that it is operated like every other service), the core and its event handler."""

from __future__ import annotations

from pathlib import Path

from mlops.events.v1 import data_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.service import ServiceRuntime, run
from mlops.settings import ArtifactSettings
from mlops.store import open_store
from services.evaluator.clients import RegistryClient
from services.evaluator.core import EvaluatorCore
from services.evaluator.handlers import EvaluatorHandlers
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.tables import SCHEMA

MIGRATIONS = Path(__file__).parent / "migrations"


async def main() -> None:
    settings = EvaluatorSettings()
    runtime = ServiceRuntime("evaluator", settings, schema=SCHEMA, migrations=MIGRATIONS)
    await runtime.start()
    channel = open_channel(settings.registry_addr)
    core = EvaluatorCore(
        RegistryClient(channel, timeout_s=settings.registry_timeout_s),
        open_store(ArtifactSettings()),
        runtime.outbox,
        settings,
    )
    handlers = EvaluatorHandlers(core)
    runtime.subscribe(training_pb2.ModelTrained, handlers.on_model_trained)
    runtime.subscribe(data_pb2.DatasetVersionRecorded, handlers.on_dataset_recorded)
    runtime.on_stop("registry channel", channel.close)
    await runtime.serve()


if __name__ == "__main__":
    run(main)
