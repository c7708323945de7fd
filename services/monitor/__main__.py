"""Composition root of the monitor: the shared runtime (gRPC `Monitor`, the ground-truth consumer,
the outbox relay), the inference-log ingest with its own offsets, and the ground-truth loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mlops.events.v1 import monitoring_pb2
from mlops.grpc import open_channel
from mlops.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from mlops.service import ServiceRuntime, run
from mlops.settings import ArtifactSettings
from mlops.store import open_store
from services.monitor.clients import ModelCatalog, RegistryClient
from services.monitor.core import MonitorCore
from services.monitor.handlers import MonitorHandlers
from services.monitor.ingest import InferenceLogIngest, inference_group
from services.monitor.performance import PerformanceTracker
from services.monitor.servicer import MonitorServicer
from services.monitor.settings import MonitorSettings
from services.monitor.tables import SCHEMA

MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


class GroundTruthLoop:
    """Joins labels and closes performance windows every tick until stopped."""

    def __init__(self, tracker: PerformanceTracker, interval_s: float) -> None:
        self.tracker = tracker
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tracker.tick()
            except Exception as error:  # an outage: the next tick tries again
                log.warning("ground truth: %s", error)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping.set()


async def main() -> None:
    settings = MonitorSettings()
    runtime = ServiceRuntime("monitor", settings, schema=SCHEMA, migrations=MIGRATIONS)
    await runtime.start()
    channel = open_channel(settings.registry_addr)
    registry = RegistryClient(channel, timeout_s=settings.registry_timeout_s)
    store = open_store(ArtifactSettings())
    catalog = ModelCatalog(
        registry,
        store,
        spec_ttl_s=settings.spec_cache_s,
        unknown_ttl_s=settings.unknown_model_cache_s,
        max_models=settings.max_cached_models,
        max_versions=settings.max_cached_versions,
    )
    core = MonitorCore(
        database=runtime.database,
        outbox=runtime.outbox,
        catalog=catalog,
        registry=registry,
        store=store,
        settings=settings,
        consumer_group=inference_group(settings),
    )
    tracker = PerformanceTracker(
        database=runtime.database, outbox=runtime.outbox, catalog=catalog, core=core, settings=settings
    )
    runtime.subscribe(monitoring_pb2.GroundTruthLogged, MonitorHandlers(tracker).on_ground_truth)
    runtime.add_api(
        lambda server: monitor_pb2_grpc.add_MonitorServicer_to_server(MonitorServicer(core), server),
        monitor_pb2.DESCRIPTOR.services_by_name["Monitor"].full_name,
    )
    ingest = InferenceLogIngest(
        runtime.kafka, runtime.bus, core=core, publisher=runtime.publisher, settings=settings
    )
    await ingest.start()
    truth_loop = GroundTruthLoop(tracker, settings.tick_interval_ms / 1000)
    runtime.on_stop("inference logs", ingest.stop)
    runtime.on_stop("ground truth", truth_loop.stop)
    runtime.on_stop("registry channel", channel.close)
    await runtime.serve(
        lambda: (
            asyncio.create_task(ingest.run(), name="inference logs"),
            asyncio.create_task(truth_loop.run(), name="ground truth"),
        )
    )


if __name__ == "__main__":
    run(main)
