"""Events become durable training jobs, inside the consumer's inbox transaction.

A data commit queues one job per model whose latest spec trains on the data set; a retrain request
queues the model's latest spec on the requested (or latest) data set version. Queuing is
idempotent on the job's natural key (see `services.trainer.jobs`).
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from prometheus_client import Counter
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import Outbox
from mlops.bus.tracing import current_traceparent
from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.trainer.jobs import JobQueue
from services.trainer.runs import RegistryClient, now

log = logging.getLogger(__name__)

QUEUED = Counter("mlops_trainer_jobs_queued_total", "Training jobs queued, by trigger", ["trigger"])
STAGE = training_pb2.TrainingStage


class JobIntake:
    def __init__(self, *, registry: RegistryClient, outbox: Outbox, jobs: JobQueue) -> None:
        self.registry = registry
        self.outbox = outbox
        self.jobs = jobs

    async def queue_for_data_commit(
        self, event: data_pb2.DataCommitted, *, event_id: str, session: AsyncSession
    ) -> list[str]:
        """One job per model whose latest spec trains on the committed data set; returns the new job ids."""
        specs = await self.registry.specs_for_dataset(event.dataset)
        if not specs:
            log.info("data set %s committed; no model spec trains on it", event.dataset)
            return []
        # Numbered by the registry itself (idempotent on name + sha256), so the trainer never waits
        # for, or races, the registry's own consumer of the same event.
        request = pb.RecordDatasetVersionRequest(
            dataset=event.dataset,
            uri=event.uri,
            sha256=event.sha256,
            format=event.format,
            row_count=event.row_count,
            parent_sha256=event.parent_sha256,
            committed_by=event.committed_by,
            labels=event.labels,
            source_event_id=event_id,
        )
        if event.HasField("committed_at"):
            request.committed_at.CopyFrom(event.committed_at)
        recorded = (await self.registry.call("RecordDatasetVersion", request)).dataset_version
        trace.get_current_span().set_attribute("mlops.dataset.version", recorded.version)
        queued = []
        for spec in specs:
            job_id = await self._enqueue(
                session, spec, recorded, common_pb2.TRAINING_TRIGGER_DATA_COMMITTED, event_id
            )
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
        it succeed later. A trigger this
        trainer does not know is refused (the event goes to the dead-letter topic): it would be
        carried into every event of the job, and label the queued-jobs metric with any number.
        """
        if event.trigger not in common_pb2.TrainingTrigger.values():
            known = ", ".join(common_pb2.TrainingTrigger.keys())
            raise InvalidArgument(
                f"RetrainRequested.trigger {event.trigger} is not a TrainingTrigger ({known})"
            )
        span = trace.get_current_span()
        span.set_attribute("mlops.model.name", event.model)
        try:
            spec = await self.registry.call("GetModelSpec", pb.GetModelSpecRequest(model=event.model))
        except NotFound as error:
            raise NotFound(
                f"RetrainRequested names model {event.model!r}, which has no spec: {error.message}"
            ) from None
        try:
            lookup = pb.GetDatasetVersionRequest(dataset=spec.spec.spec.dataset)
            if event.dataset_version:
                lookup.version = event.dataset_version
            dataset = await self.registry.call("GetDatasetVersion", lookup)
        except NotFound as error:
            await self.outbox.add(
                session,
                training_pb2.TrainingFailed(
                    model=event.model,
                    trigger=event.trigger,
                    stage=STAGE.TRAINING_STAGE_RESOLVE,
                    reason=error.message,
                    error_type=type(error).__name__,
                    retryable=False,
                    failed_at=now(),
                ),
            )
            return None
        span.set_attributes({"mlops.dataset.name": dataset.dataset, "mlops.dataset.version": dataset.version})
        trigger = event.trigger or common_pb2.TRAINING_TRIGGER_MANUAL
        return await self._enqueue(session, spec, dataset, trigger, event_id)

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
