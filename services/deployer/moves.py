"""The deployer's one way to move a rollout: the desired state (when traffic changes), the
rollout's row and `RolloutProgressed`, in the caller's transaction, then the registry's record of
it; and the helpers every move uses (locks, spans, labels, metrics)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import FailedPrecondition, InvalidArgument, NotFound
from mlops.events.v1 import deployment_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.tracecontext import context_from_text
from services.deployer import policy, prometheus, storage
from services.deployer.locks import KeyedLocks
from services.deployer.policy import Share
from services.deployer.serving import now_ts, state_name
from services.deployer.settings import DeployerSettings
from services.deployer.storage import StoredRollout

if TYPE_CHECKING:  # the clients are the gRPC adapters the composition root passes in
    from services.deployer.clients import MonitorClient, RegistryClient

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.deployer")

S = deployment_pb2
STATE_NAMES = [name.removeprefix("ROLLOUT_STATE_") for name in S.RolloutState.keys()[1:]]


class RolloutMoves:
    def __init__(
        self,
        database: Database,
        registry: RegistryClient,
        monitor: MonitorClient,
        outbox: Outbox,
        settings: DeployerSettings,
        *,
        scope: str = "",
    ) -> None:
        self.database = database
        self.registry = registry
        self.monitor = monitor
        self.outbox = outbox
        self.settings = settings
        self.scope = scope
        """The bus topic prefix: this deployer acts only on rollouts started under it."""
        self._locks = KeyedLocks()
        self._held: dict[str, tuple[float, float]] = {}
        """Held rollouts: when each is next checked, and the interval that led there. Pruned to the
        running rollouts at every tick."""

    def _lock(self, model: str):
        return self._locks.hold(model)

    async def _move(
        self,
        session: AsyncSession,
        stored: StoredRollout,
        *,
        state: int,
        actor: str,
        reason: str,
        shares: list[Share] | None = None,
        new: bool = False,
        finished: bool = False,
    ) -> None:
        """Apply one move: the desired state (when traffic changes), the rollout's row, RolloutProgressed."""
        r = stored.rollout
        now = now_ts()
        if shares is not None:
            desired = await self._publish_desired(session, stored, shares, now)
            r.generation = desired.generation
            r.traffic_percent = next(
                (
                    s.traffic_percent
                    for s in shares
                    if s.version == r.candidate_version and s.role != policy.PRODUCTION
                ),
                100 if any(s.version == r.candidate_version for s in shares) else 0,
            )
        if shares is not None and not finished:
            # A step's time runs from the desired state that gives the candidate its share, not from
            # the decision: the alias moves before it take a while, and a step must never be shorter
            # than step_seconds of traffic.
            r.step_started_at.CopyFrom(now)
        r.state = state
        r.reason = reason
        r.updated_at.CopyFrom(now)
        if finished:
            r.finished_at.CopyFrom(now)
        progressed = S.RolloutProgressed(
            rollout_id=r.rollout_id,
            model=r.model,
            candidate_version=r.candidate_version,
            baseline_version=r.baseline_version,
            strategy=r.strategy,
            step_index=r.step_index,
            step_count=len(r.steps),
            traffic_percent=r.traffic_percent,
            state=state,
            candidate_health=r.candidate_health,
            baseline_health=r.baseline_health,
            reason=reason,
            actor=actor,
            generation=r.generation,
        )
        progressed.progressed_at.CopyFrom(now)
        r.history.append(progressed)
        if new:
            await storage.insert_rollout(session=session, scope=self.scope, stored=stored)
        else:
            await storage.update_rollout(session=session, scope=self.scope, stored=stored)
        await self.outbox.add(session, progressed)
        self._observe(stored)

    async def _publish_desired(
        self, session: AsyncSession, stored: StoredRollout, shares: list[Share], now: Timestamp
    ) -> S.DesiredState:
        r = stored.rollout
        generation = await storage.next_generation(session=session, scope=self.scope, model=r.model)
        versions = []
        for share in shares:
            source = stored.candidate if share.version == r.candidate_version else stored.baseline
            assert source is not None, "a share of a version the rollout does not know"
            version = S.ServingVersion()
            version.CopyFrom(source)
            version.role = share.role
            version.traffic_percent = share.traffic_percent
            versions.append(version)
        desired = S.DesiredState(
            model=r.model,
            generation=generation,
            versions=versions,
            batching=stored.batching,
            rollout_id=r.rollout_id,
        )
        desired.updated_at.CopyFrom(now)
        await storage.save_desired_state(session=session, scope=self.scope, desired=desired)
        await self.outbox.add(session, desired)
        return desired

    async def _record(self, stored: StoredRollout) -> None:
        """The registry's record of the rollout (RecordDeployment), once per move; a failure is caught
        up by the next tick."""
        r = stored.rollout
        deployment = pb.Deployment(
            rollout_id=r.rollout_id,
            model=r.model,
            version=r.candidate_version,
            baseline_version=r.baseline_version,
            strategy=r.strategy,
            state=r.state,
            traffic_percent=r.traffic_percent,
            generation=r.generation,
            actor=r.history[-1].actor if r.history else r.actor,
            reason=r.reason,
            started_at=r.started_at,
            updated_at=r.updated_at,
        )
        if r.HasField("finished_at"):
            deployment.finished_at.CopyFrom(r.finished_at)
        with self._span("record deployment", stored):
            try:
                await self.registry.record_deployment(deployment)
            except Exception as error:
                log.warning("deployment record of rollout %s not stored yet: %s", r.rollout_id, error)
                return
        async with self.database.transaction() as session:
            await storage.mark_recorded(session=session, rollout_id=r.rollout_id, moves=len(r.history))
        stored.recorded_moves = len(r.history)

    async def _fill_baseline_health(self, stored: StoredRollout) -> None:
        """The baseline's health beside the candidate's, for the record of a move (best effort)."""
        r = stored.rollout
        if not r.baseline_version:
            return
        try:
            response = await self.monitor.health(
                r.model, r.baseline_version, window_seconds=r.step_seconds, baseline_version=0
            )
            r.baseline_health.CopyFrom(response.health)
        except Exception as error:
            log.info("no baseline health for %s v%d: %s", r.model, r.baseline_version, error)

    # --- helpers -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _acting_on(self, model: str, rollout_id: str):
        """The running (or named) rollout, locked for one move by a person."""
        async with self.database.session() as session:
            found = await self._find(session, model, rollout_id, running_first=True)
        self._held.pop(found.rollout.rollout_id, None)  # a person acted: look again at the next tick
        async with self._lock(found.model):
            async with self.database.transaction() as session:
                stored = await storage.get_rollout(
                    session=session, scope=self.scope, rollout_id=found.rollout.rollout_id, for_update=True
                )
                assert stored is not None
                yield session, stored

    async def _find(
        self, session: AsyncSession, model: str, rollout_id: str, *, running_first: bool = True
    ) -> StoredRollout:
        if rollout_id:
            stored = await storage.get_rollout(session=session, scope=self.scope, rollout_id=rollout_id)
            if stored is None:
                raise NotFound(f"no rollout with id {rollout_id!r}")
            if model and stored.model != model:
                raise InvalidArgument(f"rollout {rollout_id} is of model {stored.model!r}, not {model!r}")
            return stored
        if not model:
            raise InvalidArgument("give a model name or a rollout_id")
        stored = await storage.running_rollout(session=session, scope=self.scope, model=model)
        if stored is None:
            stored = await storage.latest_rollout(session=session, scope=self.scope, model=model)
        if stored is None:
            raise NotFound(f"model {model!r} has no rollouts")
        return stored

    @staticmethod
    def _need_running(stored: StoredRollout, move: str) -> None:
        if not stored.running:
            r = stored.rollout
            raise FailedPrecondition(
                f"cannot {move}: {r.model} has no running rollout; its latest, {r.rollout_id} "
                f"(v{r.candidate_version}), ended {state_name(r.state)}"
            )

    @staticmethod
    def _running_state(stored: StoredRollout) -> int:
        if stored.rollout.strategy == policy.SHADOW:
            return S.ROLLOUT_STATE_SHADOWING
        return S.ROLLOUT_STATE_PROGRESSING

    @staticmethod
    def _label(stored: StoredRollout) -> str:
        r = stored.rollout
        return policy.step_label(r.strategy, list(r.steps), r.step_index)

    @staticmethod
    def _summary(stored: StoredRollout) -> str:
        r = stored.rollout
        if r.strategy == policy.CANARY:
            return "canary healthy at " + ", ".join(f"{s}%" for s in r.steps)
        if r.strategy == policy.SHADOW:
            return f"shadow healthy for {r.step_seconds}s; all traffic switched to v{r.candidate_version}"
        return f"green v{r.candidate_version} healthy with all traffic; blue v{r.baseline_version} dropped"

    @contextlib.contextmanager
    def _span(self, name: str, stored: StoredRollout) -> Iterator[trace.Span]:
        """A span in the trace that started the rollout."""
        r = stored.rollout
        parent = context_from_text(stored.traceparent) if stored.traceparent else None
        with tracer.start_as_current_span(
            name,
            context=parent,
            attributes={
                "mlops.model.name": r.model,
                "mlops.model.version": r.candidate_version,
                "mlops.rollout.id": r.rollout_id,
            },
        ) as span:
            yield span

    def _observe(self, stored: StoredRollout) -> None:
        r = stored.rollout
        current = state_name(r.state)
        for name in STATE_NAMES:
            prometheus.STATE.labels(r.model, name).set(1 if name == current else 0)
        prometheus.STEP.labels(r.model).set(r.step_index)
        deadline = storage.health_deadline(stored)
        prometheus.STEP_DEADLINE.labels(r.model).set(deadline.timestamp() if deadline else 0)
        prometheus.TRAFFIC_PERCENT.labels(r.model, str(r.candidate_version)).set(
            0 if r.state in (S.ROLLOUT_STATE_ROLLED_BACK, S.ROLLOUT_STATE_ABORTED) else r.traffic_percent
        )
        prometheus.keep_traffic_series(r.model, {str(r.candidate_version), str(r.baseline_version)})
