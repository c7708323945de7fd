"""Model specs, applied like `kubectl apply`: defaults filled in, every problem named at once, and a new
spec version only when the spec's fingerprint changes."""

from __future__ import annotations

from mlops.db import Database
from mlops.errors import InvalidArgument, NotFound
from mlops.registry.v1 import registry_pb2 as pb
from services.registry import spec as specs
from services.registry.common import Page, now, timestamp
from services.registry.settings import RegistrySettings
from services.registry.storage import models
from services.registry.storage import specs as storage


def checked_spec(spec: pb.ModelSpec) -> pb.ModelSpec:
    """The spec with its defaults, or InvalidArgument listing every problem."""
    spec = specs.with_defaults(spec)
    problems = specs.validate(spec)
    if problems:
        raise InvalidArgument("the spec is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec


class Specs:
    def __init__(self, database: Database, settings: RegistrySettings) -> None:
        self.database = database
        self.settings = settings

    async def apply_model_spec(self, request: pb.ApplyModelSpecRequest) -> pb.ApplyModelSpecResponse:
        spec = checked_spec(request.spec)
        digest = specs.fingerprint(spec)
        name = spec.metadata.name
        async with self.database.transaction() as tx:
            _, latest = await models.lock_model(tx, name=name)
            if latest:
                current = await storage.spec_by_version(tx, model=name, version=latest)
                if current is not None and current.sha256 == digest:
                    return pb.ApplyModelSpecResponse(spec_version=latest, changed=False, applied=current)
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
            await models.set_latest_spec_version(tx, name=name, version=applied.version)
            await storage.insert_spec(tx, applied=applied)
        return pb.ApplyModelSpecResponse(spec_version=applied.version, changed=True, applied=applied)

    async def get_model_spec(self, request: pb.GetModelSpecRequest) -> pb.ModelSpecVersion:
        async with self.database.session() as session:
            if request.version:
                found = await storage.spec_by_version(session, model=request.model, version=request.version)
            else:
                found = await storage.latest_spec(session, model=request.model)
        if found is None:
            suffix = f" version {request.version}" if request.version else ""
            raise NotFound(
                f"model {request.model!r} has no spec{suffix}; apply one with `mlops apply -f spec.yaml`"
            )
        return found

    async def list_model_specs(self, request: pb.ListModelSpecsRequest) -> pb.ListModelSpecsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            found, token = await storage.list_latest_specs(
                session, dataset=request.dataset, labels=dict(request.labels), page=page
            )
        return pb.ListModelSpecsResponse(specs=found, next_page_token=token)

    async def specs_for_dataset(self, dataset: str) -> list[pb.ModelSpecVersion]:
        """The latest spec of every model that trains on `dataset` (what a data commit triggers)."""
        response = await self.list_model_specs(pb.ListModelSpecsRequest(dataset=dataset, page_size=1000))
        return list(response.specs)
