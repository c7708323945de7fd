"""Events become durable training jobs, inside the consumer's inbox transaction.

A data set version recorded by the registry queues one job per model whose latest spec trains on the
data set; a retrain request queues the model's latest spec on the requested (or latest) data set
version. Queuing is
idempotent on the job's natural key (see `services.trainer.storage`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace
from prometheus_client import Counter
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.errors import IntegrityError, InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.names import DATASET_NAME
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.tracecontext import current_traceparent
from services.trainer.runs import now
from services.trainer.storage import JobQueue

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.trainer.clients import RegistryClient

log = logging.getLogger(__name__)

QUEUED = Counter("mlops_trainer_jobs_queued_total", "Training jobs queued, by trigger", ["trigger"])
STAGE = training_pb2.TrainingStage


def check_trigger(trigger: int, field: str) -> None:
    """Refuse a trigger this trainer does not know: it would be carried into every event of the job,
    and label the queued-jobs metric with any number."""
    if trigger not in common_pb2.TrainingTrigger.values():
        known = ", ".join(common_pb2.TrainingTrigger.keys())
        raise InvalidArgument(f"{field} {trigger} is not a TrainingTrigger ({known})")


class JobIntake:
    def __init__(self, *, registry: RegistryClient, outbox: Outbox, jobs: JobQueue) -> None:
        self.registry = registry
        self.outbox = outbox
        self.jobs = jobs

    async def queue_for_recorded(
        self, event: data_pb2.DatasetVersionRecorded, *, event_id: str, session: AsyncSession
    ) -> list[str]:
        """One job per model whose latest spec trains on the recorded data set; returns the new job ids.

        The registry alone records data set versions; this is its record, confirmed against it before
        anything is queued. A version committed to retrain one model (`event.retrain`, the monitor's
        single intent) trains that model with the intent's trigger; the data set's other models train
        on it as on any new data.
        """
        span = trace.get_current_span()
        span.set_attributes({"mlops.dataset.name": event.dataset, "mlops.dataset.version": event.version})
        intent = event.retrain if event.HasField("retrain") else None
        if intent is not None:
            check_trigger(intent.trigger, "DatasetVersionRecorded.retrain.trigger")
        if not DATASET_NAME.match(event.dataset) or event.version < 1:
            raise InvalidArgument(
                f"DatasetVersionRecorded names data set {event.dataset[:200]!r} version {event.version}: "
                "a record names a data set by a valid name and a version from 1"
            )
        try:
            dataset = await self.registry.dataset_version(event.dataset, event.version)
        except NotFound as error:
            raise NotFound(
                f"DatasetVersionRecorded names a version the registry does not hold: {error.message}"
            ) from None
        if dataset.sha256 != event.sha256:
            raise IntegrityError(
                f"DatasetVersionRecorded says {event.dataset} v{event.version} has sha256 {event.sha256}, "
                f"the registry holds {dataset.sha256}"
            )
        specs = await self.registry.specs_for_dataset(event.dataset)
        if not specs:
            log.info("%s v%d recorded; no model spec trains on it", event.dataset, event.version)
            return []
        # the user's commit is what the job answers to: its ce_id, kept with the version
        origin = dataset.source_event_id or event_id
        queued = []
        for spec in specs:
            if spec.spec.spec.training.external:
                log.info(
                    "%s is trained outside the platform; nothing to train on %s", spec.model, event.dataset
                )
                continue
            trigger = common_pb2.TRAINING_TRIGGER_DATA_COMMITTED
            if intent is not None and spec.model == intent.model:
                trigger = intent.trigger or common_pb2.TRAINING_TRIGGER_DRIFT
            job_id = await self._enqueue(session, spec, dataset, trigger, origin)
            if job_id:
                queued.append(job_id)
        return queued

    async def queue_for_retrain(
        self, event: training_pb2.RetrainRequested, *, event_id: str, session: AsyncSession
    ) -> str | None:
        """A job for the model's latest spec on the requested data set version (or the latest one).

        A request that names a model with no spec is refused (the event goes to the dead-letter topic
        with the reason): there is nobody to answer. One that names a data set version the model's data
        set lacks is answered with TrainingFailed (stage RESOLVE) rather than retried: nothing will make
        it succeed later. A trigger this trainer does not know is refused (dead-letter topic).
        """
        check_trigger(event.trigger, "RetrainRequested.trigger")
        span = trace.get_current_span()
        span.set_attribute("mlops.model.name", event.model)
        try:
            spec = await self.registry.model_spec(event.model)
        except NotFound as error:
            raise NotFound(
                f"RetrainRequested names model {event.model!r}, which has no spec: {error.message}"
            ) from None
        if spec.spec.spec.training.external:
            reason = (
                f"model {event.model!r} is trained outside the platform (spec.training.external): "
                "register a new version instead"
            )
            await self._refuse(session, event, reason, "FailedPrecondition")
            return None
        try:
            dataset = await self.registry.dataset_version(spec.spec.spec.dataset, event.dataset_version)
        except NotFound as error:
            await self._refuse(session, event, error.message, type(error).__name__)
            return None
        span.set_attributes({"mlops.dataset.name": dataset.dataset, "mlops.dataset.version": dataset.version})
        trigger = event.trigger or common_pb2.TRAINING_TRIGGER_MANUAL
        return await self._enqueue(session, spec, dataset, trigger, event_id)

    async def _refuse(
        self, session: AsyncSession, event: training_pb2.RetrainRequested, reason: str, error_type: str
    ) -> None:
        """Answer a request nothing will make succeed later: TrainingFailed at RESOLVE, not a retry."""
        await self.outbox.add(
            session,
            training_pb2.TrainingFailed(
                model=event.model,
                trigger=event.trigger,
                stage=STAGE.TRAINING_STAGE_RESOLVE,
                reason=reason,
                error_type=error_type,
                retryable=False,
                failed_at=now(),
            ),
        )

    async def _enqueue(
        self,
        session: AsyncSession,
        spec: pb.ModelSpecVersion,
        dataset: pb.DatasetVersion,
        trigger: int,
        event_id: str,
    ) -> str | None:
        job_id = await self.jobs.enqueue(
            session,
            spec=spec,
            dataset=dataset,
            trigger=trigger,
            trigger_event_id=event_id,
            trace_context=current_traceparent(),
        )
        if job_id:
            QUEUED.labels(common_pb2.TrainingTrigger.Name(trigger)).inc()
            log.info(
                "queued training of %s spec v%d on %s v%d (job %s)",
                spec.model,
                spec.version,
                dataset.dataset,
                dataset.version,
                job_id,
            )
        else:
            log.info(
                "%s spec v%d on %s v%d is trained or queued already; nothing to do",
                spec.model,
                spec.version,
                dataset.dataset,
                dataset.version,
            )
        return job_id
