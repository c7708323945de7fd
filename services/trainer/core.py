"""The trainer's core: turn events into durable jobs, and jobs into registered, checked model versions.

Transport-neutral: the Kafka handlers call `queue_for_recorded` / `queue_for_retrain` inside the
consumer's inbox transaction; `start_workers` claims jobs and runs them. Training itself happens in
a worker process per job slot (`services.trainer.pool`, `services.trainer.training.train`), so this
event loop only waits on it; a worker that dies or runs past the job's time limit is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import IntegrityError, MlopsError, NotFound
from mlops.events.v1 import data_pb2, training_pb2
from mlops.outages import is_outage
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from mlops.tracecontext import context_from_text
from services.trainer.intake import JobIntake
from services.trainer.pool import RunTimedOut, TrainingPool, TrainingSlot, WorkerKilled
from services.trainer.runs import JobFailed, RunBook, now
from services.trainer.search import better, sample_trials
from services.trainer.settings import TrainerSettings
from services.trainer.storage import Job, JobQueue, trial_run_id
from services.trainer.training import TrainingParams, TrainOutcome, TrainRequest, describe_hardware, train

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.trainer.clients import RegistryClient

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.trainer")

JOBS = Counter("mlops_trainer_jobs_total", "Training jobs finished, by outcome", ["outcome"])
RUN_SECONDS = Histogram(
    "mlops_trainer_run_seconds",
    "Wall time of one training run in the worker process (load to profile)",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)

STAGE = training_pb2.TrainingStage


__all__ = ["JobFailed", "RegistryClient", "TrainerCore"]


class TrainerCore:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        registry: RegistryClient,
        store: ArtifactStore,
        pool: TrainingPool,
        settings: TrainerSettings,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.registry = registry
        self.store = store
        self.pool = pool
        self.settings = settings
        self.jobs = JobQueue(database, lane=outbox.topic_prefix)
        self.runs = RunBook(registry, store, upload_patience_s=settings.upload_patience_s)
        self.intake = JobIntake(registry=registry, outbox=outbox, jobs=self.jobs)
        self._hardware: pb.Hardware | None = None
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._slots: dict[str, TrainingSlot] = {}
        """Each worker's own process: a killed or stopped one takes no other worker's run with it."""
        self._running: dict[str, TrainingSlot] = {}
        """Job id → the slot running it now; at most one entry per slot."""

    # --- Events → jobs (inside the consumer's inbox transaction; see `services.trainer.intake`) --

    async def queue_for_recorded(
        self, event: data_pb2.DatasetVersionRecorded, *, event_id: str, session: AsyncSession
    ) -> list[str]:
        return await self.intake.queue_for_recorded(event, event_id=event_id, session=session)

    async def queue_for_retrain(
        self, event: training_pb2.RetrainRequested, *, event_id: str, session: AsyncSession
    ) -> str | None:
        return await self.intake.queue_for_retrain(event, event_id=event_id, session=session)

    # --- Workers -------------------------------------------------------------------------------

    def start_workers(self) -> list[asyncio.Task]:
        base = f"{socket.gethostname()}-{os.getpid()}"
        slots = self.pool.slots[: self.settings.max_parallel_jobs]
        self._slots = {f"{base}-{index}": slot for index, slot in enumerate(slots)}
        self._workers = [
            asyncio.create_task(self._work(worker), name=f"trainer worker {index}")
            for index, worker in enumerate(self._slots)
        ]
        return self._workers

    def worker_pids(self, job_id: str) -> list[int]:
        """The process ids of the worker running `job_id` now; empty when it is not in a worker."""
        slot = self._running.get(job_id)
        return slot.pids() if slot is not None else []

    async def stop(self) -> None:
        """Stop claiming; a job in flight is given back (pending) and runs again after the restart."""
        self._stopping.set()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self, worker: str) -> None:
        # Start the worker process and import torch now, not when the first job arrives (seconds).
        with contextlib.suppress(Exception):
            await self.hardware(self._slots[worker])
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                job = await self.jobs.claim(worker, self.settings.job_lease_s)
            except Exception as error:
                # Never end the loop: a worker task that ends stops the whole service.
                if is_outage(error):
                    log.warning("cannot claim jobs (%s); retrying in %.1fs", error, backoff)
                else:
                    log.exception("claiming a job failed; retrying in %.1fs", backoff)
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

    async def hardware(self, slot: TrainingSlot) -> pb.Hardware:
        if self._hardware is None:
            described = await slot.run(describe_hardware, self.settings.device)
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
                version, best = await self._train_and_register(job, worker, started + self._max_seconds(job))
            except JobFailed as failure:
                span.set_status(Status(StatusCode.ERROR, failure.reason))
                await self._fail(job, worker, failure)
                return
            except WorkerKilled as killed:
                span.set_status(Status(StatusCode.ERROR, killed.reason))
                await self._after_kill(job, worker, killed)
                return
            span.set_attribute("mlops.model.version", version.version)
            await self._succeed(job, worker, version, best, time.monotonic() - started)

    def _max_seconds(self, job: Job) -> int:
        training = job.spec.spec.spec.training
        return training.max_seconds if training.HasField("max_seconds") else self.settings.default_max_seconds

    async def _after_kill(self, job: Job, worker: str, killed: WorkerKilled) -> None:
        """Retry a job whose worker died (its process is replaced already), up to `job_max_attempts`.

        A job that kills its worker every time (a network or data set too large for the memory
        the OOM killer allows) is failed then, naming the signal, instead of being retried forever.
        """
        kills = job.worker_kills + 1
        if job.attempts >= self.settings.job_max_attempts:
            times = f"{kills} times" + (f" in {job.attempts} attempts" if kills != job.attempts else "")
            await self._fail(
                job,
                worker,
                JobFailed(
                    STAGE.TRAINING_STAGE_TRAIN,
                    f"{killed.reason} {times}; out of memory? ask for less (smaller hidden_layers or "
                    "batch_size, fewer rows) or give the trainer more memory",
                    "WorkerKilled",
                ),
                worker_killed=True,
            )
            return
        log.warning(
            "job %s: %s on attempt %d of %d; it goes back to the queue",
            job.job_id,
            killed.reason,
            job.attempts,
            self.settings.job_max_attempts,
        )
        await self.jobs.retry(job.job_id, worker, killed.reason)

    async def _train_and_register(
        self, job: Job, worker: str, deadline: float
    ) -> tuple[pb.ModelVersion, TrainOutcome]:
        spec = job.spec.spec.spec
        base = TrainingParams.from_spec(spec.training)
        search = spec.training.search if spec.training.HasField("search") else None
        slot = self._slots[worker]
        hardware = await self.hardware(slot)
        try:
            trials = sample_trials(search, base) if search is not None else [base]
        except MlopsError as error:
            raise JobFailed(STAGE.TRAINING_STAGE_RESOLVE, error.message, type(error).__name__) from error
        await self.runs.create(job, job.job_id, base, hardware)
        if not job.announced:
            async with self.database.transaction() as tx:
                if await self.jobs.mark_announced(tx, job.job_id, worker):
                    await self.outbox.add(tx, RunBook.started_event(job, base, hardware))

        with tempfile.TemporaryDirectory(prefix="mlops-trainer-") as tmp:
            data_path = Path(tmp) / f"data.{job.dataset_format or 'csv'}"
            with tracer.start_as_current_span("load data", attributes={"mlops.dataset.name": job.dataset}):
                try:
                    await self.store.get_file(job.dataset_uri, data_path, job.dataset_sha256)
                except (IntegrityError, NotFound) as error:
                    await self.runs.finish(
                        job.job_id, failure=(STAGE.TRAINING_STAGE_LOAD_DATA, error.message)
                    )
                    raise JobFailed(
                        STAGE.TRAINING_STAGE_LOAD_DATA, error.message, type(error).__name__
                    ) from error
            log.info(
                "job %s: %s v%d loaded; training %s", job.job_id, job.dataset, job.dataset_version, job.model
            )
            best_run, best, best_score = "", None, None
            metric = (search.metric if search is not None else "") or spec.gate.metric
            first_failure: TrainOutcome | None = None
            finished: list[tuple[str, TrainOutcome]] = []
            for index, params in enumerate(trials):
                run_id = job.job_id if search is None else trial_run_id(job.job_id, index)
                if search is not None:
                    await self.runs.create(job, run_id, params, hardware, parent_run_id=job.job_id)
                outcome = await self._train_one(
                    job,
                    run_id,
                    params,
                    data_path,
                    trial=index if search else None,
                    slot=slot,
                    deadline=deadline,
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
                await self.runs.finish(
                    job.job_id, failure=(failure.stage, f"every trial failed: {failure.reason}")
                )
            raise failure

        for run_id, outcome in finished:  # trials that lost: done, without a model
            if run_id != best_run:
                await self.runs.finish(run_id, metrics=outcome.metrics, outcome=outcome)
        version = await self.runs.register(job, best_run, best)
        await self.runs.finish(best_run, metrics=best.metrics, model_version=version.version, outcome=best)
        if search is not None:
            await self.runs.finish(
                job.job_id, metrics=best.metrics, model_version=version.version, outcome=best
            )
        return version, best

    async def _train_one(
        self,
        job: Job,
        run_id: str,
        params: TrainingParams,
        data_path: Path,
        *,
        trial: int | None,
        slot: TrainingSlot,
        deadline: float,
    ) -> TrainOutcome:
        """One run in the worker; its epochs become metrics in the registry and spans in this trace.

        The run is stopped (its process killed and replaced) at the job's deadline; a worker that
        dies under it raises WorkerKilled.
        """
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
            max_parameters=self.settings.max_parameters,
        )
        name = "fit" if trial is None else f"fit trial {trial}"
        with tracer.start_as_current_span(
            name, attributes={"mlops.model.name": job.model, "mlops.run.id": run_id}
        ) as span:
            self._running[job.job_id] = slot
            try:
                outcome: TrainOutcome = await slot.run(
                    train, request, timeout_s=max(deadline - time.monotonic(), 0.001)
                )
            except RunTimedOut:
                limit = self._max_seconds(job)
                reason = (
                    f"training stopped at its time limit, spec.training.max_seconds = {limit} s; "
                    "raise it, or ask for less (fewer epochs or trials, smaller hidden_layers)"
                )
                span.set_status(Status(StatusCode.ERROR, reason))
                if trial is not None:
                    await self.runs.finish(run_id, failure=(STAGE.TRAINING_STAGE_TRAIN, reason))
                raise JobFailed(STAGE.TRAINING_STAGE_TRAIN, reason, "TrainingTimeout") from None
            finally:
                self._running.pop(job.job_id, None)
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
                await self.runs.log_epochs(run_id, outcome.history)
            if not outcome.ok:
                span.set_status(Status(StatusCode.ERROR, outcome.reason))
                stage = STAGE.Value(f"TRAINING_STAGE_{outcome.stage}")
                await self.runs.finish(run_id, failure=(stage, outcome.reason))
        return outcome

    # --- Endings -------------------------------------------------------------------------------

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
            trained_at=now(),
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

    async def _fail(self, job: Job, worker: str, failure: JobFailed, *, worker_killed: bool = False) -> None:
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
            failed_at=now(),
        )
        with contextlib.suppress(MlopsError):
            await self.runs.finish(job.job_id, failure=(failure.stage, failure.reason))
        async with self.database.transaction() as tx:
            if await self.jobs.finish(
                tx,
                job.job_id,
                worker,
                failed_stage=failure.stage,
                error=failure.reason,
                worker_killed=worker_killed,
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
