"""Composition root of the registry: the shared runtime, the core, its gRPC API and its event handlers."""

from __future__ import annotations

from pathlib import Path

from mlops.events.v1 import data_pb2, monitoring_pb2
from mlops.registry.v1 import registry_pb2, registry_pb2_grpc
from mlops.service import ServiceRuntime, run
from mlops.settings import ArtifactSettings
from mlops.store import open_store
from services.registry.core import RegistryCore
from services.registry.datasets import DatasetChecker
from services.registry.handlers import RegistryHandlers
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA

MIGRATIONS = Path(__file__).parent / "migrations"


async def main() -> None:
    settings = RegistrySettings()
    runtime = ServiceRuntime("registry", settings, schema=SCHEMA, migrations=MIGRATIONS)
    await runtime.start()
    # Data sets recorded over gRPC are checked as those committed on Kafka are.
    store = open_store(ArtifactSettings())
    datasets = DatasetChecker(store) if settings.verify_data_commits else None
    core = RegistryCore(runtime.database, runtime.outbox, settings, datasets, store=store)
    handlers = RegistryHandlers(core)
    runtime.subscribe(data_pb2.DataCommitted, handlers.on_data_committed)
    runtime.subscribe(monitoring_pb2.DriftDetected, handlers.on_monitor_event)
    runtime.subscribe(monitoring_pb2.PerformanceDegraded, handlers.on_monitor_event)
    runtime.add_api(
        lambda server: registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(core), server),
        registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
    )
    await runtime.serve()


if __name__ == "__main__":
    run(main)
