"""Composition root of the evaluator: settings → database (wait, migrate) → core → Kafka → run.

Its gRPC server carries only the health service, so that it is operated like every other service.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mlops.bus import EventConsumer, EventPublisher, Inbox, Outbox, OutboxRelay
from mlops.db import Database, migrate
from mlops.events.v1 import training_pb2
from mlops.grpc import GrpcServer, open_channel
from mlops.lifecycle import stop_in_order, wait_for_stop
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
from services.evaluator.clients import RegistryClient
from services.evaluator.core import EvaluatorCore
from services.evaluator.handlers import EvaluatorHandlers
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.tables import SCHEMA

SERVICE = "evaluator"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("mlops.evaluator")


async def main() -> None:
    settings = EvaluatorSettings()
    kafka, bus = KafkaSettings(), BusSettings()
    telemetry = setup_telemetry(SERVICE, TelemetrySettings(metrics_port=settings.metrics_port))
    source = telemetry.service_name

    database = Database(DatabaseSettings())
    await database.wait_ready()
    await migrate(database, MIGRATIONS, SCHEMA)

    publisher = EventPublisher(kafka, bus, source=source)
    await publisher.start()
    outbox = Outbox(SCHEMA, source=source, topic_prefix=bus.topic_prefix)
    channel = open_channel(settings.registry_addr)
    core = EvaluatorCore(
        RegistryClient(channel, timeout_s=settings.registry_timeout_s),
        open_store(ArtifactSettings()),
        outbox,
        settings,
    )
    consumer = EventConsumer(
        kafka,
        bus,
        group_id=settings.consumer_group,
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
    )
    consumer.subscribe(training_pb2.ModelTrained, EvaluatorHandlers(core).on_model_trained)
    relay = OutboxRelay(database, SCHEMA, publisher, bus)

    server = GrpcServer(GrpcServerSettings(host=settings.grpc_host, port=settings.grpc_port))
    port = await server.start()
    await consumer.start()
    tasks = [
        asyncio.create_task(consumer.run(), name="consumer"),
        asyncio.create_task(relay.run(), name="relay"),
    ]
    await server.set_serving()
    log.info(
        "evaluator ready: health on %s:%d, registry at %s", settings.grpc_host, port, settings.registry_addr
    )

    await wait_for_stop(tasks)
    log.info("evaluator stopping")
    await stop_in_order(
        [
            ("gRPC server", server.stop),
            ("consumer", consumer.stop),
            ("outbox relay", relay.stop),
            ("background tasks", lambda: asyncio.gather(*tasks, return_exceptions=True)),
            ("registry channel", channel.close),
            ("publisher", publisher.stop),
            ("database", database.close),
            ("telemetry", lambda: asyncio.to_thread(telemetry.shutdown)),
        ]
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
