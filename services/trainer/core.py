"""The trainer's core: turn events into durable jobs, and jobs into registered, checked model versions.

Transport-neutral: the Kafka handlers call `queue_for_data_commit` / `queue_for_retrain` inside the
consumer's inbox transaction; `run_workers` claims jobs and runs them. Training itself happens in a
process pool (`services.trainer.training.train`), so this event loop only waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import Outbox
from mlops.bus.tracing import context_from_text, current_traceparent
from mlops.db import Database
from mlops.errors import IntegrityError, MlopsError, NotFound
from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.grpc import raise_typed
from mlops.jaeger import TRACE_TAG
from mlops.outages import is_outage
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from services.trainer.jobs import Job, JobQueue, trial_run_id
from services.trainer.search import better, sample_trials
from services.trainer.settings import TrainerSettings
from services.trainer.training import TrainingParams, TrainOutcome, TrainRequest, describe_hardware, train

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.trainer")

JOBS = Counter("mlops_trainer_jobs_total", "Training jobs finished, by outcome", ["outcome"])
QUEUED = Counter("mlops_trainer_jobs_queued_total", "Training jobs queued, by trigger", ["trigger"])
RUN_SECONDS = Histogram(
    "mlops_trainer_run_seconds",
    "Wall time of one training run in the worker process (load to profile)",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)

STAGE = training_pb2.TrainingStage


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _stamp_ns(ns: int) -> Timestamp:
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


class RegistryClient:
    """The registry calls the trainer makes, with a deadline and typed errors."""

    def __init__(self, stub, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def call(self, method: str, request):
        with raise_typed():
            return await getattr(self.stub, method)(request, timeout=self.timeout_s)

    async def specs_for_dataset(self, dataset: str) -> list[pb.ModelSpecVersion]:
        specs, token = [], ""
        while True:
            page = await self.call(
                "ListModelSpecs", pb.ListModelSpecsRequest(dataset=dataset, page_size=500, page_token=token)
            )
            specs.extend(page.specs)
            token = page.next_page_token
            if not token:
                return specs


class TrainerCore:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        registry: RegistryClient,
        store: ArtifactStore,
        pool: Executor,
        settings: TrainerSettings,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.registry = registry
        self.store = store
        self.pool = pool
        self.settings = settings
        self.jobs = JobQueue(database, lane=outbox.topic_prefix)
        self._hardware: pb.Hardware | None = None
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task] = []

    # --- Events → jobs (inside the consumer's inbox transaction) ------------------------------

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

        A request that names an unknown model or data set version is answered with TrainingFailed
        (stage RESOLVE) rather than retried: nothing will make it succeed later.
        """
        span = trace.get_current_span()
        span.set_attribute("mlops.model.name", event.model)
        try:
            spec = await self.registry.call("GetModelSpec", pb.GetModelSpecRequest(model=event.model))
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
                    failed_at=_now(),
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

    # --- Workers -------------------------------------------------------------------------------

    def start_workers(self) -> list[asyncio.Task]:
        base = f"{socket.gethostname()}-{os.getpid()}"
        self._workers = [
            asyncio.create_task(self._work(f"{base}-{index}"), name=f"trainer worker {index}")
            for index in range(self.settings.max_parallel_jobs)
        ]
        return self._workers

    async def stop(self) -> None:
        """Stop claiming; a job in flight is given back (pending) and runs again after the restart."""
        self._stopping.set()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self, worker: str) -> None:
        # Start the worker process and import torch now, not when the first job arrives (seconds).
        with contextlib.suppress(Exception):
            await self.hardware()
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                job = await self.jobs.claim(worker, self.settings.job_lease_s)
            except Exception as error:
                if not is_outage(error):
                    raise
                log.warning("cannot claim jobs (%s); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.job_poll_interval_s)
                continue
            await self._hold(job, worker)

    async def _hold(self, job: Job, worker: str) -> None:
        """Run one claimed job while renewing its lease; give it back if interrupted."""
        renewing = asyncio.create_task(self._renew(job, worker))
        try:
            await self.run_job(job, worker)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.jobs.release(job.job_id, worker))
            raise
        except Exception as error:
            if is_outage(error):
                log.warning("job %s paused by an outage (%s); it goes back to the queue", job.job_id, error)
                with contextlib.suppress(Exception):
                    await self.jobs.release(job.job_id, worker)
                await asyncio.sleep(1.0)
            else:
                # A bug or a refusal nobody planned for: fail the job now rather than retrying it
                # every lease until it runs out of attempts.
                log.exception("job %s failed unexpectedly", job.job_id)
                failure = JobFailed(
                    STAGE.TRAINING_STAGE_TRAIN,
                    f"unexpected error: {type(error).__name__}: {error}",
                    type(error).__name__,
                    retryable=True,
                )
                with contextlib.suppress(Exception):
                    await self._fail(job, worker, failure)
        finally:
            renewing.cancel()

    async def _renew(self, job: Job, worker: str) -> None:
        while True:
            await asyncio.sleep(self.settings.job_lease_s / 3)
            with contextlib.suppress(Exception):
                await self.jobs.renew(job.job_id, worker, self.settings.job_lease_s)

    async def hardware(self) -> pb.Hardware:
        if self._hardware is None:
            loop = asyncio.get_running_loop()
            described = await loop.run_in_executor(self.pool, describe_hardware, self.settings.device)
            self._hardware = pb.Hardware(**described)
        return self._hardware

    # --- One job -------------------------------------------------------------------------------

    async def run_job(self, job: Job, worker: str) -> None:
        """Train, check, upload, register and announce one job. Every ending publishes one event."""
        attributes = {
            "mlops.model.name": job.model,
            "mlops.dataset.name": job.dataset,
            "mlops.dataset.version": job.dataset_version,
            "mlops.spec.version": job.spec_version,
            "mlops.run.id": job.job_id,
            "mlops.job.attempt": job.attempts,
        }
        parent = context_from_text(job.trace_context)
        with tracer.start_as_current_span(
            f"train {job.model}", context=parent, attributes=attributes
        ) as span:
            if job.attempts > self.settings.job_max_attempts:
                await self._fail(
                    job,
                    worker,
                    JobFailed(
                        STAGE.TRAINING_STAGE_TRAIN,
                        f"gave up after {job.attempts - 1} attempts: the worker stopped each time",
                        "TooManyAttempts",
                    ),
                )
                return
            started = time.monotonic()
            try:
                version, best = await self._train_and_register(job, worker)
            except JobFailed as failure:
                span.set_status(Status(StatusCode.ERROR, failure.reason))
                await self._fail(job, worker, failure)
                return
            span.set_attribute("mlops.model.version", version.version)
            await self._succeed(job, worker, version, best, time.monotonic() - started)

    async def _train_and_register(self, job: Job, worker: str) -> tuple[pb.ModelVersion, TrainOutcome]:
        spec = job.spec.spec.spec
        base = TrainingParams.from_spec(spec.training)
        search = spec.training.search if spec.training.HasField("search") else None
        hardware = await self.hardware()
        try:
            trials = sample_trials(search, base) if search is not None else [base]
        except MlopsError as error:
            raise JobFailed(STAGE.TRAINING_STAGE_RESOLVE, error.message, type(error).__name__) from error
        await self._create_run(job, job.job_id, base, hardware)
        if not job.announced:
            async with self.database.transaction() as tx:
                if await self.jobs.mark_announced(tx, job.job_id, worker):
                    await self.outbox.add(tx, self._started(job, base, hardware))

        with tempfile.TemporaryDirectory(prefix="mlops-trainer-") as tmp:
            data_path = Path(tmp) / f"data.{job.dataset_format or 'csv'}"
            with tracer.start_as_current_span("load data", attributes={"mlops.dataset.name": job.dataset}):
                try:
                    await self.store.get_file(job.dataset_uri, data_path, job.dataset_sha256)
                except (IntegrityError, NotFound) as error:
                    await self._finish_run(
                        job.job_id, failure=(STAGE.TRAINING_STAGE_LOAD_DATA, error.message)
                    )
                    raise JobFailed(
                        STAGE.TRAINING_STAGE_LOAD_DATA, error.message, type(error).__name__
                    ) from error
            best_run, best, best_score = "", None, None
            metric = (search.metric if search is not None else "") or spec.gate.metric
            first_failure: TrainOutcome | None = None
            finished: list[tuple[str, TrainOutcome]] = []
            for index, params in enumerate(trials):
                run_id = job.job_id if search is None else trial_run_id(job.job_id, index)
                if search is not None:
                    await self._create_run(job, run_id, params, hardware, parent_run_id=job.job_id)
                outcome = await self._train_one(
                    job, run_id, params, data_path, trial=index if search else None
                )
                if not outcome.ok:
                    first_failure = first_failure or outcome
                    continue
                finished.append((run_id, outcome))
                score = outcome.metrics.get(metric, outcome.metrics["val_loss"])
                if better(metric if metric in outcome.metrics else "val_loss", score, best_score):
                    best_run, best, best_score = run_id, outcome, score
        if best is None:
            assert first_failure is not None
            failure = JobFailed(
                STAGE.Value(f"TRAINING_STAGE_{first_failure.stage}"),
                first_failure.reason,
                first_failure.error_type,
            )
            if search is not None:
                await self._finish_run(
                    job.job_id, failure=(failure.stage, f"every trial failed: {failure.reason}")
                )
            raise failure

        for run_id, outcome in finished:  # trials that lost: done, without a model
            if run_id != best_run:
                await self._finish_run(run_id, metrics=outcome.metrics, outcome=outcome)
        version = await self._register(job, best_run, best)
        await self._finish_run(best_run, metrics=best.metrics, model_version=version.version, outcome=best)
        if search is not None:
            await self._finish_run(
                job.job_id, metrics=best.metrics, model_version=version.version, outcome=best
            )
        return version, best

    async def _create_run(
        self, job: Job, run_id: str, params: TrainingParams, hardware: pb.Hardware, parent_run_id: str = ""
    ) -> None:
        await self.registry.call(
            "CreateRun",
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

    async def _train_one(
        self, job: Job, run_id: str, params: TrainingParams, data_path: Path, *, trial: int | None
    ) -> TrainOutcome:
        """One run in the pool; its epochs become metrics in the registry and spans in this trace."""
        spec = job.spec.spec.spec
        request = TrainRequest(
            model=job.model,
            task=spec.task,
            label=spec.label,
            features=list(spec.features),
            slices=list(spec.slices),
            data_path=str(data_path),
            data_format=job.dataset_format,
            params=params,
            device=self.settings.device,
        )
        name = "fit" if trial is None else f"fit trial {trial}"
        with tracer.start_as_current_span(
            name, attributes={"mlops.model.name": job.model, "mlops.run.id": run_id}
        ) as span:
            loop = asyncio.get_running_loop()
            outcome: TrainOutcome = await loop.run_in_executor(self.pool, train, request)
            RUN_SECONDS.observe(outcome.seconds)
            span.set_attributes(
                {"mlops.trainer.device": outcome.device, "mlops.trainer.epochs": outcome.epochs_run}
            )
            for record in outcome.history:
                epoch_span = tracer.start_span(
                    f"epoch {record.epoch}",
                    start_time=record.start_ns,
                    attributes={
                        "mlops.epoch": record.epoch,
                        **{f"mlops.metric.{k}": v for k, v in record.metrics.items()},
                    },
                )
                epoch_span.end(end_time=record.end_ns)
            if outcome.history:
                await self.registry.call(
                    "LogRunMetrics",
                    pb.LogRunMetricsRequest(
                        run_id=run_id,
                        epochs=[
                            pb.EpochMetrics(epoch=r.epoch, metrics=r.metrics, logged_at=_stamp_ns(r.end_ns))
                            for r in outcome.history
                        ],
                    ),
                )
            if not outcome.ok:
                span.set_status(Status(StatusCode.ERROR, outcome.reason))
                stage = STAGE.Value(f"TRAINING_STAGE_{outcome.stage}")
                await self._finish_run(run_id, failure=(stage, outcome.reason))
        return outcome

    async def _finish_run(
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
                request.metrics.update(_parity_metrics(outcome))
            request.model_version = model_version
        await self.registry.call("FinishRun", request)

    async def _register(self, job: Job, run_id: str, outcome: TrainOutcome) -> pb.ModelVersion:
        spec = job.spec.spec.spec
        namespace = f"models/{job.model}"
        with tracer.start_as_current_span("upload model", attributes={"mlops.model.name": job.model}):
            try:
                model_ref = await self.store.put_bytes(namespace, "model.onnx", outcome.onnx)
                profile_ref = await self.store.put_bytes(
                    namespace, "profile.json", outcome.profile_json.encode()
                )
            except MlopsError as error:
                raise JobFailed(
                    STAGE.TRAINING_STAGE_UPLOAD, error.message, type(error).__name__, retryable=True
                ) from error
        signature = pb.ModelSignature(
            inputs=[pb.TensorSpec(name=n, datatype=d, shape=s) for n, d, s in outcome.inputs],
            outputs=[pb.TensorSpec(name=n, datatype=d, shape=s) for n, d, s in outcome.outputs],
            feature_names=outcome.feature_names,
            class_labels=outcome.class_labels,
            task=spec.task,
            onnx_opset=outcome.onnx_opset,
            categories={name: pb.Vocabulary(values=values) for name, values in outcome.categories.items()},
        )
        with tracer.start_as_current_span(
            "register model", attributes={"mlops.model.name": job.model}
        ) as span:
            try:
                response = await self.registry.call(
                    "RegisterModelVersion",
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
                        metrics={**outcome.metrics, **_parity_metrics(outcome)},
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

    # --- Endings -------------------------------------------------------------------------------

    def _started(
        self, job: Job, params: TrainingParams, hardware: pb.Hardware
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
            started_at=_now(),
        )

    async def _succeed(
        self, job: Job, worker: str, version: pb.ModelVersion, outcome: TrainOutcome, seconds: float
    ) -> None:
        event = training_pb2.ModelTrained(
            model=job.model,
            version=version.version,
            spec_version=job.spec_version,
            dataset=job.dataset,
            dataset_version=job.dataset_version,
            dataset_sha256=job.dataset_sha256,
            run_id=version.run_id,
            trigger=job.trigger,
            artifact_uri=version.artifact_uri,
            artifact_sha256=version.artifact_sha256,
            artifact_size_bytes=version.artifact_size_bytes,
            profile_uri=version.profile_uri,
            profile_sha256=version.profile_sha256,
            metrics={k: v for k, v in outcome.metrics.items() if not k.startswith("test_")},
            parity_tolerance=outcome.parity_tolerance,
            parity_max_abs_diff=outcome.parity_max_abs_diff,
            epochs_run=outcome.epochs_run,
            task=job.spec.spec.spec.task,
            feature_names=outcome.feature_names,
            class_labels=outcome.class_labels,
            trained_at=_now(),
        )
        event.training_duration.FromNanoseconds(int(seconds * 1e9))
        async with self.database.transaction() as tx:
            if await self.jobs.finish(tx, job.job_id, worker, model_version=version.version):
                await self.outbox.add(tx, event)
                JOBS.labels("succeeded").inc()
                log.info(
                    "%s v%d trained on %s v%d", job.model, version.version, job.dataset, job.dataset_version
                )
            else:
                log.warning(
                    "job %s was taken over by another worker; its result is theirs to announce", job.job_id
                )

    async def _fail(self, job: Job, worker: str, failure: JobFailed) -> None:
        event = training_pb2.TrainingFailed(
            model=job.model,
            spec_version=job.spec_version,
            dataset=job.dataset,
            dataset_version=job.dataset_version,
            dataset_sha256=job.dataset_sha256,
            run_id=job.job_id,
            trigger=job.trigger,
            stage=failure.stage,
            reason=failure.reason,
            error_type=failure.error_type,
            retryable=failure.retryable,
            failed_at=_now(),
        )
        with contextlib.suppress(MlopsError):
            await self._finish_run(job.job_id, failure=(failure.stage, failure.reason))
        async with self.database.transaction() as tx:
            if await self.jobs.finish(
                tx, job.job_id, worker, failed_stage=failure.stage, error=failure.reason
            ):
                await self.outbox.add(tx, event)
                JOBS.labels("failed").inc()
                log.warning(
                    "training of %s on %s v%d failed at %s: %s",
                    job.model,
                    job.dataset,
                    job.dataset_version,
                    STAGE.Name(failure.stage),
                    failure.reason,
                )


def _parity_metrics(outcome: TrainOutcome) -> dict[str, float]:
    return {"parity_max_abs_diff": outcome.parity_max_abs_diff, "parity_tolerance": outcome.parity_tolerance}
