"""Models trained outside the platform (RegisterModel): the ONNX bytes received in chunks, read and
profiled on the data set they are judged on, stored content-addressed beside the trainer's models,
and recorded as the model's next version with origin "external" — announced as `ModelRegistered`
and as `ModelTrained` (trigger EXTERNAL), so the evaluator gates it like any trained version."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterable
from datetime import datetime
from pathlib import Path

from mlops.db import Database
from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, training_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from mlops.store.base import ArtifactRef
from services.registry import profiling
from services.registry.common import check_model_name, moment, need, now, timestamp
from services.registry.core.datasets import Datasets
from services.registry.core.runs import Runs
from services.registry.core.specs import Specs, checked_spec
from services.registry.core.transfer import checked_digest, receive
from services.registry.core.versions import registered_event
from services.registry.settings import RegistrySettings
from services.registry.spec import API_VERSION, KIND
from services.registry.storage import models
from services.registry.storage import versions as storage

ORIGIN = "external"


def check_header(header: pb.RegisterModelRequest.Header) -> None:
    check_model_name(header.model)
    need(header.dataset_version >= 0, f"dataset_version must not be negative, got {header.dataset_version}")
    if header.HasField("spec") and header.spec.metadata.name:
        need(
            header.spec.metadata.name == header.model,
            f"the spec is for model {header.spec.metadata.name!r}, not {header.model!r}",
        )


def default_spec(*, model: str, dataset: str, label: str, signature: pb.ModelSignature) -> pb.ModelSpec:
    """A spec with the platform's defaults for a model trained elsewhere: judged on `dataset`, never
    trained here."""
    spec = pb.ModelSpec(api_version=API_VERSION, kind=KIND, metadata=pb.ObjectMeta(name=model))
    spec.spec.dataset, spec.spec.task, spec.spec.label = dataset, signature.task, label
    spec.spec.training.external = True
    return spec


def external_version(
    header: pb.RegisterModelRequest.Header,
    *,
    version: int,
    spec_version: int,
    dataset: pb.DatasetVersion,
    signature: pb.ModelSignature,
    model_ref: ArtifactRef,
    profile_ref: ArtifactRef,
    created_at: datetime,
) -> pb.ModelVersion:
    return pb.ModelVersion(
        model=header.model,
        version=version,
        run_id=header.run_id,
        spec_version=spec_version,
        dataset=dataset.dataset,
        dataset_version=dataset.version,
        dataset_sha256=dataset.sha256,
        artifact_uri=model_ref.uri,
        artifact_sha256=model_ref.sha256,
        artifact_size_bytes=model_ref.size,
        profile_uri=profile_ref.uri,
        profile_sha256=profile_ref.sha256,
        signature=signature,
        tags=header.tags,
        description=header.description,
        created_at=timestamp(created_at),
        origin=ORIGIN,
    )


def trained_event(record: pb.ModelVersion) -> training_pb2.ModelTrained:
    return training_pb2.ModelTrained(
        model=record.model,
        version=record.version,
        spec_version=record.spec_version,
        dataset=record.dataset,
        dataset_version=record.dataset_version,
        dataset_sha256=record.dataset_sha256,
        run_id=record.run_id,
        trigger=common_pb2.TRAINING_TRIGGER_EXTERNAL,
        artifact_uri=record.artifact_uri,
        artifact_sha256=record.artifact_sha256,
        artifact_size_bytes=record.artifact_size_bytes,
        profile_uri=record.profile_uri,
        profile_sha256=record.profile_sha256,
        task=record.signature.task,
        feature_names=record.signature.feature_names,
        class_labels=record.signature.class_labels,
        trained_at=record.created_at,
    )


class ExternalModels:
    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        settings: RegistrySettings,
        store: ArtifactStore | None,
        *,
        specs: Specs,
        datasets: Datasets,
        runs: Runs,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.settings = settings
        self.store = store
        self.specs = specs
        self.datasets = datasets
        self.runs = runs

    async def register_model(
        self, parts: AsyncIterable[pb.RegisterModelRequest], applied_by: str = ""
    ) -> pb.RegisterModelVersionResponse:
        assert self.store is not None, "the registry was built without an artifact store"
        header, data = await receive(parts, what="RegisterModel", limit=self.settings.max_artifact_bytes)
        check_header(header)
        name = header.file_name or "the model file"
        digest = checked_digest(data, size=header.size_bytes, sha256=header.sha256, name=name)
        existing = await self._registered(header.model, digest)
        if existing is not None:
            return pb.RegisterModelVersionResponse(model_version=existing, created=False)

        if header.HasField("spec"):
            header.spec.metadata.name = header.model  # checked above: empty or the same
            spec: pb.ModelSpec | None = checked_spec(header.spec)
        else:
            spec = await self._latest_spec(header.model)
        dataset_name = header.dataset or (spec.spec.dataset if spec else "")
        label = header.label or (spec.spec.label if spec else "")
        need(
            bool(dataset_name),
            f"model {header.model!r} has no spec: name the data set it is judged on (--dataset) and its label (--label)",
        )
        need(bool(label), f"name the column {header.model!r} predicts in data set {dataset_name!r} (--label)")
        if header.run_id:
            await self.runs.get_run(pb.GetRunRequest(run_id=header.run_id))  # NotFound names it
        dataset = await self._dataset(dataset_name, header.dataset_version)
        columns = [c.name for c in dataset.columns]
        need(
            label in columns,
            f"label {label!r} is not a column of data set {dataset.dataset!r} v{dataset.version} "
            f"(columns: {', '.join(columns)})",
        )
        judged = await self._judge(data, dataset, label)
        signature = judged.signature
        if spec is not None:
            need(
                spec.spec.task == signature.task,
                f"{name} is a {signature.task} model, but the spec of {header.model!r} says task "
                f"{spec.spec.task!r}",
            )
        else:
            spec = default_spec(model=header.model, dataset=dataset.dataset, label=label, signature=signature)
        applied = await self.specs.apply_model_spec(
            pb.ApplyModelSpecRequest(spec=spec, applied_by=applied_by)
        )

        namespace = f"models/{header.model}"
        model_ref = await self.store.put_bytes(namespace, "model.onnx", data)
        profile_ref = await self.store.put_bytes(namespace, "profile.json", judged.profile_json.encode())
        async with self.database.transaction() as tx:
            latest, _ = await models.lock_model(tx, name=header.model)
            existing = await storage.version_of_artifact(tx, model=header.model, sha256=digest)
            if existing is not None:  # the same bytes, registered meanwhile by another caller
                return pb.RegisterModelVersionResponse(model_version=existing, created=False)
            record = external_version(
                header,
                version=latest + 1,
                spec_version=applied.spec_version,
                dataset=dataset,
                signature=signature,
                model_ref=model_ref,
                profile_ref=profile_ref,
                created_at=now(),
            )
            await models.set_latest_version(tx, name=record.model, version=record.version)
            await storage.insert_version(tx, record=record, created_at=moment(record.created_at))
            await self.outbox.add(tx, registered_event(record))
            await self.outbox.add(tx, trained_event(record))
        return pb.RegisterModelVersionResponse(model_version=record, created=True)

    async def _registered(self, model: str, sha256: str) -> pb.ModelVersion | None:
        async with self.database.session() as session:
            return await storage.version_of_artifact(session, model=model, sha256=sha256)

    async def _latest_spec(self, model: str) -> pb.ModelSpec | None:
        try:
            found = await self.specs.get_model_spec(pb.GetModelSpecRequest(model=model))
        except NotFound:
            return None
        return found.spec

    async def _dataset(self, dataset: str, version: int) -> pb.DatasetVersion:
        request = pb.GetDatasetVersionRequest(dataset=dataset)
        if version:
            request.version = version
        return await self.datasets.get_dataset_version(request)

    async def _judge(self, model: bytes, dataset: pb.DatasetVersion, label: str) -> profiling.Judged:
        assert self.store is not None
        with tempfile.TemporaryDirectory(prefix="mlops-register-") as folder:
            path = await self.store.get_file(
                dataset.uri, Path(folder) / f"data.{dataset.format}", dataset.sha256
            )
            try:
                return await asyncio.to_thread(
                    profiling.judge, model, path, dataset.format, label, self.settings.profile_max_rows
                )
            except InvalidArgument as error:
                raise InvalidArgument(
                    f"{error.message} (data set {dataset.dataset!r} v{dataset.version})"
                ) from None
