"""The durable job queue in the trainer's schema: queue in the event's transaction, claim with a lease.

Workers claim with `SELECT … FOR UPDATE SKIP LOCKED`, so replicas never take the same job, and hold
a lease that they renew while the job runs. A job whose worker died (its lease lapsed) is claimed
again; the registry's idempotency on run ids makes the second attempt register nothing twice.
Finishing a job and queuing its event (ModelTrained or TrainingFailed) is one transaction, and only
the worker that still holds the job may finish it.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.events.v1 import training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.trainer.tables import FAILED, PENDING, RUNNING, SCHEMA, SUCCEEDED

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-5e9f-b0c1-2d3e4f5a6b7c")


def job_key(*, model: str, spec_version: int, dataset: str, dataset_sha256: str) -> str:
    """The job's id and its run's id: the same spec version on the same bytes always gives the same id."""
    return uuid.uuid5(_NAMESPACE, f"{model}\x00{spec_version}\x00{dataset}\x00{dataset_sha256}").hex


def trial_run_id(job_id: str, trial: int) -> str:
    """The run id of one trial of a search; stable across retries of the job."""
    return uuid.uuid5(_NAMESPACE, f"{job_id}\x00trial\x00{trial}").hex


def q(sql: str):
    return text(sql.replace("{s}", f'"{SCHEMA}"'))


@dataclass(frozen=True)
class Job:
    job_id: str
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    dataset_uri: str
    dataset_format: str
    spec: pb.ModelSpecVersion
    trigger: int
    trigger_event_id: str
    trace_context: dict[str, str]
    attempts: int
    announced: bool
    worker_kills: int = 0

    @classmethod
    def from_row(cls, row) -> Job:
        return cls(
            job_id=row.job_id,
            model=row.model,
            spec_version=row.spec_version,
            dataset=row.dataset,
            dataset_version=row.dataset_version,
            dataset_sha256=row.dataset_sha256,
            dataset_uri=row.dataset_uri,
            dataset_format=row.dataset_format,
            spec=pb.ModelSpecVersion.FromString(row.spec),
            trigger=row.trigger,
            trigger_event_id=row.trigger_event_id,
            trace_context=json.loads(row.trace_context or "{}"),
            attempts=row.attempts,
            announced=row.announced,
            worker_kills=row.worker_kills,
        )


_COLUMNS = (
    "job_id, model, spec_version, dataset, dataset_version, dataset_sha256, dataset_uri, dataset_format, "
    "spec, trigger, trigger_event_id, trace_context, attempts, announced, worker_kills"
)


class JobQueue:
    def __init__(self, database: Database, *, lane: str = "") -> None:
        self.database = database
        self.lane = lane
        """Deployments that share a database but not a Kafka topic prefix (say, tests beside a running
        trainer) each work their own lane: a job is claimed only by the kind of deployment that queued it."""

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        spec: pb.ModelSpecVersion,
        dataset: pb.DatasetVersion,
        trigger: int,
        trigger_event_id: str,
        trace_context: dict[str, str],
    ) -> str | None:
        """Queue a job in the caller's transaction; None when the same job exists already."""
        job_id = job_key(
            model=spec.model,
            spec_version=spec.version,
            dataset=dataset.dataset,
            dataset_sha256=dataset.sha256,
        )
        inserted = (
            await session.exec(
                q(
                    "INSERT INTO {s}.training_jobs (job_id, model, spec_version, dataset, dataset_version, "
                    "dataset_sha256, dataset_uri, dataset_format, spec, trigger, trigger_event_id, trace_context, "
                    "status, attempts, announced, worker, model_version, failed_stage, error, lane) "
                    "VALUES (:id, :m, :sv, :d, :dv, :sha, :uri, :fmt, :spec, :tr, :te, :tc, :st, 0, false, '', 0, 0, '', :lane) "
                    "ON CONFLICT DO NOTHING RETURNING job_id"
                ),
                params={
                    "id": job_id,
                    "m": spec.model,
                    "sv": spec.version,
                    "d": dataset.dataset,
                    "dv": dataset.version,
                    "sha": dataset.sha256,
                    "uri": dataset.uri,
                    "fmt": dataset.format,
                    "spec": spec.SerializeToString(),
                    "tr": trigger,
                    "te": trigger_event_id,
                    "tc": json.dumps(trace_context),
                    "st": PENDING,
                    "lane": self.lane,
                },
            )
        ).scalar_one_or_none()
        return inserted

    async def claim(self, worker: str, lease_s: float) -> Job | None:
        """The oldest pending job, or one whose lease lapsed, now held by `worker`."""
        async with self.database.transaction() as tx:
            row = (
                await tx.exec(
                    q(
                        "UPDATE {s}.training_jobs SET status = :running, attempts = attempts + 1, worker = :w, "
                        "lease_until = now() + make_interval(secs => :lease), updated_at = now() "
                        "WHERE job_id = (SELECT job_id FROM {s}.training_jobs "
                        "WHERE lane = :lane AND (status = :pending OR (status = :running AND lease_until < now())) "
                        "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
                        f"RETURNING {_COLUMNS}"
                    ),
                    params={
                        "running": RUNNING,
                        "pending": PENDING,
                        "w": worker,
                        "lease": lease_s,
                        "lane": self.lane,
                    },
                )
            ).one_or_none()
        if row is None:
            return None
        try:
            return Job.from_row(row)
        except Exception as error:
            # A row no worker can read would be claimed again at every lease, forever: fail it now.
            reason = f"unreadable job row: {type(error).__name__}: {error}"
            log.error("job %s: %s; failed without training", row.job_id, reason)
            async with self.database.transaction() as tx:
                await self.finish(
                    tx, row.job_id, worker, failed_stage=training_pb2.TRAINING_STAGE_RESOLVE, error=reason
                )
            return None

    async def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        async with self.database.transaction() as tx:
            result = await tx.exec(
                q(
                    "UPDATE {s}.training_jobs SET lease_until = now() + make_interval(secs => :lease) "
                    "WHERE job_id = :id AND worker = :w AND status = :running"
                ),
                params={"id": job_id, "w": worker, "lease": lease_s, "running": RUNNING},
            )
            return result.rowcount == 1

    async def release(self, job_id: str, worker: str) -> None:
        """Give a job back (shutdown, outage): pending again, and the interrupted attempt does not count."""
        async with self.database.transaction() as tx:
            await tx.exec(
                q(
                    "UPDATE {s}.training_jobs SET status = :pending, lease_until = NULL, worker = '', "
                    "attempts = GREATEST(attempts - 1, 0), updated_at = now() "
                    "WHERE job_id = :id AND worker = :w AND status = :running"
                ),
                params={"id": job_id, "w": worker, "pending": PENDING, "running": RUNNING},
            )

    async def retry(self, job_id: str, worker: str, reason: str) -> bool:
        """Give back a job whose worker process was killed: pending again, and the attempt counts."""
        async with self.database.transaction() as tx:
            result = await tx.exec(
                q(
                    "UPDATE {s}.training_jobs SET status = :pending, lease_until = NULL, worker = '', "
                    "worker_kills = worker_kills + 1, error = :reason, updated_at = now() "
                    "WHERE job_id = :id AND worker = :w AND status = :running"
                ),
                params={"id": job_id, "w": worker, "reason": reason, "pending": PENDING, "running": RUNNING},
            )
            return result.rowcount == 1

    async def mark_announced(self, session: AsyncSession, job_id: str, worker: str) -> bool:
        result = await session.exec(
            q(
                "UPDATE {s}.training_jobs SET announced = true, updated_at = now() "
                "WHERE job_id = :id AND worker = :w AND status = :running AND NOT announced"
            ),
            params={"id": job_id, "w": worker, "running": RUNNING},
        )
        return result.rowcount == 1

    async def finish(
        self,
        session: AsyncSession,
        job_id: str,
        worker: str,
        *,
        model_version: int = 0,
        failed_stage: int = 0,
        error: str = "",
        worker_killed: bool = False,
    ) -> bool:
        """Close the job in the caller's transaction; False when this worker no longer holds it.

        `worker_killed`: this last attempt ended because its worker process died (counted too)."""
        result = await session.exec(
            q(
                "UPDATE {s}.training_jobs SET status = :status, model_version = :mv, failed_stage = :fs, "
                "error = :e, lease_until = NULL, updated_at = now(), "
                "worker_kills = worker_kills + CASE WHEN :killed THEN 1 ELSE 0 END "
                "WHERE job_id = :id AND worker = :w AND status = :running"
            ),
            params={
                "status": FAILED if failed_stage else SUCCEEDED,
                "mv": model_version,
                "fs": failed_stage,
                "e": error,
                "killed": worker_killed,
                "id": job_id,
                "w": worker,
                "running": RUNNING,
            },
        )
        return result.rowcount == 1

    async def status(self, job_id: str) -> dict | None:
        async with self.database.session() as session:
            row = (
                await session.exec(
                    q(
                        "SELECT status, attempts, worker_kills, model_version, failed_stage, error FROM {s}.training_jobs "
                        "WHERE job_id = :id"
                    ),
                    params={"id": job_id},
                )
            ).one_or_none()
        return dict(row._mapping) if row is not None else None
