"""Data sets and their versions: the registry is the one writer of a data set version.

A version is recorded once per (data set, sha256) and numbered from the data set's counter row,
locked for the transaction; its parent is the version the commit names by sha256, else the latest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops import tabular
from mlops.db import Database
from mlops.errors import NotFound
from mlops.events.v1 import common_pb2, data_pb2
from mlops.names import DATASET_NAME
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import (
    FORMATS,
    Page,
    check_sha,
    check_uri,
    moment,
    need,
    now,
    same_fields,
    timestamp,
)
from services.registry.datasets import DatasetChecker
from services.registry.settings import RegistrySettings
from services.registry.storage import datasets as storage


def csv_schema(data: bytes) -> tuple[list[common_pb2.Column], int]:
    """Columns and row count of a CSV file already in memory, as `mlops.tabular.csv_facts` infers them."""
    facts = tabular.csv_facts([data])
    return facts.columns, facts.row_count


def check_record_request(request: pb.RecordDatasetVersionRequest) -> None:
    need(
        bool(DATASET_NAME.match(request.dataset)),
        f"dataset name {request.dataset!r} is invalid: letters, digits, '.', '_' and '-', at most 128",
    )
    check_uri(request.uri, "uri")
    check_sha(request.sha256, "sha256")
    need(request.format in FORMATS, f"format must be one of {', '.join(FORMATS)}, got {request.format!r}")
    need(request.row_count >= 0, "row_count must not be negative")
    if request.parent_sha256:
        check_sha(request.parent_sha256, "parent_sha256")
    if request.HasField("retrain"):
        intent = request.retrain
        need(
            bool(intent.model),
            "retrain.model is required when the commit states a retrain: the model to retrain",
        )
        need(
            intent.trigger in common_pb2.TrainingTrigger.values(),
            f"retrain.trigger {intent.trigger} is not a TrainingTrigger "
            f"({', '.join(common_pb2.TrainingTrigger.keys())})",
        )


def commit_request(
    event: data_pb2.DataCommitted, *, source: str, event_id: str
) -> pb.RecordDatasetVersionRequest:
    """What a `DataCommitted` asks the registry to record; without a committer, the producing service."""
    request = pb.RecordDatasetVersionRequest(
        dataset=event.dataset,
        uri=event.uri,
        sha256=event.sha256,
        format=event.format,
        row_count=event.row_count,
        parent_sha256=event.parent_sha256,
        committed_by=event.committed_by or source,
        labels=event.labels,
        source_event_id=event_id,
    )
    if event.HasField("committed_at"):
        request.committed_at.CopyFrom(event.committed_at)
    if event.HasField("retrain"):
        request.retrain.CopyFrom(event.retrain)
    return request


def new_version(
    request: pb.RecordDatasetVersionRequest,
    *,
    version: int,
    parent_version: int,
    parent_sha256: str,
    recorded_at: datetime,
) -> pb.DatasetVersion:
    """The record of a new version; committed when the request says, else when it is recorded."""
    return pb.DatasetVersion(
        dataset=request.dataset,
        version=version,
        uri=request.uri,
        sha256=request.sha256,
        format=request.format,
        row_count=request.row_count,
        columns=request.columns,
        parent_version=parent_version,
        parent_sha256=parent_sha256,
        committed_by=request.committed_by,
        labels=request.labels,
        committed_at=timestamp(moment(request.committed_at, recorded_at)),
        recorded_at=timestamp(recorded_at),
        source_event_id=request.source_event_id,
        retrain=request.retrain if request.HasField("retrain") else None,
    )


def not_found(request: pb.GetDatasetVersionRequest) -> NotFound:
    selector = request.WhichOneof("selector") or ""
    what = {"sha256": f"with sha256 {request.sha256}", "version": f"version {request.version}"}.get(
        selector, ""
    )
    return NotFound(f"data set {request.dataset!r} has no version {what}".rstrip())


class Datasets:
    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        settings: RegistrySettings,
        checker: DatasetChecker | None = None,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.settings = settings
        self.checker = checker
        """Checks every data set before it is recorded, from any caller; None records claims unread."""

    @asynccontextmanager
    async def _tx(self, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        """The caller's transaction (an event handler's inbox transaction) or a new one."""
        if session is not None:
            yield session
            return
        async with self.database.transaction() as own:
            yield own

    async def record_dataset_version(
        self, request: pb.RecordDatasetVersionRequest, session: AsyncSession | None = None
    ) -> pb.RecordDatasetVersionResponse:
        check_record_request(request)
        # A version already recorded was checked then; a redelivered commit is not read again.
        if self.checker is not None and not await self._recorded(request, session):
            request = await self.checker.described(request)
        async with self._tx(session) as tx:
            latest = await storage.lock_dataset(tx, name=request.dataset)
            existing = await storage.version_by_sha256(tx, dataset=request.dataset, sha256=request.sha256)
            if existing is not None:
                return pb.RecordDatasetVersionResponse(dataset_version=existing, created=False)
            parent_version, parent_sha = 0, request.parent_sha256
            if parent_sha:
                parent_version = await storage.number_of(tx, dataset=request.dataset, sha256=parent_sha)
            elif latest:
                parent_version = latest
                parent_sha = await storage.sha256_of(tx, dataset=request.dataset, version=latest)
            recorded_at = now()
            record = new_version(
                request,
                version=latest + 1,
                parent_version=parent_version,
                parent_sha256=parent_sha,
                recorded_at=recorded_at,
            )
            await storage.insert_version(
                tx, record=record, committed_at=moment(request.committed_at, recorded_at)
            )
            await self.outbox.add(tx, same_fields(record, data_pb2.DatasetVersionRecorded))
            return pb.RecordDatasetVersionResponse(dataset_version=record, created=True)

    async def _recorded(self, request: pb.RecordDatasetVersionRequest, session: AsyncSession | None) -> bool:
        if session is not None:
            return await storage.version_recorded(session, dataset=request.dataset, sha256=request.sha256)
        async with self.database.session() as own:
            return await storage.version_recorded(own, dataset=request.dataset, sha256=request.sha256)

    async def get_dataset_version(self, request: pb.GetDatasetVersionRequest) -> pb.DatasetVersion:
        selector = request.WhichOneof("selector")
        async with self.database.session() as session:
            if selector == "sha256":
                found = await storage.version_by_sha256(
                    session, dataset=request.dataset, sha256=request.sha256
                )
            elif selector == "version" and request.version:
                found = await storage.version_by_number(
                    session, dataset=request.dataset, version=request.version
                )
            else:
                found = await storage.latest_version(session, dataset=request.dataset)
        if found is None:
            raise not_found(request)
        return found

    async def list_datasets(self, request: pb.ListDatasetsRequest) -> pb.ListDatasetsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            datasets, token = await storage.list_datasets(session, name_prefix=request.name_prefix, page=page)
        return pb.ListDatasetsResponse(datasets=datasets, next_page_token=token)

    async def list_dataset_versions(
        self, request: pb.ListDatasetVersionsRequest
    ) -> pb.ListDatasetVersionsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            versions, token = await storage.list_versions(session, request=request, page=page)
        return pb.ListDatasetVersionsResponse(versions=versions, next_page_token=token)
