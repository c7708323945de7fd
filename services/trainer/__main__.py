"""Composition root of the trainer: the shared runtime, a pool of training processes, the core, its handlers and workers."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from mlops.events.v1 import data_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.service import ServiceRuntime, run
from mlops.settings import ArtifactSettings
from mlops.store import open_store
from services.trainer.clients import RegistryClient
from services.trainer.core import TrainerCore
from services.trainer.handlers import TrainerHandlers
from services.trainer.pool import TrainingPool, spawned_executor
from services.trainer.settings import TrainerSettings
from services.trainer.tables import SCHEMA
from services.trainer.training import init_worker

MIGRATIONS = Path(__file__).parent / "migrations"


def training_pool(settings: TrainerSettings) -> TrainingPool:
    """One spawned worker process per job that may run at once (see `services.trainer.pool`)."""
    return TrainingPool(
        settings.max_parallel_jobs, partial(spawned_executor, init_worker, settings.torch_threads)
    )


async def stop_pool(pool: TrainingPool) -> None:
    """Stop the workers now: a run in flight is abandoned (its job went back to the queue)."""
    await pool.stop()


async def main() -> None:
    settings = TrainerSettings()
    runtime = ServiceRuntime("trainer", settings, schema=SCHEMA, migrations=MIGRATIONS)
    await runtime.start()
    channel = open_channel(settings.registry_addr)
    pool = training_pool(settings)
    core = TrainerCore(
        database=runtime.database,
        outbox=runtime.outbox,
        registry=RegistryClient(channel, timeout_s=settings.registry_timeout_s),
        store=open_store(ArtifactSettings()),
        pool=pool,
        settings=settings,
    )
    handlers = TrainerHandlers(core)
    runtime.subscribe(data_pb2.DatasetVersionRecorded, handlers.on_dataset_recorded)
    runtime.subscribe(training_pb2.RetrainRequested, handlers.on_retrain_requested)
    runtime.on_stop("training workers", core.stop)
    runtime.on_stop("training processes", lambda: stop_pool(pool))
    runtime.on_stop("registry channel", channel.close)
    await runtime.serve(background=core.start_workers)


if __name__ == "__main__":
    run(main)
