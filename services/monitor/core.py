"""The monitor's rules, transport-neutral: counted batches in, judged windows, alarms and health out.

`MonitorCore` composes the parts, each in a module of its own, and writes their commit:

- `counting`: `count_batch` (pure, CPU-bound, run off the event loop) turns one decoded batch into
  per-window count deltas, health rows and prediction rows; `merge` adds them to the open windows
  (`windows`) and the health boards (`queries`).
- `commit` writes, in ONE transaction, the open windows' counts, the new predictions, the consumed
  offsets of every partition, and every window that is due: its judgement, the version's alarm
  state and the events it raises through the outbox (`alarms`, and `retraining` for the retrain
  an alarm asks for). After a crash the consumer resumes at the stored offsets with exactly the
  counts that those offsets produced: nothing is counted twice.
- `queries` answers health and drift status; `storage` holds the SQL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

import numpy as np
from opentelemetry import trace
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import NotFound
from mlops.outbox import Outbox
from mlops.store import ArtifactStore
from services.monitor import prometheus, storage
from services.monitor.alarms import Alarms, Closing, VersionState
from services.monitor.batch import BatchRows, InvalidBatch
from services.monitor.counting import CountedBatch, HealthDelta, Prepared, WindowDelta, count_batch
from services.monitor.external import trained_elsewhere
from services.monitor.health import VersionHealth
from services.monitor.lru import LRU
from services.monitor.predictions import StagedPredictions, copy_predictions
from services.monitor.queries import Queries
from services.monitor.retraining import Retraining
from services.monitor.settings import MonitorSettings
from services.monitor.windows import CommitPlan, OpenWindow, OpenWindows

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.monitor.clients import ModelCatalog, RegistryClient, VersionInfo

log = logging.getLogger(__name__)

__all__ = [
    "Closing",
    "CommitPlan",
    "CountedBatch",
    "HealthDelta",
    "MonitorCore",
    "OpenWindow",
    "Prepared",
    "VersionState",
    "WindowDelta",
    "count_batch",
]


class MonitorCore:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        catalog: ModelCatalog,
        registry: RegistryClient,
        store: ArtifactStore,
        settings: MonitorSettings,
        consumer_group: str,
    ) -> None:
        self.database = database
        self.catalog = catalog
        self.consumer_group = consumer_group
        # Per-version state is keyed by the versions events name: each part's maps hold at most
        # `max_tracked_versions`, the least recently used forgotten past that.
        self.open = OpenWindows(database=database, settings=settings)
        self.alarms = Alarms(
            database=database,
            outbox=outbox,
            catalog=catalog,
            settings=settings,
            consumer_group=consumer_group,
        )
        self.retraining = Retraining(
            database=database, outbox=outbox, registry=registry, store=store, settings=settings
        )
        self.queries = Queries(database=database, catalog=catalog, settings=settings)
        self.reported: LRU[tuple[str, int, tuple[str, ...], tuple[str, ...]], bool] = LRU(
            settings.max_tracked_versions
        )
        """Input layouts that did not match a version's profile, reported once each."""
        self.settings = settings
        prometheus.SERIES.resize(settings.max_metric_series)

    @property
    def settings(self) -> MonitorSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: MonitorSettings) -> None:
        self._settings = settings
        for part in (self.open, self.alarms, self.retraining, self.queries):
            part.settings = settings

    # The parts' state, as the ingest loop, the performance tracker and tests read it.

    @property
    def windows(self) -> dict[tuple[str, int, int], OpenWindow]:
        return self.open.windows

    @property
    def closed(self) -> LRU[tuple[str, int], int]:
        return self.open.closed

    @property
    def offsets(self) -> dict[tuple[str, int], int]:
        return self.open.offsets

    @property
    def partitions(self) -> set[int]:
        return self.open.partitions

    @property
    def caught_up(self) -> dict[int, bool]:
        return self.open.caught_up

    @property
    def watermarks(self) -> dict[int, float]:
        return self.open.watermarks

    @property
    def staging(self) -> StagedPredictions | None:
        return self.open.staging

    @property
    def health(self) -> LRU[tuple[str, int], VersionHealth]:
        return self.queries.health

    @property
    def live_metrics(self) -> LRU[tuple[str, int], dict[str, float]]:
        return self.queries.live_metrics

    # --- partitions -----------------------------------------------------------------------------

    async def load(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Take over `partitions`: their open windows and alarm state from PostgreSQL, and the offsets
        to resume at (absent where none is stored)."""
        partitions = list(partitions)
        self.open.partitions.update(partitions)
        group = self.consumer_group
        async with self.database.session() as session:
            windows = await storage.read_open_windows(
                session=session, consumer_group=group, partitions=partitions
            )
            closed = await storage.read_newest_closed(
                session=session, consumer_group=group, partitions=partitions
            )
            resume = await storage.read_offsets(
                session=session, consumer_group=group, topic=topic, partitions=partitions
            )
        self.open.restore(topic, windows=windows, closed=closed, offsets=resume)
        return resume

    def release(self, topic: str, partitions: Iterable[int]) -> None:
        """Forget partitions given to another replica (after a commit): their windows are theirs now."""
        self.open.release(topic, partitions)

    # --- ingest ---------------------------------------------------------------------------------

    async def prepare(self, rows: BatchRows, *, partition: int, traceparent: str | None) -> Prepared:
        """Registry look-ups for a batch (cached). An unknown model or version is the batch's fault."""
        spec = await self.catalog.spec(rows.model)
        body = spec.spec.spec
        versions: dict[int, VersionInfo] = {}
        for version in np.unique(rows.versions).tolist():
            try:
                versions[version] = await self.catalog.version(rows.model, version)
            except NotFound:
                raise InvalidBatch(f"model {rows.model!r} has no version {version} in the registry") from None
        return Prepared(
            rows=rows,
            window_seconds=max(int(body.monitor.window_seconds), 1),
            task=body.task,
            versions=versions,
            partition=partition,
            traceparent=traceparent,
            label=body.label,
        )

    def merge(self, counted: CountedBatch, *, now: float | None = None) -> None:
        """Add a counted batch to the health boards and the open windows (on the event loop)."""
        self.queries.add_health(counted.health, time.time() if now is None else now)
        self.open.merge(counted)
        for version, (missing, extra) in counted.unmatched.items():
            key = (counted.model, version, missing, extra)
            if key in self.reported:
                continue
            self.reported[key] = True
            log.warning(
                "%s v%d: the inference log lacks %s of the training profile (not judged for drift); "
                "it logs %s that the profile lacks (ignored)",
                counted.model,
                version,
                ", ".join(missing) or "no feature",
                ", ".join(extra) or "no input",
            )

    def due(self, now: float) -> list[OpenWindow]:
        return self.open.due(now)

    def publish_gauges(self) -> None:
        self.queries.publish_gauges()

    async def window_seconds_of(self, model: str) -> int:
        return await self.queries.window_seconds_of(model)

    # --- commit ---------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> CommitPlan:
        return self.open.snapshot(now)

    def stage(self) -> None:
        self.open.stage()

    async def discard_staged(self) -> None:
        await self.open.discard_staged()

    async def commit(self, *, now: float | None = None) -> int:
        """Snapshot and write at once (see `write`); returns the number of windows closed."""
        return await self.write(self.snapshot(now))

    async def write(self, plan: CommitPlan) -> int:
        """Write a snapshot's open windows, predictions and offsets, and close its due windows, in one
        transaction (the staged one, if predictions were copied ahead). May be retried with the same
        plan after a failure: the retry writes every prediction in a new transaction. Returns the
        windows closed."""
        staged, plan.staged = plan.staged, None
        try:
            return await self._write(plan, staged)
        except BaseException:
            if staged is not None:
                await staged.discard()
            raise

    async def _write(self, plan: CommitPlan, staged: StagedPredictions | None) -> int:
        now = plan.now
        closings = [await self.alarms.judge(window, now) for window in plan.closing]
        asking = [c for c in closings if await self.retraining.wanted(c)]
        for closing in asking:
            closing.new_model = trained_elsewhere(closing.spec)
        assembling = [c for c in asking if not c.new_model]
        if assembling and self.settings.retrain_dataset != "latest" and plan.predictions:
            # The drifted windows' predictions must be in the table the data set is assembled from;
            # open windows, predictions and offsets make a consistent state on their own.
            async with self._transaction(staged) as (session, copied):
                await self._write_state(session, plan, copied)
            staged = None
            plan.predictions = []
        for closing in assembling:
            closing.retrain_span = self.retraining.retrain_span(closing)
            with trace.use_span(closing.retrain_span, end_on_exit=False):
                await self.retraining.choose_dataset(closing)
        try:
            async with self._transaction(staged) as (session, copied):
                await self._write_state(session, plan, copied)
                await storage.add_late_rows(
                    session=session, consumer_group=self.consumer_group, late=plan.late
                )
                for closing in closings:
                    with trace.use_span(closing.span, end_on_exit=False):
                        cause = await self.alarms.record(session, closing, now)
                        if cause is not None:
                            await self.retraining.follow_alarm(session, closing, cause, now)
        except BaseException:
            for closing in closings:
                closing.end_spans()
            raise
        self.alarms.settle(closings, now)
        for closing in closings:
            closing.end_spans()
        return len(closings)

    async def _write_state(self, session: AsyncSession, plan: CommitPlan, copied: int) -> None:
        """The plan's windows (the due ones too, so that a closing updates a stored row), the
        predictions not copied ahead, and the offsets."""
        group = self.consumer_group
        await storage.write_open_windows(
            session=session, consumer_group=group, windows=[*plan.windows, *plan.closing]
        )
        await copy_predictions(session, plan.predictions[copied:])
        await storage.write_offsets(session=session, consumer_group=group, offsets=plan.offsets)

    @contextlib.asynccontextmanager
    async def _transaction(self, staged: StagedPredictions | None) -> AsyncIterator[tuple[AsyncSession, int]]:
        """A commit's transaction and how many of its plan's predictions are in it already: the staged
        transaction, or a new one. On an error the caller discards the staged one."""
        if staged is None:
            async with self.database.transaction() as session:
                yield session, 0
            return
        session = await staged.session()
        yield session, staged.copied
        await staged.commit()
