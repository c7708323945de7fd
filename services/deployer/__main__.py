"""Composition root of the deployer: the shared runtime, the core with its registry and monitor
peers, the `ModelEvaluated` handler, the `Deployer` API and the watch over running rollouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlops.bus import ensure_topics
from mlops.event_catalog import spec_for
from mlops.events.v1 import deployment_pb2, evaluation_pb2
from mlops.grpc import open_channel
from mlops.service import ServiceRuntime, run
from services.deployer.clients import MonitorClient, RegistryClient
from services.deployer.core import DeployerCore
from services.deployer.handlers import DeployerHandlers
from services.deployer.servicer import SERVICE_NAME, DeployerServicer
from services.deployer.settings import DeployerSettings
from services.deployer.tables import SCHEMA

MIGRATIONS = Path(__file__).parent / "migrations"

PUBLISHED = (
    deployment_pb2.DesiredState,
    deployment_pb2.RolloutProgressed,
    deployment_pb2.ModelDeployed,
    deployment_pb2.ModelRolledBack,
)


def published_topics(prefix: str) -> list[str]:
    """The topics the deployer writes; created up front so that desired state is compacted."""
    return [prefix + spec_for(event).topic for event in PUBLISHED]


async def main() -> None:
    settings = DeployerSettings()
    runtime = ServiceRuntime("deployer", settings, schema=SCHEMA, migrations=MIGRATIONS)
    await runtime.start()
    await ensure_topics(runtime.kafka, runtime.bus, published_topics(runtime.bus.topic_prefix))
    registry_channel = open_channel(settings.registry_addr)
    monitor_channel = open_channel(settings.monitor_addr)
    core = DeployerCore(
        runtime.database,
        RegistryClient(registry_channel, timeout_s=settings.registry_timeout_s),
        MonitorClient(monitor_channel, timeout_s=settings.monitor_timeout_s),
        runtime.outbox,
        settings,
        scope=runtime.bus.topic_prefix,
    )
    runtime.subscribe(evaluation_pb2.ModelEvaluated, DeployerHandlers(core).on_model_evaluated)
    runtime.add_api(DeployerServicer(core).register, SERVICE_NAME)
    stopping = asyncio.Event()

    async def stop_watch() -> None:
        stopping.set()

    runtime.on_stop("rollout watch", stop_watch)
    runtime.on_stop("registry channel", registry_channel.close)
    runtime.on_stop("monitor channel", monitor_channel.close)
    await runtime.serve(lambda: [asyncio.create_task(core.watch(stopping), name="rollout watch")])


if __name__ == "__main__":
    run(main)
