"""The deployer's work, transport-neutral: rollouts from passed evaluations, a watch over every running
rollout, and the operator's moves (start, promote, roll back, pause, resume).

Every move is one database transaction: the rollout's row, the model's desired state with its next
generation, and the events (`DesiredState`, `RolloutProgressed`, `ModelDeployed`, `ModelRolledBack`)
through the outbox. Alias moves in the registry come first, with compare-and-set, so that a move
whose transaction fails is repeated harmlessly; the registry's deployment record follows the commit
(and is caught up by the next tick if the registry was away).

The watch runs every `tick_interval_s`: it asks the monitor for the candidate's health over the last
`step_seconds`, lets `policy.decide` choose, and applies the choice. The step's start time is stored,
so a restarted deployer goes on with the same clock. Each watch, and everything it calls, is a child
of the trace context stored with the rollout: the trace of the data commit that led to it.

Layers, each a base of the next: `moves` (one move and the helpers every move uses), `transitions`
(how a rollout starts and ends), `watch` (the ticks), and here the entry points people and events use.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from opentelemetry import trace
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.errors import FailedPrecondition, InvalidArgument, NotFound
from mlops.events.v1 import deployment_pb2, evaluation_pb2
from services.deployer import policy, storage
from services.deployer.claims import confirmed_evaluation
from services.deployer.serving import (  # noqa: F401 - the core's public helpers
    check_evaluated,
    health_timeout_of,
    now_ts,
    prediction_drift_bound,
    production_of,
    serving_version,
    state_name,
)
from services.deployer.watch import RolloutWatch

log = logging.getLogger(__name__)

S = deployment_pb2


class DeployerCore(RolloutWatch):
    # --- passed evaluations ------------------------------------------------------------------------

    async def handle_model_evaluated(
        self, event: evaluation_pb2.ModelEvaluated, *, session: AsyncSession
    ) -> dpb.Rollout | None:
        """Roll out a version that passed its gate, in the consumer's transaction; a failed one is
        logged and left alone. A pass the registry does not confirm is refused (`claims`). The current
        trace context is stored with the rollout."""
        check_evaluated(event)
        span = trace.get_current_span()
        if not event.passed:
            failed = [g.gate for g in event.gates if not g.passed]
            span.set_attribute("mlops.deployer.skipped", "gate failed")
            log.info(
                "%s v%d failed its gate (%s): not rolled out",
                event.model,
                event.version,
                ", ".join(failed) or "no gate passed",
            )
            return None
        # A pass is believed only as the registry holds it; a refusal here dead-letters the event.
        await confirmed_evaluation(self.registry, event)
        if event.evaluation_id:
            before = await storage.evaluation_seen(
                session=session, scope=self.scope, evaluation_id=event.evaluation_id
            )
            if before is not None:
                log.info(
                    "evaluation %s started rollout %s before", event.evaluation_id, before.rollout.rollout_id
                )
                return before.rollout
        async with self._lock(event.model):
            stored = await self._start(
                session,
                model=event.model,
                version=event.version,
                strategy="",
                actor=self.settings.actor,
                reason=f"v{event.version} passed its gate ({event.primary_metric or 'every gate'})",
                evaluation_id=event.evaluation_id,
                manual=False,
            )
        return stored.rollout if stored is not None else None

    # --- the operator's moves ------------------------------------------------------------------------

    async def start_rollout(
        self, *, model: str, version: int, strategy: str, actor: str, reason: str
    ) -> dpb.Rollout:
        if not model:
            raise InvalidArgument("model is required")
        if version <= 0:
            raise InvalidArgument(f"version must be a model version (1 or more), got {version}")
        if strategy and strategy not in policy.STRATEGIES:
            raise InvalidArgument(
                f"strategy {strategy!r} is not one of {', '.join(policy.STRATEGIES)} (or empty for the spec's)"
            )
        async with self._lock(model):
            async with self.database.transaction() as session:
                stored = await self._start(
                    session,
                    model=model,
                    version=version,
                    strategy=strategy,
                    actor=actor,
                    reason=reason or f"started by {actor}",
                    evaluation_id="",
                    manual=True,
                )
        assert stored is not None
        await self._record(stored)
        return stored.rollout

    async def promote(self, *, model: str, rollout_id: str, actor: str, reason: str) -> dpb.Rollout:
        async with self._acting_on(model, rollout_id) as (session, stored):
            self._need_running(stored, "promote")
            with self._span("promote rollout", stored):
                await self._promote(
                    session,
                    stored,
                    actor=actor,
                    reason=f"{_by('promoted', actor, reason)} at {self._label(stored)}",
                )
        await self._record(stored)
        return stored.rollout

    async def rollback(self, *, model: str, rollout_id: str, actor: str, reason: str) -> dpb.Rollout:
        why = _by("rolled back", actor, reason)
        if not rollout_id:
            if not model:
                raise InvalidArgument("give a model name or a rollout_id")
            async with self.database.session() as session:
                running = await storage.running_rollout(session=session, scope=self.scope, model=model)
            if running is None:
                return await self._rollback_production(model=model, actor=actor, reason=why)
        async with self._acting_on(model, rollout_id) as (session, stored):
            self._need_running(stored, "roll back")
            with self._span("roll back rollout", stored):
                await self._roll_back(
                    session, stored, actor=actor, reason=f"{why} at {self._label(stored)}", automatic=False
                )
        await self._record(stored)
        return stored.rollout

    async def pause(self, *, model: str, rollout_id: str, actor: str, reason: str) -> dpb.Rollout:
        async with self._acting_on(model, rollout_id) as (session, stored):
            self._need_running(stored, "pause")
            if stored.rollout.state == S.ROLLOUT_STATE_PAUSED:
                raise FailedPrecondition(
                    f"rollout {stored.rollout.rollout_id} of {stored.model} is already paused"
                )
            with self._span("pause rollout", stored):
                await self._move(
                    session,
                    stored,
                    state=S.ROLLOUT_STATE_PAUSED,
                    actor=actor,
                    reason=f"{_by('paused', actor, reason)} at {self._label(stored)}; health is still watched",
                )
        await self._record(stored)
        return stored.rollout

    async def resume(self, *, model: str, rollout_id: str, actor: str, reason: str) -> dpb.Rollout:
        async with self._acting_on(model, rollout_id) as (session, stored):
            self._need_running(stored, "resume")
            if stored.rollout.state != S.ROLLOUT_STATE_PAUSED:
                raise FailedPrecondition(
                    f"rollout {stored.rollout.rollout_id} of {stored.model} is not paused "
                    f"(it is {state_name(stored.rollout.state)}); only a paused rollout resumes"
                )
            # A person resumed: the health timeout counts afresh from now.
            stored.verdict_at = datetime.now(UTC)
            with self._span("resume rollout", stored):
                await self._move(
                    session,
                    stored,
                    state=self._running_state(stored),
                    actor=actor,
                    reason=f"{_by('resumed', actor, reason)} at {self._label(stored)}",
                )
        await self._record(stored)
        return stored.rollout

    # --- reads ---------------------------------------------------------------------------------------

    async def get_rollout(self, *, model: str, rollout_id: str) -> dpb.Rollout:
        async with self.database.session() as session:
            return (await self._find(session, model, rollout_id)).rollout

    async def list_rollouts(
        self, *, model: str, state: int, page_size: int, page_token: str
    ) -> dpb.ListRolloutsResponse:
        if page_size < 0 or page_size > 1000:
            raise InvalidArgument(f"page_size must be 0 (the default, 50) to 1000, got {page_size}")
        async with self.database.session() as session:
            rollouts, token = await storage.list_rollouts(
                session=session,
                scope=self.scope,
                model=model,
                state=state,
                page_size=page_size or 50,
                page_token=page_token,
            )
        return dpb.ListRolloutsResponse(rollouts=rollouts, next_page_token=token)

    async def get_desired_state(self, *, model: str) -> S.DesiredState:
        if not model:
            raise InvalidArgument("model is required")
        async with self.database.session() as session:
            desired = await storage.desired_state(session=session, scope=self.scope, model=model)
        if desired is None:
            raise NotFound(f"the deployer has published no desired state for model {model!r}")
        return desired


def _by(done: str, actor: str, reason: str) -> str:
    """What a person did to a rollout, for its ledger: "paused by alice: load test"."""
    return f"{done} by {actor}" + (f": {reason}" if reason else "")
