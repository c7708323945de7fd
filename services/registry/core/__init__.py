"""The registry's rules, transport-neutral: requests and replies are the public protobuf messages,
state is PostgreSQL (`services.registry.storage`), events leave through the outbox in the same
transaction as the change.

One module per aggregate: `datasets`, `specs`, `versions`, `runs`, `evaluations`, `aliases`,
`deployments` (with the monitor's events), `lineage` (which reads through the others),
`retraining` (people's requests to retrain), `external` (models trained elsewhere, RegisterModel) and
`artifacts` (files up and down, in chunks). Versions (data sets, specs, models) come from a counter
row locked for the transaction, so they increase by one with no gap and no duplicate however many
writers race; every record call is idempotent on its natural key, so an at-least-once caller can
repeat it freely.
"""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.events.v1 import data_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from services.registry.core.aliases import Aliases
from services.registry.core.artifacts import Artifacts
from services.registry.core.datasets import Datasets, commit_request
from services.registry.core.deployments import Deployments, MonitorEvent
from services.registry.core.evaluations import Evaluations
from services.registry.core.external import ExternalModels
from services.registry.core.lineage import Lineage
from services.registry.core.retraining import Retraining
from services.registry.core.runs import Runs
from services.registry.core.specs import Specs
from services.registry.core.versions import ModelVersions
from services.registry.datasets import DatasetChecker
from services.registry.settings import RegistrySettings


class RegistryCore:
    """Every aggregate of the registry, built once; the servicer calls them, the event handlers call
    the entry points below."""

    def __init__(
        self,
        database: Database,
        outbox: Outbox,
        settings: RegistrySettings,
        datasets: DatasetChecker | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.settings = settings
        # The checker reads every data set back before it is recorded, from any caller; None records claims unread.
        self.datasets = Datasets(database, outbox, settings, checker=datasets)
        self.specs = Specs(database, settings)
        self.versions = ModelVersions(database, outbox, settings)
        self.runs = Runs(database, settings)
        self.evaluations = Evaluations(database, settings)
        self.aliases = Aliases(database, outbox, settings)
        self.deployments = Deployments(database, settings)
        self.lineage = Lineage(
            settings,
            versions=self.versions,
            specs=self.specs,
            datasets=self.datasets,
            runs=self.runs,
            evaluations=self.evaluations,
            deployments=self.deployments,
            aliases=self.aliases,
        )
        self.retraining = Retraining(database, outbox, specs=self.specs, datasets=self.datasets)
        # Files go through the store: models registered from outside, runs' files, downloads.
        self.external = ExternalModels(
            database, outbox, settings, store, specs=self.specs, datasets=self.datasets, runs=self.runs
        )
        self.artifacts = Artifacts(store, settings, runs=self.runs, versions=self.versions)

    async def record_dataset_version(
        self, request: pb.RecordDatasetVersionRequest, session: AsyncSession | None = None
    ) -> pb.RecordDatasetVersionResponse:
        """Record a data set version, in the caller's transaction when it gives one."""
        return await self.datasets.record_dataset_version(request, session)

    async def record_data_commit(
        self, event: data_pb2.DataCommitted, *, source: str, event_id: str, session: AsyncSession | None
    ) -> pb.RecordDatasetVersionResponse:
        """Record the version a `DataCommitted` names, in the consumer's transaction."""
        return await self.datasets.record_dataset_version(
            commit_request(event, source=source, event_id=event_id), session
        )

    async def record_monitor_event(self, event_id: str, event: MonitorEvent, session: AsyncSession) -> None:
        """Keep a monitor event for the version's lineage, in the consumer's transaction."""
        await self.deployments.record_monitor_event(event_id, event, session)
