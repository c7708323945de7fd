"""Composition root of the inference server: `python -m services.inference`.

Stateless (no database): it reads the desired serving state from Kafka, loads models from the
artifact store, answers the Open Inference Protocol over gRPC (with gRPC health on the same port) and
over HTTP/REST, in one event loop (uvloop's where installed), and logs predictions to Kafka.
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


def _loop_factory(choice: str):
    """uvloop's event loop where it is installed and chosen (`MLOPS_INFERENCE_EVENT_LOOP`), else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    factory = _loop_factory(InferenceSettings().event_loop)
    if factory is None:
        run(main)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
