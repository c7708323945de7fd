"""The registry's rules, transport-neutral: requests and replies are the public protobuf messages,
state is PostgreSQL, events leave through the outbox in the same transaction as the change.

Versions (data sets, specs, models) come from a counter row locked for the transaction, so they
increase by one with no gap and no duplicate however many writers race; every record call is
idempotent on its natural key, so an at-least-once caller can repeat it freely.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import Outbox
from mlops.db import Database
from mlops.errors import FailedPrecondition, InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, data_pb2, model_pb2, monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry import spec as specs
from services.registry.datasets import DatasetChecker
from services.registry.settings import RegistrySettings
from services.registry.tables import SCHEMA

M = TypeVar("M", bound=Message)

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FORMATS = ("csv", "parquet")
_COMPARISONS = {
    common_pb2.COMPARISON_GREATER_OR_EQUAL: ">=",
    common_pb2.COMPARISON_LESS_OR_EQUAL: "<=",
    common_pb2.COMPARISON_GREATER: ">",
    common_pb2.COMPARISON_LESS: "<",
}


def now() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime | None) -> Timestamp:
    stamp = Timestamp()
    if moment is not None:
        stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def moment(stamp: Timestamp, default: datetime | None = None) -> datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return default
    return stamp.ToDatetime(tzinfo=UTC)


def same_fields(source: Message, cls: type[M]) -> M:
    """A `cls` carrying every field of `source` that has the same name there (an event from a record)."""
    wanted = {field.name for field in cls.DESCRIPTOR.fields}
    values = json_format.MessageToDict(source, preserving_proto_field_name=True)
    return json_format.ParseDict({k: v for k, v in values.items() if k in wanted}, cls())


def parse(cls: type[M], body: bytes) -> M:
    message = cls()
    message.ParseFromString(body)
    return message


def q(sql: str):
    return text(sql.replace("{s}", SCHEMA))


class Page:
    """Offset paging behind an opaque token (`page_size` 0 means the default)."""

    def __init__(self, size: int, token: str, settings: RegistrySettings) -> None:
        if size < 0:
            raise InvalidArgument(f"page_size must not be negative, got {size}")
        self.size = min(size or settings.default_page_size, settings.max_page_size)
        try:
            self.offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise InvalidArgument(
                "page_token is not one this server issued; start again without it"
            ) from None

    @property
    def params(self) -> dict[str, int]:
        return {"limit": self.size + 1, "offset": self.offset}

    def cut(self, rows: list) -> tuple[list, str]:
        if len(rows) > self.size:
            token = base64.urlsafe_b64encode(str(self.offset + self.size).encode()).decode()
            return rows[: self.size], token
        return rows, ""


class Where:
    """The conditions of a list query: equality on the filters that are set, time ranges, extras."""

    def __init__(self, **equal: object) -> None:
        self.parts: list[str] = ["TRUE"]
        self.params: dict[str, object] = {}
        for column, value in equal.items():
            if value:
                self.add(f"{column} = :{column}", **{column: value})

    def add(self, condition: str, **params: object) -> Where:
        self.parts.append(condition)
        self.params.update(params)
        return self

    def between(self, column: str, request: Message, after: str, before: str) -> Where:
        """`column` within the request's optional [after, before) timestamps."""
        if request.HasField(after):
            self.add(f"{column} >= :{after}", **{after: moment(getattr(request, after))})
        if request.HasField(before):
            self.add(f"{column} < :{before}", **{before: moment(getattr(request, before))})
        return self

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)


def _check_expected(request: pb.SetAliasRequest | pb.DeleteAliasRequest, previous: int) -> None:
    """Compare-and-set: refuse the move when the alias no longer points where the caller saw it."""
    if request.HasField("expected_version") and request.expected_version != previous:
        raise FailedPrecondition(
            f"alias {request.model}@{request.alias} points to version {previous}, not "
            f"{request.expected_version} as expected; re-read it and try again"
        )


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArgument(message)


def _check_model_name(name: str) -> None:
    _need(
        bool(specs.NAME.match(name)),
        f"model name {name!r} is invalid: lowercase letters, digits and '-', at most 63 characters",
    )


def _check_sha(value: str, field: str) -> None:
    _need(bool(SHA256.match(value)), f"{field} must be 64 lowercase hex digits, got {value!r}")


def _check_uri(value: str, field: str) -> None:
    _need(value.startswith(("s3://", "file://")), f"{field} must be an s3:// or file:// URI, got {value!r}")


class RegistryCore:
    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        settings: RegistrySettings,
        datasets: DatasetChecker | None = None,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.settings = settings
        self.datasets = datasets
        """Checks every data set before it is recorded, from any caller; None records claims unread."""

    @asynccontextmanager
    async def _tx(self, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        """The caller's transaction (an event handler's inbox transaction) or a new one."""
        if session is not None:
            yield session
            return
        async with self.database.transaction() as own:
            yield own

    def page(self, size: int, token: str) -> Page:
        return Page(size, token, self.settings)

    async def _page_of(
        self, cls: type[M], table: str, where: Where, order: str, size: int, token: str
    ) -> tuple[list[M], str]:
        """One page of a table's stored messages, newest first by `order`."""
        page = self.page(size, token)
        sql = f"SELECT body FROM {{s}}.{table} WHERE {where.sql} ORDER BY {order} LIMIT :limit OFFSET :offset"
        async with self.database.session() as session:
            bodies = (await session.exec(q(sql), params={**where.params, **page.params})).scalars().all()
        bodies, next_token = page.cut(list(bodies))
        return [parse(cls, body) for body in bodies], next_token

    # Data sets ---------------------------------------------------------------------------------

    async def record_dataset_version(
        self, request: pb.RecordDatasetVersionRequest, session: AsyncSession | None = None
    ) -> pb.RecordDatasetVersionResponse:
        _need(
            bool(DATASET_NAME.match(request.dataset)),
            f"dataset name {request.dataset!r} is invalid: letters, digits, '.', '_' and '-', at most 128",
        )
        _check_uri(request.uri, "uri")
        _check_sha(request.sha256, "sha256")
        _need(
            request.format in FORMATS, f"format must be one of {', '.join(FORMATS)}, got {request.format!r}"
        )
        _need(request.row_count >= 0, "row_count must not be negative")
        if request.parent_sha256:
            _check_sha(request.parent_sha256, "parent_sha256")
        # A version already recorded was checked then; a redelivered commit is not read again.
        if self.datasets is not None and not await self._dataset_recorded(request, session):
            request = await self.datasets.described(request)
        async with self._tx(session) as tx:
            await tx.exec(
                q("INSERT INTO {s}.datasets (name) VALUES (:n) ON CONFLICT DO NOTHING"),
                params={"n": request.dataset},
            )
            latest = (
                await tx.exec(
                    q("SELECT latest_version FROM {s}.datasets WHERE name = :n FOR UPDATE"),
                    params={"n": request.dataset},
                )
            ).scalar_one()
            existing = (
                await tx.exec(
                    q("SELECT body FROM {s}.dataset_versions WHERE dataset = :d AND sha256 = :h"),
                    params={"d": request.dataset, "h": request.sha256},
                )
            ).scalar_one_or_none()
            if existing is not None:
                return pb.RecordDatasetVersionResponse(
                    dataset_version=parse(pb.DatasetVersion, existing), created=False
                )
            parent_version, parent_sha = 0, request.parent_sha256
            if parent_sha:
                parent_version = (
                    await tx.exec(
                        q("SELECT version FROM {s}.dataset_versions WHERE dataset = :d AND sha256 = :h"),
                        params={"d": request.dataset, "h": parent_sha},
                    )
                ).scalar_one_or_none() or 0
            elif latest:
                parent_version = latest
                parent_sha = (
                    await tx.exec(
                        q("SELECT sha256 FROM {s}.dataset_versions WHERE dataset = :d AND version = :v"),
                        params={"d": request.dataset, "v": latest},
                    )
                ).scalar_one()
            version = latest + 1
            recorded_at = now()
            committed_at = moment(request.committed_at, recorded_at)
            record = pb.DatasetVersion(
                dataset=request.dataset,
                version=version,
                uri=request.uri,
                sha256=request.sha256,
                format=request.format,
                row_count=request.row_count,
                columns=request.columns,
                parent_version=parent_version,
                parent_sha256=parent_sha,
                committed_by=request.committed_by,
                labels=request.labels,
                committed_at=timestamp(committed_at),
                recorded_at=timestamp(recorded_at),
                source_event_id=request.source_event_id,
            )
            await tx.exec(
                q("UPDATE {s}.datasets SET latest_version = :v, updated_at = now() WHERE name = :n"),
                params={"v": version, "n": request.dataset},
            )
            await tx.exec(
                q(
                    "INSERT INTO {s}.dataset_versions (dataset, version, sha256, committed_at, body) "
                    "VALUES (:d, :v, :h, :t, :b)"
                ),
                params={
                    "d": request.dataset,
                    "v": version,
                    "h": request.sha256,
                    "t": committed_at,
                    "b": record.SerializeToString(),
                },
            )
            await self.outbox.add(tx, same_fields(record, data_pb2.DatasetVersionRecorded))
            return pb.RecordDatasetVersionResponse(dataset_version=record, created=True)

    async def _dataset_recorded(
        self, request: pb.RecordDatasetVersionRequest, session: AsyncSession | None
    ) -> bool:
        sql = q("SELECT 1 FROM {s}.dataset_versions WHERE dataset = :d AND sha256 = :h")
        params = {"d": request.dataset, "h": request.sha256}
        if session is not None:
            return (await session.exec(sql, params=params)).first() is not None
        async with self.database.session() as own:
            return (await own.exec(sql, params=params)).first() is not None

    async def get_dataset_version(self, request: pb.GetDatasetVersionRequest) -> pb.DatasetVersion:
        selector = request.WhichOneof("selector")
        async with self.database.session() as session:
            if selector == "sha256":
                sql, params = "dataset = :d AND sha256 = :x", {"d": request.dataset, "x": request.sha256}
            elif selector == "version" and request.version:
                sql, params = "dataset = :d AND version = :x", {"d": request.dataset, "x": request.version}
            else:
                sql, params = "dataset = :d ORDER BY version DESC LIMIT 1", {"d": request.dataset}
            body = (
                await session.exec(q(f"SELECT body FROM {{s}}.dataset_versions WHERE {sql}"), params=params)
            ).scalar_one_or_none()
        if body is None:
            what = {"sha256": f"with sha256 {request.sha256}", "version": f"version {request.version}"}.get(
                selector or "", ""
            )
            raise NotFound(f"data set {request.dataset!r} has no version {what}".rstrip())
        return parse(pb.DatasetVersion, body)

    async def list_datasets(self, request: pb.ListDatasetsRequest) -> pb.ListDatasetsResponse:
        page = self.page(request.page_size, request.page_token)
        async with self.database.session() as session:
            rows = (
                await session.exec(
                    q(
                        "SELECT name, latest_version, created_at, updated_at FROM {s}.datasets "
                        "WHERE name LIKE :p AND latest_version > 0 ORDER BY updated_at DESC, name LIMIT :limit OFFSET :offset"
                    ),
                    params={"p": request.name_prefix.replace("%", r"\%") + "%", **page.params},
                )
            ).all()
        rows, token = page.cut(rows)
        return pb.ListDatasetsResponse(
            datasets=[
                pb.Dataset(
                    name=r[0],
                    latest_version=r[1],
                    version_count=r[1],
                    created_at=timestamp(r[2]),
                    updated_at=timestamp(r[3]),
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def list_dataset_versions(
        self, request: pb.ListDatasetVersionsRequest
    ) -> pb.ListDatasetVersionsResponse:
        where = Where(dataset=request.dataset).between(
            "committed_at", request, "committed_after", "committed_before"
        )
        versions, token = await self._page_of(
            pb.DatasetVersion,
            "dataset_versions",
            where,
            "version DESC",
            request.page_size,
            request.page_token,
        )
        return pb.ListDatasetVersionsResponse(versions=versions, next_page_token=token)

    # Model specs -------------------------------------------------------------------------------

    async def _lock_model(self, tx: AsyncSession, name: str) -> tuple[int, int]:
        """Create the model's counter row if needed and lock it: (latest version, latest spec version)."""
        await tx.exec(
            q("INSERT INTO {s}.models (name) VALUES (:n) ON CONFLICT DO NOTHING"), params={"n": name}
        )
        row = (
            await tx.exec(
                q("SELECT latest_version, latest_spec_version FROM {s}.models WHERE name = :n FOR UPDATE"),
                params={"n": name},
            )
        ).one()
        return row[0], row[1]

    async def apply_model_spec(self, request: pb.ApplyModelSpecRequest) -> pb.ApplyModelSpecResponse:
        spec = specs.with_defaults(request.spec)
        problems = specs.validate(spec)
        if problems:
            raise InvalidArgument("the spec is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
        digest = specs.fingerprint(spec)
        name = spec.metadata.name
        async with self.database.transaction() as tx:
            _, latest = await self._lock_model(tx, name)
            if latest:
                current = (
                    await tx.exec(
                        q("SELECT sha256, body FROM {s}.model_specs WHERE model = :m AND version = :v"),
                        params={"m": name, "v": latest},
                    )
                ).one()
                if current[0] == digest:
                    return pb.ApplyModelSpecResponse(
                        spec_version=latest, changed=False, applied=parse(pb.ModelSpecVersion, current[1])
                    )
            applied = pb.ModelSpecVersion(
                model=name,
                version=latest + 1,
                spec=spec,
                sha256=digest,
                applied_by=request.applied_by,
                applied_at=timestamp(now()),
            )
            if request.dry_run:
                await tx.rollback()
                return pb.ApplyModelSpecResponse(spec_version=latest + 1, changed=True, applied=applied)
            await tx.exec(
                q("UPDATE {s}.models SET latest_spec_version = :v WHERE name = :n"),
                params={"v": applied.version, "n": name},
            )
            await tx.exec(
                q(
                    "INSERT INTO {s}.model_specs (model, version, dataset, sha256, labels, applied_at, body) "
                    "VALUES (:m, :v, :d, :h, CAST(:l AS jsonb), now(), :b)"
                ),
                params={
                    "m": name,
                    "v": applied.version,
                    "d": spec.spec.dataset,
                    "h": digest,
                    "l": _json(dict(spec.metadata.labels)),
                    "b": applied.SerializeToString(),
                },
            )
        return pb.ApplyModelSpecResponse(spec_version=applied.version, changed=True, applied=applied)

    async def get_model_spec(self, request: pb.GetModelSpecRequest) -> pb.ModelSpecVersion:
        async with self.database.session() as session:
            if request.version:
                body = (
                    await session.exec(
                        q("SELECT body FROM {s}.model_specs WHERE model = :m AND version = :v"),
                        params={"m": request.model, "v": request.version},
                    )
                ).scalar_one_or_none()
            else:
                body = (
                    await session.exec(
                        q("SELECT body FROM {s}.model_specs WHERE model = :m ORDER BY version DESC LIMIT 1"),
                        params={"m": request.model},
                    )
                ).scalar_one_or_none()
        if body is None:
            suffix = f" version {request.version}" if request.version else ""
            raise NotFound(
                f"model {request.model!r} has no spec{suffix}; apply one with `mlops apply -f spec.yaml`"
            )
        return parse(pb.ModelSpecVersion, body)

    async def list_model_specs(self, request: pb.ListModelSpecsRequest) -> pb.ListModelSpecsResponse:
        page = self.page(request.page_size, request.page_token)
        async with self.database.session() as session:
            rows = (
                (
                    await session.exec(
                        q(
                            "SELECT s.body FROM {s}.model_specs s JOIN {s}.models m ON m.name = s.model AND m.latest_spec_version = s.version "
                            "WHERE (:d = '' OR s.dataset = :d) AND s.labels @> CAST(:l AS jsonb) "
                            "ORDER BY s.model LIMIT :limit OFFSET :offset"
                        ),
                        params={"d": request.dataset, "l": _json(dict(request.labels)), **page.params},
                    )
                )
                .scalars()
                .all()
            )
        rows, token = page.cut(rows)
        return pb.ListModelSpecsResponse(
            specs=[parse(pb.ModelSpecVersion, b) for b in rows], next_page_token=token
        )

    async def specs_for_dataset(self, dataset: str) -> list[pb.ModelSpecVersion]:
        """The latest spec of every model that trains on `dataset` (what a data commit triggers)."""
        response = await self.list_model_specs(pb.ListModelSpecsRequest(dataset=dataset, page_size=1000))
        return list(response.specs)

    # Model versions ----------------------------------------------------------------------------

    async def register_model_version(
        self, request: pb.RegisterModelVersionRequest
    ) -> pb.RegisterModelVersionResponse:
        _check_model_name(request.model)
        _check_uri(request.artifact_uri, "artifact_uri")
        _check_sha(request.artifact_sha256, "artifact_sha256")
        if request.profile_uri:
            _check_uri(request.profile_uri, "profile_uri")
            _check_sha(request.profile_sha256, "profile_sha256")
        async with self.database.transaction() as tx:
            latest, _ = await self._lock_model(tx, request.model)
            if request.run_id:
                existing = (
                    await tx.exec(
                        q("SELECT body FROM {s}.model_versions WHERE model = :m AND run_id = :r"),
                        params={"m": request.model, "r": request.run_id},
                    )
                ).scalar_one_or_none()
                if existing is not None:
                    return pb.RegisterModelVersionResponse(
                        model_version=parse(pb.ModelVersion, existing), created=False
                    )
            created_at = now()
            record = pb.ModelVersion(
                model=request.model,
                version=latest + 1,
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
            )
            await tx.exec(
                q("UPDATE {s}.models SET latest_version = :v WHERE name = :n"),
                params={"v": record.version, "n": request.model},
            )
            await tx.exec(
                q(
                    "INSERT INTO {s}.model_versions (model, version, run_id, dataset, dataset_version, metrics, tags, created_at, body) "
                    "VALUES (:m, :v, :r, :d, :dv, CAST(:metrics AS jsonb), CAST(:tags AS jsonb), :t, :b)"
                ),
                params={
                    "m": record.model,
                    "v": record.version,
                    "r": record.run_id,
                    "d": record.dataset,
                    "dv": record.dataset_version,
                    "metrics": _json(dict(record.metrics)),
                    "tags": _json(dict(record.tags)),
                    "t": created_at,
                    "b": record.SerializeToString(),
                },
            )
            registered = same_fields(record, model_pb2.ModelRegistered)
            registered.registered_at.CopyFrom(record.created_at)
            await self.outbox.add(tx, registered)
        return pb.RegisterModelVersionResponse(model_version=record, created=True)

    _VERSION_WITH_ALIASES = (
        "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
        "ORDER BY a2.alias) FROM {s}.model_versions v "
    )

    _BY_ALIAS = (
        "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
        "ORDER BY a2.alias) FROM {s}.aliases a JOIN {s}.model_versions v ON v.model = a.model AND v.version = a.version "
        "WHERE a.model = $1 AND a.alias = $2"
    ).replace("{s}", SCHEMA)
    _BY_VERSION = (
        "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
        "ORDER BY a2.alias) FROM {s}.model_versions v WHERE v.model = $1 AND v.version = $2"
    ).replace("{s}", SCHEMA)
    _LATEST = (
        "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
        "ORDER BY a2.alias) FROM {s}.model_versions v WHERE v.model = $1 ORDER BY v.version DESC LIMIT 1"
    ).replace("{s}", SCHEMA)

    async def get_model_version(self, request: pb.GetModelVersionRequest) -> pb.ModelVersion:
        """The hot read (every deployment and client resolves `name@alias`): one prepared statement."""
        selector = request.WhichOneof("selector")
        pool = await self.database.fast_pool()
        if selector == "alias":
            row = await pool.fetchrow(self._BY_ALIAS, request.model, request.alias)
        elif selector == "version" and request.version:
            row = await pool.fetchrow(self._BY_VERSION, request.model, request.version)
        else:
            row = await pool.fetchrow(self._LATEST, request.model)
        if row is None:
            if selector == "alias":
                raise NotFound(f"model {request.model!r} has no alias {request.alias!r}")
            if selector == "version" and request.version:
                raise NotFound(f"model {request.model!r} has no version {request.version}")
            raise NotFound(f"model {request.model!r} has no versions")
        return _with_aliases(row)

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
        page = self.page(request.page_size, request.page_token)
        where = ["TRUE"]
        params: dict[str, object] = dict(page.params)
        if request.models:
            where.append("v.model = ANY(:models)")
            params["models"] = list(request.models)
        if request.dataset:
            where.append("v.dataset = :dataset")
            params["dataset"] = request.dataset
        if request.dataset_version:
            where.append("v.dataset_version = :dataset_version")
            params["dataset_version"] = request.dataset_version
        if request.run_id:
            where.append("v.run_id = :run_id")
            params["run_id"] = request.run_id
        if request.tags:
            where.append("v.tags @> CAST(:tags AS jsonb)")
            params["tags"] = _json(dict(request.tags))
        for index, condition in enumerate(request.metric_filters):
            operator = _COMPARISONS.get(condition.comparison)
            _need(operator is not None, f"metric_filters[{index}].comparison must be set")
            where.append(f"(v.metrics ->> :mf{index})::float8 {operator} :mv{index}")
            params[f"mf{index}"], params[f"mv{index}"] = condition.metric, condition.value
        if request.alias:
            where.append(
                "EXISTS (SELECT 1 FROM {s}.aliases a WHERE a.model = v.model AND a.version = v.version AND a.alias = :alias)"
            )
            params["alias"] = request.alias
        if request.HasField("created_after"):
            where.append("v.created_at >= :after")
            params["after"] = moment(request.created_after)
        if request.HasField("created_before"):
            where.append("v.created_at < :before")
            params["before"] = moment(request.created_before)
        order = _order_by(request.order_by, params)
        sql = (
            self._VERSION_WITH_ALIASES
            + f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT :limit OFFSET :offset"
        )
        async with self.database.session() as session:
            rows = (await session.exec(q(sql), params=params)).all()
        rows, token = page.cut(rows)
        return pb.SearchModelVersionsResponse(
            model_versions=[_with_aliases(r) for r in rows], next_page_token=token
        )

    async def update_model_version_tags(self, request: pb.UpdateModelVersionTagsRequest) -> pb.ModelVersion:
        async with self.database.transaction() as tx:
            body = (
                await tx.exec(
                    q("SELECT body FROM {s}.model_versions WHERE model = :m AND version = :v FOR UPDATE"),
                    params={"m": request.model, "v": request.version},
                )
            ).scalar_one_or_none()
            if body is None:
                raise NotFound(f"model {request.model!r} has no version {request.version}")
            record = parse(pb.ModelVersion, body)
            for key in request.remove_tags:
                record.tags.pop(key, None)
            record.tags.update(request.set_tags)
            await tx.exec(
                q(
                    "UPDATE {s}.model_versions SET tags = CAST(:t AS jsonb), body = :b WHERE model = :m AND version = :v"
                ),
                params={
                    "t": _json(dict(record.tags)),
                    "b": record.SerializeToString(),
                    "m": request.model,
                    "v": request.version,
                },
            )
        return await self.get_model_version(
            pb.GetModelVersionRequest(model=request.model, version=request.version)
        )

    # Runs --------------------------------------------------------------------------------------

    async def create_run(self, request: pb.CreateRunRequest) -> pb.Run:
        _check_model_name(request.model)
        started = now()
        # A caller that wants retries to be idempotent chooses the id; otherwise the registry makes one.
        run = pb.Run(
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
            started_at=timestamp(started),
            parent_run_id=request.parent_run_id,
        )
        async with self.database.transaction() as tx:
            inserted = (
                await tx.exec(
                    q(
                        "INSERT INTO {s}.runs (run_id, model, status, dataset, dataset_version, started_at, body) "
                        "VALUES (:r, :m, :st, :d, :dv, :t, :b) ON CONFLICT (run_id) DO NOTHING RETURNING run_id"
                    ),
                    params={
                        "r": run.run_id,
                        "m": run.model,
                        "st": run.status,
                        "d": run.dataset,
                        "dv": run.dataset_version,
                        "t": started,
                        "b": run.SerializeToString(),
                    },
                )
            ).scalar_one_or_none()
        if inserted is None:
            return await self.get_run(pb.GetRunRequest(run_id=run.run_id))
        return run

    async def log_run_metrics(self, request: pb.LogRunMetricsRequest) -> pb.LogRunMetricsResponse:
        async with self.database.transaction() as tx:
            await self._run_for_update(tx, request.run_id)
            for epoch in request.epochs:
                if not epoch.HasField("logged_at"):
                    epoch.logged_at.CopyFrom(timestamp(now()))
                await tx.exec(
                    q(
                        "INSERT INTO {s}.run_epochs (run_id, epoch, body) VALUES (:r, :e, :b) "
                        "ON CONFLICT (run_id, epoch) DO UPDATE SET body = EXCLUDED.body"
                    ),
                    params={"r": request.run_id, "e": epoch.epoch, "b": epoch.SerializeToString()},
                )
        return pb.LogRunMetricsResponse()

    async def _run_for_update(self, tx: AsyncSession, run_id: str) -> pb.Run:
        body = (
            await tx.exec(q("SELECT body FROM {s}.runs WHERE run_id = :r FOR UPDATE"), params={"r": run_id})
        ).scalar_one_or_none()
        if body is None:
            raise NotFound(f"run {run_id!r} does not exist")
        return parse(pb.Run, body)

    async def finish_run(self, request: pb.FinishRunRequest) -> pb.Run:
        _need(
            request.status in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELLED),
            "status must be SUCCEEDED, FAILED or CANCELLED",
        )
        async with self.database.transaction() as tx:
            run = await self._run_for_update(tx, request.run_id)
            if run.status != pb.RUN_STATUS_RUNNING:
                if run.status == request.status:
                    return run
                raise FailedPrecondition(
                    f"run {request.run_id!r} already finished as {pb.RunStatus.Name(run.status)}"
                )
            run.status = request.status
            run.ended_at.CopyFrom(timestamp(now()))
            run.metrics.update(request.metrics)
            run.failed_stage = request.failed_stage
            run.error = request.error
            run.model_version = request.model_version
            await tx.exec(
                q("UPDATE {s}.runs SET status = :st, body = :b WHERE run_id = :r"),
                params={"st": run.status, "b": run.SerializeToString(), "r": run.run_id},
            )
        return run

    async def get_run(self, request: pb.GetRunRequest) -> pb.Run:
        async with self.database.session() as session:
            body = (
                await session.exec(
                    q("SELECT body FROM {s}.runs WHERE run_id = :r"), params={"r": request.run_id}
                )
            ).scalar_one_or_none()
            if body is None:
                raise NotFound(f"run {request.run_id!r} does not exist")
            run = parse(pb.Run, body)
            if request.include_history:
                epochs = (
                    (
                        await session.exec(
                            q("SELECT body FROM {s}.run_epochs WHERE run_id = :r ORDER BY epoch"),
                            params={"r": request.run_id},
                        )
                    )
                    .scalars()
                    .all()
                )
                run.history.extend(parse(pb.EpochMetrics, b) for b in epochs)
        return run

    async def list_runs(self, request: pb.ListRunsRequest) -> pb.ListRunsResponse:
        where = Where(
            model=request.model,
            dataset=request.dataset,
            dataset_version=request.dataset_version,
            status=request.status,
        ).between("started_at", request, "started_after", "started_before")
        runs, token = await self._page_of(
            pb.Run, "runs", where, "started_at DESC", request.page_size, request.page_token
        )
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    # Evaluations -------------------------------------------------------------------------------

    async def record_evaluation(self, request: pb.RecordEvaluationRequest) -> pb.RecordEvaluationResponse:
        evaluation = pb.Evaluation()
        evaluation.CopyFrom(request.evaluation)
        _need(bool(evaluation.evaluation_id), "evaluation.evaluation_id is required (idempotency key)")
        _check_model_name(evaluation.model)
        _need(evaluation.version > 0, "evaluation.version must be a model version (1 or more)")
        if not evaluation.HasField("recorded_at"):
            evaluation.recorded_at.CopyFrom(timestamp(now()))
        async with self.database.transaction() as tx:
            exists = (
                await tx.exec(
                    q("SELECT 1 FROM {s}.model_versions WHERE model = :m AND version = :v"),
                    params={"m": evaluation.model, "v": evaluation.version},
                )
            ).scalar_one_or_none()
            if exists is None:
                raise NotFound(f"model {evaluation.model!r} has no version {evaluation.version} to evaluate")
            inserted = (
                await tx.exec(
                    q(
                        "INSERT INTO {s}.evaluations (evaluation_id, model, version, passed, recorded_at, body) "
                        "VALUES (:e, :m, :v, :p, :t, :b) ON CONFLICT DO NOTHING RETURNING evaluation_id"
                    ),
                    params={
                        "e": evaluation.evaluation_id,
                        "m": evaluation.model,
                        "v": evaluation.version,
                        "p": evaluation.passed,
                        "t": moment(evaluation.recorded_at),
                        "b": evaluation.SerializeToString(),
                    },
                )
            ).scalar_one_or_none()
        if inserted is None:
            return pb.RecordEvaluationResponse(
                evaluation=await self.get_evaluation(
                    pb.GetEvaluationRequest(evaluation_id=evaluation.evaluation_id)
                ),
                created=False,
            )
        return pb.RecordEvaluationResponse(evaluation=evaluation, created=True)

    async def get_evaluation(self, request: pb.GetEvaluationRequest) -> pb.Evaluation:
        async with self.database.session() as session:
            body = (
                await session.exec(
                    q("SELECT body FROM {s}.evaluations WHERE evaluation_id = :e"),
                    params={"e": request.evaluation_id},
                )
            ).scalar_one_or_none()
        if body is None:
            raise NotFound(f"evaluation {request.evaluation_id!r} does not exist")
        return parse(pb.Evaluation, body)

    async def list_evaluations(self, request: pb.ListEvaluationsRequest) -> pb.ListEvaluationsResponse:
        where = Where(model=request.model, version=request.version)
        if request.HasField("passed"):
            where.add("passed = :passed", passed=request.passed)
        evaluations, token = await self._page_of(
            pb.Evaluation, "evaluations", where, "recorded_at DESC", request.page_size, request.page_token
        )
        return pb.ListEvaluationsResponse(evaluations=evaluations, next_page_token=token)

    # Aliases -----------------------------------------------------------------------------------

    async def set_alias(self, request: pb.SetAliasRequest) -> pb.SetAliasResponse:
        _need(
            bool(ALIAS_NAME.match(request.alias)),
            f"alias {request.alias!r} is invalid: lowercase letters, digits, '-' and '_', starting with a letter",
        )
        _need(request.version > 0, "version must be a model version (1 or more)")
        async with self.database.transaction() as tx:
            await self._lock_model(tx, request.model)
            exists = (
                await tx.exec(
                    q("SELECT 1 FROM {s}.model_versions WHERE model = :m AND version = :v"),
                    params={"m": request.model, "v": request.version},
                )
            ).scalar_one_or_none()
            if exists is None:
                raise NotFound(f"model {request.model!r} has no version {request.version}")
            current = (
                await tx.exec(
                    q("SELECT version FROM {s}.aliases WHERE model = :m AND alias = :a"),
                    params={"m": request.model, "a": request.alias},
                )
            ).scalar_one_or_none()
            previous = current or 0
            _check_expected(request, previous)
            changed_at = now()
            if previous == request.version:
                alias = await self._alias(tx, request.model, request.alias)
                return pb.SetAliasResponse(alias=alias, previous_version=previous, changed=False)
            await tx.exec(
                q(
                    "INSERT INTO {s}.aliases (model, alias, version, updated_by, reason, updated_at) "
                    "VALUES (:m, :a, :v, :u, :r, :t) ON CONFLICT (model, alias) DO UPDATE SET "
                    "version = EXCLUDED.version, updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason, "
                    "updated_at = EXCLUDED.updated_at"
                ),
                params={
                    "m": request.model,
                    "a": request.alias,
                    "v": request.version,
                    "u": request.actor,
                    "r": request.reason,
                    "t": changed_at,
                },
            )
            change_id = await self._ledger(
                tx,
                request.model,
                request.alias,
                previous,
                request.version,
                request.actor,
                request.reason,
                changed_at,
            )
            alias = pb.Alias(
                model=request.model,
                alias=request.alias,
                version=request.version,
                updated_by=request.actor,
                reason=request.reason,
                updated_at=timestamp(changed_at),
            )
        return pb.SetAliasResponse(alias=alias, previous_version=previous, changed=True, change_id=change_id)

    async def delete_alias(self, request: pb.DeleteAliasRequest) -> pb.DeleteAliasResponse:
        async with self.database.transaction() as tx:
            await self._lock_model(tx, request.model)
            current = (
                await tx.exec(
                    q("DELETE FROM {s}.aliases WHERE model = :m AND alias = :a RETURNING version"),
                    params={"m": request.model, "a": request.alias},
                )
            ).scalar_one_or_none()
            previous = current or 0
            _check_expected(request, previous)
            if current is None:
                return pb.DeleteAliasResponse(previous_version=0, deleted=False)
            change_id = await self._ledger(
                tx, request.model, request.alias, previous, 0, request.actor, request.reason, now()
            )
        return pb.DeleteAliasResponse(previous_version=previous, deleted=True, change_id=change_id)

    async def _ledger(
        self,
        tx: AsyncSession,
        model: str,
        alias: str,
        from_version: int,
        to_version: int,
        actor: str,
        reason: str,
        changed_at: datetime,
    ) -> int:
        change_id = (
            await tx.exec(
                q(
                    "INSERT INTO {s}.alias_changes (model, alias, from_version, to_version, actor, reason, changed_at) "
                    "VALUES (:m, :a, :f, :t, :actor, :r, :at) RETURNING change_id"
                ),
                params={
                    "m": model,
                    "a": alias,
                    "f": from_version,
                    "t": to_version,
                    "actor": actor,
                    "r": reason,
                    "at": changed_at,
                },
            )
        ).scalar_one()
        await self.outbox.add(
            tx,
            model_pb2.AliasChanged(
                model=model,
                alias=alias,
                from_version=from_version,
                to_version=to_version,
                actor=actor,
                reason=reason,
                changed_at=timestamp(changed_at),
                change_id=change_id,
            ),
        )
        return change_id

    async def _alias(self, session: AsyncSession, model: str, alias: str) -> pb.Alias:
        row = (
            await session.exec(
                q(
                    "SELECT version, updated_by, reason, updated_at FROM {s}.aliases "
                    "WHERE model = :m AND alias = :a"
                ),
                params={"m": model, "a": alias},
            )
        ).one()
        return pb.Alias(
            model=model,
            alias=alias,
            version=row[0],
            updated_by=row[1],
            reason=row[2],
            updated_at=timestamp(row[3]),
        )

    async def list_aliases(self, request: pb.ListAliasesRequest) -> pb.ListAliasesResponse:
        page = self.page(request.page_size, request.page_token)
        async with self.database.session() as session:
            rows = (
                await session.exec(
                    q(
                        "SELECT alias, version, updated_by, reason, updated_at FROM {s}.aliases "
                        "WHERE model = :m ORDER BY alias LIMIT :limit OFFSET :offset"
                    ),
                    params={"m": request.model, **page.params},
                )
            ).all()
        rows, token = page.cut(rows)
        return pb.ListAliasesResponse(
            aliases=[
                pb.Alias(
                    model=request.model,
                    alias=r[0],
                    version=r[1],
                    updated_by=r[2],
                    reason=r[3],
                    updated_at=timestamp(r[4]),
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def get_alias_history(self, request: pb.GetAliasHistoryRequest) -> pb.GetAliasHistoryResponse:
        page = self.page(request.page_size, request.page_token)
        at = moment(request.at)
        async with self.database.session() as session:
            rows = (
                await session.exec(
                    q(
                        "SELECT change_id, alias, from_version, to_version, actor, reason, changed_at FROM {s}.alias_changes "
                        "WHERE model = :m AND (:a = '' OR alias = :a) AND (CAST(:at AS timestamptz) IS NULL OR changed_at <= :at) "
                        "ORDER BY change_id DESC LIMIT :limit OFFSET :offset"
                    ),
                    params={"m": request.model, "a": request.alias, "at": at, **page.params},
                )
            ).all()
            aliases_at = []
            if at is not None:
                state = (
                    await session.exec(
                        q(
                            "SELECT DISTINCT ON (alias) alias, to_version, actor, reason, changed_at FROM {s}.alias_changes "
                            "WHERE model = :m AND (:a = '' OR alias = :a) AND changed_at <= :at "
                            "ORDER BY alias, change_id DESC"
                        ),
                        params={"m": request.model, "a": request.alias, "at": at},
                    )
                ).all()
                aliases_at = [
                    pb.Alias(
                        model=request.model,
                        alias=r[0],
                        version=r[1],
                        updated_by=r[2],
                        reason=r[3],
                        updated_at=timestamp(r[4]),
                    )
                    for r in state
                    if r[1]
                ]
        rows, token = page.cut(rows)
        changes = [
            pb.AliasChange(
                change_id=r[0],
                model=request.model,
                alias=r[1],
                from_version=r[2],
                to_version=r[3],
                actor=r[4],
                reason=r[5],
                changed_at=timestamp(r[6]),
            )
            for r in rows
        ]
        return pb.GetAliasHistoryResponse(changes=changes, aliases_at=aliases_at, next_page_token=token)

    # Deployments and monitor events ------------------------------------------------------------

    async def record_deployment(self, request: pb.RecordDeploymentRequest) -> pb.RecordDeploymentResponse:
        deployment = request.deployment
        _need(bool(deployment.rollout_id), "deployment.rollout_id is required")
        _check_model_name(deployment.model)
        started = moment(deployment.started_at, now())
        async with self.database.transaction() as tx:
            created = (
                await tx.exec(
                    q(
                        "INSERT INTO {s}.deployments (rollout_id, model, version, state, started_at, body) "
                        "VALUES (:r, :m, :v, :st, :t, :b) ON CONFLICT (rollout_id) DO UPDATE SET state = EXCLUDED.state, "
                        "body = EXCLUDED.body RETURNING (xmax = 0)"
                    ),
                    params={
                        "r": deployment.rollout_id,
                        "m": deployment.model,
                        "v": deployment.version,
                        "st": deployment.state,
                        "t": started,
                        "b": deployment.SerializeToString(),
                    },
                )
            ).scalar_one()
        return pb.RecordDeploymentResponse(deployment=deployment, created=bool(created))

    async def list_deployments(self, request: pb.ListDeploymentsRequest) -> pb.ListDeploymentsResponse:
        where = Where(model=request.model, version=request.version, state=request.state).between(
            "started_at", request, "started_after", "started_before"
        )
        deployments, token = await self._page_of(
            pb.Deployment, "deployments", where, "started_at DESC", request.page_size, request.page_token
        )
        return pb.ListDeploymentsResponse(deployments=deployments, next_page_token=token)

    async def record_monitor_event(self, event_id: str, event: Message, session: AsyncSession) -> None:
        """Keep a DriftDetected or PerformanceDegraded event for the version's lineage (idempotent)."""
        kind = "drift" if isinstance(event, monitoring_pb2.DriftDetected) else "degradation"
        # A lineage entry for a version the registry never made would be a fact with nothing to hang on:
        # refused (dead-lettered with the reason), not kept.
        known = (
            await session.exec(
                q("SELECT 1 FROM {s}.model_versions WHERE model = :m AND version = :v"),
                params={"m": event.model, "v": event.version},
            )
        ).first()
        if known is None:
            raise NotFound(
                f"{type(event).__name__} names {event.model}@{event.version}, which the registry does not hold"
            )
        detected = moment(event.detected_at, now())
        await session.exec(
            q(
                "INSERT INTO {s}.monitor_events (event_id, kind, model, version, detected_at, body) "
                "VALUES (:e, :k, :m, :v, :t, :b) ON CONFLICT DO NOTHING"
            ),
            params={
                "e": event_id,
                "k": kind,
                "m": event.model,
                "v": event.version,
                "t": detected,
                "b": event.SerializeToString(),
            },
        )

    # Lineage -----------------------------------------------------------------------------------

    async def get_lineage(self, request: pb.GetLineageRequest) -> pb.GetLineageResponse:
        selector = request.WhichOneof("selector")
        version_request = pb.GetModelVersionRequest(model=request.model)
        if selector == "alias":
            version_request.alias = request.alias
        elif selector == "version":
            version_request.version = request.version
        version = await self.get_model_version(version_request)
        lineage = pb.GetLineageResponse(model_version=version)
        if version.spec_version:
            try:
                lineage.spec.CopyFrom(
                    await self.get_model_spec(
                        pb.GetModelSpecRequest(model=version.model, version=version.spec_version)
                    )
                )
            except NotFound:
                pass
        if version.dataset:
            try:
                selector_request = pb.GetDatasetVersionRequest(dataset=version.dataset)
                if version.dataset_version:
                    selector_request.version = version.dataset_version
                else:
                    selector_request.sha256 = version.dataset_sha256
                current = await self.get_dataset_version(selector_request)
                lineage.dataset_version.CopyFrom(current)
                limit = request.max_dataset_ancestors or 1_000
                while current.parent_version and len(lineage.dataset_ancestors) < limit:
                    current = await self.get_dataset_version(
                        pb.GetDatasetVersionRequest(dataset=current.dataset, version=current.parent_version)
                    )
                    lineage.dataset_ancestors.append(current)
            except NotFound:
                pass
        if version.run_id:
            try:
                lineage.run.CopyFrom(
                    await self.get_run(pb.GetRunRequest(run_id=version.run_id, include_history=True))
                )
            except NotFound:
                pass
        lineage.evaluations.extend(
            (
                await self.list_evaluations(
                    pb.ListEvaluationsRequest(
                        model=version.model, version=version.version, page_size=self.settings.max_page_size
                    )
                )
            ).evaluations
        )
        lineage.deployments.extend(
            (
                await self.list_deployments(
                    pb.ListDeploymentsRequest(
                        model=version.model, version=version.version, page_size=self.settings.max_page_size
                    )
                )
            ).deployments
        )
        async with self.database.session() as session:
            changes = (
                await session.exec(
                    q(
                        "SELECT change_id, alias, from_version, to_version, actor, reason, changed_at FROM {s}.alias_changes "
                        "WHERE model = :m AND (from_version = :v OR to_version = :v) ORDER BY change_id DESC"
                    ),
                    params={"m": version.model, "v": version.version},
                )
            ).all()
            events = (
                await session.exec(
                    q(
                        "SELECT kind, body FROM {s}.monitor_events WHERE model = :m AND version = :v "
                        "ORDER BY detected_at DESC"
                    ),
                    params={"m": version.model, "v": version.version},
                )
            ).all()
        lineage.alias_changes.extend(
            pb.AliasChange(
                change_id=r[0],
                model=version.model,
                alias=r[1],
                from_version=r[2],
                to_version=r[3],
                actor=r[4],
                reason=r[5],
                changed_at=timestamp(r[6]),
            )
            for r in changes
        )
        for kind, body in events:
            if kind == "drift":
                lineage.drift_events.append(parse(monitoring_pb2.DriftDetected, body))
            else:
                lineage.degradations.append(parse(monitoring_pb2.PerformanceDegraded, body))
        return lineage


def _json(value: dict) -> str:
    return json.dumps(value, sort_keys=True)


def _with_aliases(row) -> pb.ModelVersion:
    version = parse(pb.ModelVersion, row[0])
    version.aliases.extend(row[1])
    return version


def _order_by(order_by: str, params: dict[str, object]) -> str:
    """`created_at desc` (default), `version asc`, or `metrics.<name> desc`."""
    if not order_by:
        return "v.created_at DESC, v.model, v.version DESC"
    parts = order_by.split()
    direction = parts[1].upper() if len(parts) > 1 else "ASC"
    _need(
        len(parts) <= 2 and direction in ("ASC", "DESC"),
        f"order_by {order_by!r} is invalid: '<field> [asc|desc]' with field created_at, version or metrics.<name>",
    )
    field = parts[0]
    if field in ("created_at", "version"):
        return f"v.{field} {direction}, v.model"
    if field.startswith("metrics.") and len(field) > len("metrics."):
        params["order_metric"] = field[len("metrics.") :]
        return f"(v.metrics ->> :order_metric)::float8 {direction} NULLS LAST, v.model, v.version DESC"
    raise InvalidArgument(f"order_by field {field!r} is unknown; use created_at, version or metrics.<name>")
