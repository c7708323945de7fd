"""A model version's lineage, gathered from the other aggregates: its spec, the data set version it was
trained on with that version's ancestors, its run, evaluations, deployments, alias moves and the
monitor's events. A part the registry no longer holds is left out rather than failing the whole."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlops.errors import NotFound
from mlops.events.v1 import monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.settings import RegistrySettings

if TYPE_CHECKING:
    from services.registry.core.aliases import Aliases
    from services.registry.core.datasets import Datasets
    from services.registry.core.deployments import Deployments
    from services.registry.core.evaluations import Evaluations
    from services.registry.core.runs import Runs
    from services.registry.core.specs import Specs
    from services.registry.core.versions import ModelVersions

DEFAULT_MAX_ANCESTORS = 1_000


def version_request(request: pb.GetLineageRequest) -> pb.GetModelVersionRequest:
    """The version a lineage request names: by alias, by number, else the latest."""
    selector = request.WhichOneof("selector")
    wanted = pb.GetModelVersionRequest(model=request.model)
    if selector == "alias":
        wanted.alias = request.alias
    elif selector == "version":
        wanted.version = request.version
    return wanted


def trained_on(version: pb.ModelVersion) -> pb.GetDatasetVersionRequest:
    """The data set version a model version names: by number, else by sha256."""
    wanted = pb.GetDatasetVersionRequest(dataset=version.dataset)
    if version.dataset_version:
        wanted.version = version.dataset_version
    else:
        wanted.sha256 = version.dataset_sha256
    return wanted


class Lineage:
    def __init__(
        self,
        settings: RegistrySettings,
        *,
        versions: ModelVersions,
        specs: Specs,
        datasets: Datasets,
        runs: Runs,
        evaluations: Evaluations,
        deployments: Deployments,
        aliases: Aliases,
    ) -> None:
        self.settings = settings
        self.versions = versions
        self.specs = specs
        self.datasets = datasets
        self.runs = runs
        self.evaluations = evaluations
        self.deployments = deployments
        self.aliases = aliases

    async def get_lineage(self, request: pb.GetLineageRequest) -> pb.GetLineageResponse:
        version = await self.versions.get_model_version(version_request(request))
        lineage = pb.GetLineageResponse(model_version=version)
        if version.spec_version:
            try:
                lineage.spec.CopyFrom(
                    await self.specs.get_model_spec(
                        pb.GetModelSpecRequest(model=version.model, version=version.spec_version)
                    )
                )
            except NotFound:
                pass
        if version.dataset:
            await self._add_data(lineage, version, request.max_dataset_ancestors or DEFAULT_MAX_ANCESTORS)
        if version.run_id:
            try:
                lineage.run.CopyFrom(
                    await self.runs.get_run(pb.GetRunRequest(run_id=version.run_id, include_history=True))
                )
            except NotFound:
                pass
        every = self.settings.max_page_size
        evaluations = await self.evaluations.list_evaluations(
            pb.ListEvaluationsRequest(model=version.model, version=version.version, page_size=every)
        )
        lineage.evaluations.extend(evaluations.evaluations)
        deployments = await self.deployments.list_deployments(
            pb.ListDeploymentsRequest(model=version.model, version=version.version, page_size=every)
        )
        lineage.deployments.extend(deployments.deployments)
        lineage.alias_changes.extend(await self.aliases.changes_of_version(version.model, version.version))
        for event in await self.deployments.monitor_events_of(version.model, version.version):
            if isinstance(event, monitoring_pb2.DriftDetected):
                lineage.drift_events.append(event)
            else:
                lineage.degradations.append(event)
        return lineage

    async def _add_data(self, lineage: pb.GetLineageResponse, version: pb.ModelVersion, limit: int) -> None:
        """The data set version trained on and its parents, nearest first, at most `limit` of them;
        the walk stops at a version the registry does not hold."""
        try:
            current = await self.datasets.get_dataset_version(trained_on(version))
            lineage.dataset_version.CopyFrom(current)
            while current.parent_version and len(lineage.dataset_ancestors) < limit:
                current = await self.datasets.get_dataset_version(
                    pb.GetDatasetVersionRequest(dataset=current.dataset, version=current.parent_version)
                )
                lineage.dataset_ancestors.append(current)
        except NotFound:
            pass
