"""What every service's composition root builds the same way, so that knowing one means knowing all.

    runtime = ServiceRuntime("registry", RegistrySettings(), schema=SCHEMA, migrations=MIGRATIONS)
    await runtime.start()                 # telemetry, database (waited for, migrated), publisher
    core = RegistryCore(runtime.database, runtime.outbox, settings)
    runtime.subscribe(DataCommitted, handlers.on_data_committed)
    runtime.add_api(register, "mlops.registry.v1.Registry")
    await runtime.serve()                 # gRPC + health, consumer, outbox relay; until SIGTERM

`serve()` flips health to SERVING only once everything runs, and stops in order within deadlines
whatever is down: the API first, then the consumer (its batch in hand committed), the service's own
steps, the relay, the publisher, the database, the exporter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from google.protobuf.message import Message

from mlops.bus import EventConsumer, EventPublisher, Handler, Inbox, OutboxRelay
from mlops.db import Database, migrate
from mlops.grpc import GrpcServer
from mlops.grpc.server import Registration
from mlops.lifecycle import stop_in_order, wait_for_stop
from mlops.outbox import Outbox
from mlops.settings import BusSettings, DatabaseSettings, KafkaSettings, ServiceSettings, TelemetrySettings
from mlops.telemetry import Telemetry, setup_telemetry

log = logging.getLogger(__name__)

StopStep = tuple[str, Callable[[], Awaitable[object]]]


class ServiceRuntime:
    def __init__(self, service: str, settings: ServiceSettings, *, schema: str, migrations: Path) -> None:
        self.service = service
        self.schema = schema
        self.migrations = migrations
        self.kafka = KafkaSettings()
        self.bus = BusSettings()
        self.server = GrpcServer(settings.grpc_server())
        self._metrics_port = settings.metrics_port
        self._consumer_group = settings.consumer_group
        self._stop_steps: list[StopStep] = []
        self.telemetry: Telemetry
        self.database: Database
        self.publisher: EventPublisher
        self.outbox: Outbox
        self.consumer: EventConsumer

    async def start(self) -> None:
        """Telemetry, then the database (waited for with a deadline, migrated), then the publisher."""
        self.telemetry = setup_telemetry(self.service, TelemetrySettings(metrics_port=self._metrics_port))
        source = self.telemetry.service_name
        self.database = Database(DatabaseSettings())
        await self.database.wait_ready()
        await migrate(self.database, self.migrations, self.schema)
        self.publisher = EventPublisher(self.kafka, self.bus, source=source)
        await self.publisher.start()
        self.outbox = Outbox(self.schema, source=source, topic_prefix=self.bus.topic_prefix)
        self.consumer = EventConsumer(
            self.kafka,
            self.bus,
            group_id=self._consumer_group,
            publisher=self.publisher,
            database=self.database,
            inbox=Inbox(self.schema),
        )

    def subscribe(self, event: type[Message], handler: Handler) -> None:
        """Handle `event` idempotently: inbox and state change in one transaction."""
        self.consumer.subscribe(event, handler)

    def add_api(self, register: Registration, service_name: str) -> None:
        self.server.add(register, service_name)

    def on_stop(self, name: str, step: Callable[[], Awaitable[object]]) -> None:
        """A step of the service's own, run after the consumer has stopped and before the relay does."""
        self._stop_steps.append((name, step))

    async def serve(self, background: Callable[[], Iterable[asyncio.Task]] = tuple) -> None:
        """Run until SIGTERM or SIGINT (or a background task's end), then stop in order."""
        relay = OutboxRelay(self.database, self.schema, self.publisher, self.bus)
        port = await self.server.start()
        await self.consumer.start()
        tasks = [
            asyncio.create_task(self.consumer.run(), name="consumer"),
            asyncio.create_task(relay.run(), name="relay"),
            *background(),
        ]
        await self.server.set_serving()
        log.info("%s ready: gRPC on %s:%d", self.service, self.server.settings.host, port)

        await wait_for_stop(tasks)
        log.info("%s stopping", self.service)
        await stop_in_order(
            [
                ("gRPC server", self.server.stop),
                ("consumer", self.consumer.stop),
                *self._stop_steps,
                ("outbox relay", relay.stop),
                ("background tasks", lambda: asyncio.gather(*tasks, return_exceptions=True)),
                ("publisher", self.publisher.stop),
                ("database", self.database.close),
                ("telemetry", lambda: asyncio.to_thread(self.telemetry.shutdown)),
            ]
        )


def run(main: Callable[[], Awaitable[None]]) -> None:
    """The entry point of `python -m services.<name>`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
