"""Composition root of the registry: settings → database (wait, migrate) → core → gRPC and Kafka → run."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mlops.bus import EventConsumer, EventPublisher, Inbox, Outbox, OutboxRelay
from mlops.db import Database, migrate
from mlops.events.v1 import data_pb2, monitoring_pb2
from mlops.grpc import GrpcServer
from mlops.lifecycle import stop_in_order, wait_for_stop
from mlops.registry.v1 import registry_pb2, registry_pb2_grpc
from mlops.settings import (
    ArtifactSettings,
    BusSettings,
    DatabaseSettings,
    GrpcServerSettings,
    KafkaSettings,
    TelemetrySettings,
)
from mlops.store import open_store
from mlops.telemetry import setup_telemetry
from services.registry.core import RegistryCore
from services.registry.handlers import RegistryHandlers
from services.registry.servicer import RegistryServicer
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA

SERVICE = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("mlops.registry")


async def main() -> None:
    settings = RegistrySettings()
    kafka, bus = KafkaSettings(), BusSettings()
    telemetry = setup_telemetry(SERVICE, TelemetrySettings(metrics_port=settings.metrics_port))
    source = telemetry.service_name

    database = Database(DatabaseSettings())
    await database.wait_ready()
    await migrate(database, MIGRATIONS, SCHEMA)

    publisher = EventPublisher(kafka, bus, source=source)
    await publisher.start()
    outbox = Outbox(SCHEMA, source=source, topic_prefix=bus.topic_prefix)
    core = RegistryCore(database, outbox, settings)
    handlers = RegistryHandlers(core, open_store(ArtifactSettings()), verify=settings.verify_data_commits)

    consumer = EventConsumer(
        kafka,
        bus,
        group_id=settings.consumer_group,
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
    )
    consumer.subscribe(data_pb2.DataCommitted, handlers.on_data_committed)
    consumer.subscribe(monitoring_pb2.DriftDetected, handlers.on_monitor_event)
    consumer.subscribe(monitoring_pb2.PerformanceDegraded, handlers.on_monitor_event)
    relay = OutboxRelay(database, SCHEMA, publisher, bus)

    server = GrpcServer(GrpcServerSettings(host=settings.grpc_host, port=settings.grpc_port))
    server.add(
        lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(core), s),
        registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
    )
    port = await server.start()
    await consumer.start()
    tasks = [
        asyncio.create_task(consumer.run(), name="consumer"),
        asyncio.create_task(relay.run(), name="relay"),
    ]
    await server.set_serving()
    log.info("registry ready: gRPC on %s:%d", settings.grpc_host, port)

    await wait_for_stop(tasks)
    log.info("registry stopping")
    await stop_in_order(
        [
            ("gRPC server", server.stop),
            ("consumer", consumer.stop),
            ("outbox relay", relay.stop),
            ("background tasks", lambda: asyncio.gather(*tasks, return_exceptions=True)),
            ("publisher", publisher.stop),
            ("database", database.close),
            ("telemetry", lambda: asyncio.to_thread(telemetry.shutdown)),
        ]
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
