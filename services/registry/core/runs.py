"""Runs: created idempotently on the caller's id, metrics logged per epoch, params and tags updated,
files attached, finished once. A run's `source` is "trainer" (the platform's trainer) or "client"
(code outside the platform, whose `model` names the experiment: it needs no spec)."""

from __future__ import annotations

import uuid
from datetime import datetime

from mlops.db import Database
from mlops.errors import FailedPrecondition, NotFound
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, check_model_name, need, now, timestamp
from services.registry.settings import RegistrySettings
from services.registry.storage import runs as storage

FINISHED = (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELLED)
SOURCES = ("trainer", "client")


def check_creation(request: pb.CreateRunRequest) -> None:
    check_model_name(request.model)
    need(
        request.source in ("", *SOURCES),
        f"source must be one of {', '.join(SOURCES)}, got {request.source!r}",
    )
    for key in request.tags:
        need(bool(key.strip()), "tag keys must not be empty")


def new_run(request: pb.CreateRunRequest, *, started_at: datetime) -> pb.Run:
    return pb.Run(
        # A caller that wants retries to be idempotent chooses the id; otherwise the registry makes one.
        run_id=request.run_id or uuid.uuid4().hex,
        model=request.model,
        spec_version=request.spec_version,
        dataset=request.dataset,
        dataset_version=request.dataset_version,
        dataset_sha256=request.dataset_sha256,
        params=request.params,
        status=pb.RUN_STATUS_RUNNING,
        trigger=request.trigger,
        trigger_event_id=request.trigger_event_id,
        hardware=request.hardware,
        started_at=timestamp(started_at),
        parent_run_id=request.parent_run_id,
        tags=request.tags,
        source=request.source or "trainer",
    )


def updated(run: pb.Run, request: pb.UpdateRunRequest) -> pb.Run:
    """The run with the request's params added and its tags set and removed; a param keeps its first value."""
    changed = sorted(k for k, v in request.params.items() if k in run.params and run.params[k] != v)
    need(
        not changed,
        f"params are set once: {', '.join(f'{k!r} is {run.params[k]!r}' for k in changed)} already; "
        "log another value as a tag or a metric",
    )
    for key in list(request.set_tags) + list(request.params):
        need(bool(key.strip()), "param and tag keys must not be empty")
    run.params.update(request.params)
    for key in request.remove_tags:
        run.tags.pop(key, None)
    run.tags.update(request.set_tags)
    return run


def with_artifact(run: pb.Run, artifact: pb.RunArtifact) -> bool:
    """Attach `artifact` to the run, replacing another file at its path; False when it is there already."""
    for index, existing in enumerate(run.artifacts):
        if existing.path == artifact.path:
            if existing.sha256 == artifact.sha256:
                return False
            del run.artifacts[index]
            break
    run.artifacts.append(artifact)
    return True


def with_source(run: pb.Run) -> pb.Run:
    # Runs recorded before sources existed were all the trainer's.
    run.source = run.source or "trainer"
    return run


def check_finish(request: pb.FinishRunRequest) -> None:
    need(request.status in FINISHED, "status must be SUCCEEDED, FAILED or CANCELLED")


def finish(run: pb.Run, request: pb.FinishRunRequest, *, ended_at: datetime) -> bool:
    """Finish a running run as the request says (True); a run finished before with the same status
    is left as it was (False), and one finished otherwise is refused."""
    if run.status != pb.RUN_STATUS_RUNNING:
        if run.status == request.status:
            return False
        raise FailedPrecondition(
            f"run {request.run_id!r} already finished as {pb.RunStatus.Name(run.status)}"
        )
    run.status = request.status
    run.ended_at.CopyFrom(timestamp(ended_at))
    run.metrics.update(request.metrics)
    run.failed_stage = request.failed_stage
    run.error = request.error
    run.model_version = request.model_version
    return True


def missing(run_id: str) -> NotFound:
    return NotFound(f"run {run_id!r} does not exist")


class Runs:
    def __init__(self, database: Database, settings: RegistrySettings) -> None:
        self.database = database
        self.settings = settings

    async def create_run(self, request: pb.CreateRunRequest) -> pb.Run:
        check_creation(request)
        started_at = now()
        run = new_run(request, started_at=started_at)
        async with self.database.transaction() as tx:
            inserted = await storage.insert_run(tx, run=run, started_at=started_at)
        if not inserted:
            return await self.get_run(pb.GetRunRequest(run_id=run.run_id))
        return run

    async def log_run_metrics(self, request: pb.LogRunMetricsRequest) -> pb.LogRunMetricsResponse:
        async with self.database.transaction() as tx:
            if await storage.run_for_update(tx, run_id=request.run_id) is None:
                raise missing(request.run_id)
            for epoch in request.epochs:
                if not epoch.HasField("logged_at"):
                    epoch.logged_at.CopyFrom(timestamp(now()))
                await storage.upsert_epoch(tx, run_id=request.run_id, epoch=epoch)
        return pb.LogRunMetricsResponse()

    async def finish_run(self, request: pb.FinishRunRequest) -> pb.Run:
        check_finish(request)
        async with self.database.transaction() as tx:
            run = await storage.run_for_update(tx, run_id=request.run_id)
            if run is None:
                raise missing(request.run_id)
            if finish(run, request, ended_at=now()):
                await storage.update_run(tx, run=run)
        return with_source(run)

    async def get_run(self, request: pb.GetRunRequest) -> pb.Run:
        async with self.database.session() as session:
            run = await storage.run_by_id(session, run_id=request.run_id)
            if run is None:
                raise missing(request.run_id)
            if request.include_history:
                run.history.extend(await storage.epochs_of(session, run_id=request.run_id))
        return with_source(run)

    async def update_run(self, request: pb.UpdateRunRequest) -> pb.Run:
        async with self.database.transaction() as tx:
            run = await storage.run_for_update(tx, run_id=request.run_id)
            if run is None:
                raise missing(request.run_id)
            await storage.update_run(tx, run=updated(run, request))
        return with_source(run)

    async def attach_artifact(self, run_id: str, artifact: pb.RunArtifact) -> pb.RunArtifact:
        """Record a stored file under its run (the bytes are in the artifact store already)."""
        async with self.database.transaction() as tx:
            run = await storage.run_for_update(tx, run_id=run_id)
            if run is None:
                raise missing(run_id)
            if not with_artifact(run, artifact):
                return next(a for a in run.artifacts if a.path == artifact.path)
            await storage.update_run(tx, run=run)
        return artifact

    async def list_runs(self, request: pb.ListRunsRequest) -> pb.ListRunsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            runs, token = await storage.list_runs(session, request=request, page=page)
        return pb.ListRunsResponse(runs=[with_source(r) for r in runs], next_page_token=token)
