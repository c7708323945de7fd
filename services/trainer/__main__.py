"""Composition root of the trainer: settings → database (wait, migrate) → pool, core → Kafka, workers, health → run."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlops.bus import EventConsumer, EventPublisher, Inbox, Outbox, OutboxRelay
from mlops.db import Database, migrate
from mlops.events.v1 import data_pb2, training_pb2
from mlops.grpc import GrpcServer, open_channel
from mlops.lifecycle import stop_in_order, wait_for_stop
from mlops.registry.v1 import registry_pb2_grpc
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
from services.trainer.core import RegistryClient, TrainerCore
from services.trainer.handlers import TrainerHandlers
from services.trainer.settings import TrainerSettings
from services.trainer.tables import SCHEMA
from services.trainer.training import init_worker

SERVICE = "trainer"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("mlops.trainer")


def training_pool(settings: TrainerSettings) -> ProcessPoolExecutor:
    """Worker processes for training. Spawned, not forked: a fork would copy the event loop, the
    gRPC and Kafka clients and their threads into the child, and CUDA refuses to start in a fork."""
    return ProcessPoolExecutor(
        max_workers=settings.max_parallel_jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(settings.torch_threads,),
    )


async def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: a run in flight is abandoned (its job went back to the queue)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:  # the executor has no public way to stop a busy worker
        if process.is_alive():
            process.terminate()
    await asyncio.to_thread(lambda: [p.join(5) for p in processes])


async def main() -> None:
    settings = TrainerSettings()
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
    pool = training_pool(settings)
    core = TrainerCore(
        database=database,
        outbox=outbox,
        registry=RegistryClient(registry_pb2_grpc.RegistryStub(channel), settings.registry_timeout_s),
        store=open_store(ArtifactSettings()),
        pool=pool,
        settings=settings,
    )
    handlers = TrainerHandlers(core)
    consumer = EventConsumer(
        kafka,
        bus,
        group_id=settings.consumer_group,
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
    )
    consumer.subscribe(data_pb2.DataCommitted, handlers.on_data_committed)
    consumer.subscribe(training_pb2.RetrainRequested, handlers.on_retrain_requested)
    relay = OutboxRelay(database, SCHEMA, publisher, bus)

    # No API of its own: the gRPC server carries the standard health service for probes.
    server = GrpcServer(GrpcServerSettings(host=settings.grpc_host, port=settings.grpc_port))
    port = await server.start()
    await consumer.start()
    tasks = [
        asyncio.create_task(consumer.run(), name="consumer"),
        asyncio.create_task(relay.run(), name="relay"),
        *core.start_workers(),
    ]
    await server.set_serving()
    log.info(
        "trainer ready: health on %s:%d, registry at %s", settings.grpc_host, port, settings.registry_addr
    )

    await wait_for_stop(tasks)
    log.info("trainer stopping")
    await stop_in_order(
        [
            ("gRPC server", server.stop),
            ("consumer", consumer.stop),
            ("training workers", core.stop),
            ("training processes", lambda: stop_pool(pool)),
            ("outbox relay", relay.stop),
            ("background tasks", lambda: asyncio.gather(*tasks, return_exceptions=True)),
            ("publisher", publisher.stop),
            ("registry channel", channel.close),
            ("database", database.close),
            ("telemetry", lambda: asyncio.to_thread(telemetry.shutdown)),
        ]
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
