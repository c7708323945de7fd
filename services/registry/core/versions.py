"""Model versions: registered once per training run, numbered gapless from the model's counter row,
found by alias, number or search, and tagged."""

from __future__ import annotations

from datetime import datetime

from mlops.db import Database
from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, model_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import (
    Page,
    check_model_name,
    check_sha,
    check_uri,
    need,
    now,
    same_fields,
    timestamp,
)
from services.registry.settings import RegistrySettings
from services.registry.storage import models
from services.registry.storage import versions as storage
from services.registry.storage.versions import MetricFilter, SortOrder

COMPARISONS = {
    common_pb2.COMPARISON_GREATER_OR_EQUAL: ">=",
    common_pb2.COMPARISON_LESS_OR_EQUAL: "<=",
    common_pb2.COMPARISON_GREATER: ">",
    common_pb2.COMPARISON_LESS: "<",
}


def check_registration(request: pb.RegisterModelVersionRequest) -> None:
    check_model_name(request.model)
    check_uri(request.artifact_uri, "artifact_uri")
    check_sha(request.artifact_sha256, "artifact_sha256")
    if request.profile_uri:
        check_uri(request.profile_uri, "profile_uri")
        check_sha(request.profile_sha256, "profile_sha256")


def new_version(
    request: pb.RegisterModelVersionRequest, *, version: int, created_at: datetime
) -> pb.ModelVersion:
    return pb.ModelVersion(
        model=request.model,
        version=version,
        run_id=request.run_id,
        spec_version=request.spec_version,
        dataset=request.dataset,
        dataset_version=request.dataset_version,
        dataset_sha256=request.dataset_sha256,
        artifact_uri=request.artifact_uri,
        artifact_sha256=request.artifact_sha256,
        artifact_size_bytes=request.artifact_size_bytes,
        profile_uri=request.profile_uri,
        profile_sha256=request.profile_sha256,
        signature=request.signature,
        metrics=request.metrics,
        tags=request.tags,
        description=request.description,
        created_at=timestamp(created_at),
        origin="trainer",
    )


def registered_event(record: pb.ModelVersion) -> model_pb2.ModelRegistered:
    registered = same_fields(record, model_pb2.ModelRegistered)
    registered.registered_at.CopyFrom(record.created_at)
    return registered


def metric_filters(request: pb.SearchModelVersionsRequest) -> list[MetricFilter]:
    filters = []
    for index, condition in enumerate(request.metric_filters):
        operator = COMPARISONS.get(condition.comparison)
        need(operator is not None, f"metric_filters[{index}].comparison must be set")
        filters.append(MetricFilter(condition.metric, operator, condition.value))
    return filters


def sort_order(order_by: str) -> SortOrder:
    """`created_at desc` (default), `version asc`, or `metrics.<name> desc`."""
    if not order_by:
        return SortOrder()
    parts = order_by.split()
    direction = parts[1].upper() if len(parts) > 1 else "ASC"
    need(
        len(parts) <= 2 and direction in ("ASC", "DESC"),
        f"order_by {order_by!r} is invalid: '<field> [asc|desc]' with field created_at, version or metrics.<name>",
    )
    field = parts[0]
    if field in ("created_at", "version"):
        return SortOrder(field, direction)
    if field.startswith("metrics.") and len(field) > len("metrics."):
        return SortOrder("metrics", direction, field[len("metrics.") :])
    raise InvalidArgument(f"order_by field {field!r} is unknown; use created_at, version or metrics.<name>")


def retagged(record: pb.ModelVersion, request: pb.UpdateModelVersionTagsRequest) -> pb.ModelVersion:
    """The version with the request's tags removed, then its tags set."""
    for key in request.remove_tags:
        record.tags.pop(key, None)
    record.tags.update(request.set_tags)
    return record


def not_found(request: pb.GetModelVersionRequest) -> NotFound:
    selector = request.WhichOneof("selector")
    if selector == "alias":
        return NotFound(f"model {request.model!r} has no alias {request.alias!r}")
    if selector == "version" and request.version:
        return NotFound(f"model {request.model!r} has no version {request.version}")
    return NotFound(f"model {request.model!r} has no versions")


class ModelVersions:
    def __init__(self, database: Database, outbox: Outbox, settings: RegistrySettings) -> None:
        self.database = database
        self.outbox = outbox
        self.settings = settings

    async def register_model_version(
        self, request: pb.RegisterModelVersionRequest
    ) -> pb.RegisterModelVersionResponse:
        check_registration(request)
        async with self.database.transaction() as tx:
            latest, _ = await models.lock_model(tx, name=request.model)
            if request.run_id:
                existing = await storage.version_of_run(tx, model=request.model, run_id=request.run_id)
                if existing is not None:
                    return pb.RegisterModelVersionResponse(model_version=existing, created=False)
            created_at = now()
            record = new_version(request, version=latest + 1, created_at=created_at)
            await models.set_latest_version(tx, name=request.model, version=record.version)
            await storage.insert_version(tx, record=record, created_at=created_at)
            await self.outbox.add(tx, registered_event(record))
        return pb.RegisterModelVersionResponse(model_version=record, created=True)

    async def get_model_version(self, request: pb.GetModelVersionRequest) -> pb.ModelVersion:
        """The hot read (every deployment and client resolves `name@alias`): one prepared statement."""
        selector = request.WhichOneof("selector")
        pool = await self.database.fast_pool()
        if selector == "alias":
            found = await storage.version_by_alias(pool, model=request.model, alias=request.alias)
        elif selector == "version" and request.version:
            found = await storage.version_by_number(pool, model=request.model, version=request.version)
        else:
            found = await storage.latest_version(pool, model=request.model)
        if found is None:
            raise not_found(request)
        return found

    async def list_model_versions(self, request: pb.ListModelVersionsRequest) -> pb.ListModelVersionsResponse:
        search = pb.SearchModelVersionsRequest(
            models=[request.model], page_size=request.page_size, page_token=request.page_token
        )
        found = await self.search_model_versions(search)
        return pb.ListModelVersionsResponse(
            model_versions=found.model_versions, next_page_token=found.next_page_token
        )

    async def search_model_versions(
        self, request: pb.SearchModelVersionsRequest
    ) -> pb.SearchModelVersionsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        filters = metric_filters(request)
        order = sort_order(request.order_by)
        async with self.database.session() as session:
            found, token = await storage.search_versions(
                session, request=request, metric_filters=filters, order=order, page=page
            )
        return pb.SearchModelVersionsResponse(model_versions=found, next_page_token=token)

    async def update_model_version_tags(self, request: pb.UpdateModelVersionTagsRequest) -> pb.ModelVersion:
        async with self.database.transaction() as tx:
            record = await storage.version_for_update(tx, model=request.model, version=request.version)
            if record is None:
                raise NotFound(f"model {request.model!r} has no version {request.version}")
            await storage.update_tags(tx, record=retagged(record, request))
        return await self.get_model_version(
            pb.GetModelVersionRequest(model=request.model, version=request.version)
        )
