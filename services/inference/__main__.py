"""Composition root of the inference server: `python -m services.inference`.

Stateless (no database): it reads the desired serving state from Kafka, loads models from the
artifact store, answers the Open Inference Protocol with gRPC health on the same port, and logs
predictions to Kafka.
"""

from __future__ import annotations

import asyncio
import logging

from mlops.lifecycle import wait_for_stop
from mlops.service import run
from mlops.settings import ArtifactSettings, BusSettings, KafkaSettings, TelemetrySettings
from mlops.store import open_store
from mlops.telemetry import setup_telemetry
from services.inference.app import InferenceApp
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


async def main() -> None:
    settings = InferenceSettings()
    telemetry = setup_telemetry("inference", TelemetrySettings(metrics_port=settings.metrics_port))
    app = InferenceApp(
        settings, kafka=KafkaSettings(), bus=BusSettings(), store=open_store(ArtifactSettings())
    )
    try:
        await app.start()
        await wait_for_stop(app.tasks)
        log.info("inference stopping")
    finally:
        await app.stop()
        await asyncio.to_thread(telemetry.shutdown)


if __name__ == "__main__":
    run(main)
