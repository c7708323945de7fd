"""The registry's side of a training job: its runs, its model version, the events that announce it.

The core decides what happens to a job; this module says it to the registry (runs with params,
metrics and endings; the uploaded, registered version) in the shape the registry wants.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from mlops.errors import MlopsError
from mlops.events.v1 import training_pb2
from mlops.jaeger import TRACE_TAG
from mlops.outages import is_outage
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactRef, ArtifactStore
from services.trainer.export import platform_signature
from services.trainer.storage import Job
from services.trainer.training import EpochRecord, TrainingParams, TrainOutcome

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.trainer.clients import RegistryClient

log = logging.getLogger("mlops.trainer")
tracer = trace.get_tracer("mlops.trainer")
STAGE = training_pb2.TrainingStage


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def stamp_ns(ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


class JobFailed(Exception):
    """A job ends without a model: the stage, the reason a user can act on, and whether a retry may help."""

    def __init__(self, stage: int, reason: str, error_type: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.error_type = error_type
        self.retryable = retryable


class RunBook:
    """Runs and model versions of training jobs, in the registry (and the artifact store)."""

    def __init__(
        self,
        registry: RegistryClient,
        store: ArtifactStore,
        *,
        upload_patience_s: float = 300.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.store = store
        self.upload_patience_s = upload_patience_s
        self._sleep = sleep
        self._clock = clock

    async def create(
        self, job: Job, run_id: str, params: TrainingParams, hardware: pb.Hardware, parent_run_id: str = ""
    ) -> None:
        await self.registry.create_run(
            pb.CreateRunRequest(
                run_id=run_id,
                model=job.model,
                spec_version=job.spec_version,
                dataset=job.dataset,
                dataset_version=job.dataset_version,
                dataset_sha256=job.dataset_sha256,
                params=params.as_strings(),
                trigger=job.trigger,
                trigger_event_id=job.trigger_event_id,
                hardware=hardware,
                parent_run_id=parent_run_id,
            ),
        )

    async def log_epochs(self, run_id: str, history: list[EpochRecord]) -> None:
        await self.registry.log_run_metrics(
            pb.LogRunMetricsRequest(
                run_id=run_id,
                epochs=[
                    pb.EpochMetrics(epoch=r.epoch, metrics=r.metrics, logged_at=stamp_ns(r.end_ns))
                    for r in history
                ],
            ),
        )

    async def finish(
        self,
        run_id: str,
        *,
        failure: tuple[int, str] | None = None,
        metrics: dict[str, float] | None = None,
        model_version: int = 0,
        outcome: TrainOutcome | None = None,
    ) -> None:
        request = pb.FinishRunRequest(run_id=run_id)
        if failure is not None:
            request.status = pb.RUN_STATUS_FAILED
            request.failed_stage, request.error = failure
        else:
            request.status = pb.RUN_STATUS_SUCCEEDED
            request.metrics.update(metrics or {})
            if outcome is not None:
                request.metrics.update(parity_metrics(outcome))
            request.model_version = model_version
        await self.registry.finish_run(request)

    async def register(self, job: Job, run_id: str, outcome: TrainOutcome) -> pb.ModelVersion:
        spec = job.spec.spec.spec
        namespace = f"models/{job.model}"
        with tracer.start_as_current_span("upload model", attributes={"mlops.model.name": job.model}):
            model_ref, profile_ref = await self.upload(namespace, outcome)
        signature = platform_signature(
            outcome.onnx,
            task=spec.task,
            feature_names=list(outcome.feature_names),
            label=spec.label,
            class_labels=list(outcome.class_labels),
            categories=outcome.categories,
        )
        with tracer.start_as_current_span(
            "register model", attributes={"mlops.model.name": job.model}
        ) as span:
            try:
                response = await self.registry.register_model_version(
                    pb.RegisterModelVersionRequest(
                        model=job.model,
                        run_id=run_id,
                        spec_version=job.spec_version,
                        dataset=job.dataset,
                        dataset_version=job.dataset_version,
                        dataset_sha256=job.dataset_sha256,
                        artifact_uri=model_ref.uri,
                        artifact_sha256=model_ref.sha256,
                        artifact_size_bytes=model_ref.size,
                        profile_uri=profile_ref.uri,
                        profile_sha256=profile_ref.sha256,
                        signature=signature,
                        metrics={**outcome.metrics, **parity_metrics(outcome)},
                        tags={
                            "trainer.device": outcome.device,
                            "trainer.epochs": str(outcome.epochs_run),
                            # The trace this version was made in: `mlops trace NAME@VERSION` draws it.
                            TRACE_TAG: format(span.get_span_context().trace_id, "032x"),
                        },
                    ),
                )
            except MlopsError as error:
                if is_outage(error):
                    raise
                raise JobFailed(STAGE.TRAINING_STAGE_REGISTER, error.message, type(error).__name__) from error
            span.set_attribute("mlops.model.version", response.model_version.version)
        return response.model_version

    async def upload(self, namespace: str, outcome: TrainOutcome) -> tuple[ArtifactRef, ArtifactRef]:
        """The model and its profile in the store. A trained model waits out an S3 outage, up to
        `upload_patience_s`, rather than being trained again; past that the outage is raised as one
        (the job goes back to the queue). A refusal (denied, rejected) fails the job at UPLOAD."""
        deadline = self._clock() + self.upload_patience_s
        delay = 0.5
        while True:
            try:
                model_ref = await self.store.put_bytes(namespace, "model.onnx", outcome.onnx)
                profile_ref = await self.store.put_bytes(
                    namespace, "profile.json", outcome.profile_json.encode()
                )
                return model_ref, profile_ref
            except MlopsError as error:
                if not is_outage(error):
                    raise JobFailed(
                        STAGE.TRAINING_STAGE_UPLOAD, error.message, type(error).__name__, retryable=True
                    ) from error
                if self._clock() + delay > deadline:
                    raise
                log.warning(
                    "upload to %s waits out an outage (%s); retrying in %.1fs", namespace, error, delay
                )
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)

    @staticmethod
    def started_event(
        job: Job, params: TrainingParams, hardware: pb.Hardware
    ) -> training_pb2.TrainingStarted:
        where = hardware.device + (f":{hardware.accelerator}" if hardware.accelerator else "")
        return training_pb2.TrainingStarted(
            model=job.model,
            spec_version=job.spec_version,
            dataset=job.dataset,
            dataset_version=job.dataset_version,
            dataset_sha256=job.dataset_sha256,
            run_id=job.job_id,
            trigger=job.trigger,
            trigger_event_id=job.trigger_event_id,
            params=params.as_strings(),
            hardware=where,
            started_at=now(),
        )


def parity_metrics(outcome: TrainOutcome) -> dict[str, float]:
    return {"parity_max_abs_diff": outcome.parity_max_abs_diff, "parity_tolerance": outcome.parity_tolerance}
