"""How a rollout starts and ends: started from a passed evaluation or by a person, promoted,
rolled back (the candidate withdrawn, production back on the baseline), aborted when superseded,
and production rolled back to its previous version when no rollout runs."""

from __future__ import annotations

import logging
import uuid

from opentelemetry import trace
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.errors import FailedPrecondition
from mlops.events.v1 import deployment_pb2
from mlops.tracecontext import current_traceparent
from services.deployer import policy, prometheus, storage
from services.deployer.moves import RolloutMoves
from services.deployer.policy import Share
from services.deployer.serving import (
    health_timeout_of,
    now_ts,
    prediction_drift_bound,
    production_of,
    serving_version,
    state_name,
)
from services.deployer.storage import StoredRollout

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.deployer")

S = deployment_pb2


class RolloutTransitions(RolloutMoves):
    # --- moves ---------------------------------------------------------------------------------------

    async def _start(
        self,
        session: AsyncSession,
        *,
        model: str,
        version: int,
        strategy: str,
        actor: str,
        reason: str,
        evaluation_id: str,
        manual: bool,
    ) -> StoredRollout | None:
        spec = await self.registry.model_spec(model)
        candidate = await self.registry.model_version(model, version)
        body = spec.spec.spec
        running = await storage.running_rollout(
            session=session, scope=self.scope, model=model, for_update=True
        )
        desired = await storage.desired_state(session=session, scope=self.scope, model=model)
        baseline = production_of(desired)
        if baseline is None and desired is None:
            aliased = await self.registry.aliased_version(model, self.settings.production_alias)
            # An alias already on the candidate with nothing published means a first deployment that
            # moved the alias and then failed to commit: it is still a first deployment.
            if aliased is not None and aliased.version != version:
                baseline = serving_version(aliased)

        def skip(why: str) -> None:
            if manual:
                raise FailedPrecondition(why)
            log.info("%s v%d not rolled out: %s", model, version, why)
            trace.get_current_span().set_attribute("mlops.deployer.skipped", why)

        if baseline is not None and baseline.version == version:
            return skip(f"{model} v{version} is already in production")
        if running is not None and running.rollout.candidate_version == version:
            return skip(
                f"{model} v{version} is already being rolled out (rollout {running.rollout.rollout_id}, "
                f"{state_name(running.rollout.state)})"
            )
        if not manual and running is not None and version < running.rollout.candidate_version:
            return skip(
                f"v{version} is older than the running candidate v{running.rollout.candidate_version}"
            )
        if not manual and baseline is not None and version < baseline.version:
            return skip(f"v{version} is older than v{baseline.version} in production")

        chosen = strategy or body.rollout.strategy or policy.CANARY
        if baseline is None:
            if chosen != policy.DIRECT:
                reason += (
                    f"; v{version} is the first version of {model} with nothing in production: no baseline "
                    f"to split traffic with, so it is deployed directly instead of by {chosen}"
                )
            chosen = policy.DIRECT
        now = now_ts()
        rollout = dpb.Rollout(
            rollout_id=str(uuid.uuid4()),
            model=model,
            candidate_version=version,
            baseline_version=baseline.version if baseline is not None else 0,
            strategy=chosen,
            steps=policy.steps_of(chosen, list(body.rollout.steps)),
            step_index=0,
            step_seconds=body.rollout.step_seconds,
            max_error_rate=body.rollout.max_error_rate,
            max_p99_latency_ms=body.rollout.max_p99_latency_ms,
            min_requests=body.rollout.min_requests,
            max_prediction_drift=prediction_drift_bound(body, self.settings.max_prediction_drift),
            auto_promote=body.rollout.auto_promote if body.rollout.HasField("auto_promote") else True,
            actor=actor,
            evaluation_id=evaluation_id,
        )
        health_timeout_s, on_health_timeout = health_timeout_of(body)
        for stamp in (rollout.started_at, rollout.updated_at, rollout.step_started_at):
            stamp.CopyFrom(now)
        stored = StoredRollout(
            rollout=rollout,
            candidate=serving_version(candidate),
            baseline=baseline,
            batching=S.BatchingConfig(
                max_batch_size=body.serving.max_batch_size, max_wait_us=body.serving.max_wait_us
            ),
            traceparent=current_traceparent(),
            health_timeout_s=health_timeout_s,
            on_health_timeout=on_health_timeout,
        )
        span = trace.get_current_span()
        span.set_attributes(
            {
                "mlops.model.name": model,
                "mlops.model.version": version,
                "mlops.rollout.id": rollout.rollout_id,
                "mlops.rollout.strategy": chosen,
            }
        )
        if running is not None:
            with self._span("abort rollout", running):
                await self._abort(
                    session,
                    running,
                    actor=actor,
                    reason=f"superseded by v{version} (rollout {rollout.rollout_id})",
                    keep_canary_alias=chosen != policy.DIRECT,
                )
        with tracer.start_as_current_span(
            "start rollout",
            attributes={
                "mlops.model.name": model,
                "mlops.model.version": version,
                "mlops.rollout.id": rollout.rollout_id,
            },
        ):
            if chosen == policy.DIRECT:
                await self._promote(
                    session, stored, actor=actor, reason=f"{reason}; deployed directly", new=True
                )
            else:
                await self.registry.move_alias(
                    model,
                    self.settings.canary_alias,
                    version,
                    expected=None,
                    actor=actor,
                    reason=f"{chosen} rollout {rollout.rollout_id}",
                )
                shares = policy.shares_at(
                    chosen, list(rollout.steps), 0, candidate=version, baseline=rollout.baseline_version
                )
                await self._move(
                    session,
                    stored,
                    state=self._running_state(stored),
                    actor=actor,
                    shares=shares,
                    reason=f"{reason}; {chosen} of v{version} against v{rollout.baseline_version}: "
                    f"{self._label(stored)}",
                    new=True,
                )
        if chosen != policy.DIRECT:
            log.info("%s: %s", model, stored.rollout.reason)
        return stored

    async def _promote(
        self, session: AsyncSession, stored: StoredRollout, *, actor: str, reason: str, new: bool = False
    ) -> None:
        r = stored.rollout
        await self.registry.move_alias(
            r.model,
            self.settings.production_alias,
            r.candidate_version,
            expected=r.baseline_version,
            actor=actor,
            reason=f"rollout {r.rollout_id}: {reason}",
        )
        if not new:
            await self.registry.remove_alias(
                r.model,
                self.settings.canary_alias,
                expected=r.candidate_version,
                actor=actor,
                reason=f"rollout {r.rollout_id} promoted",
            )
        r.step_index = len(r.steps) - 1
        await self._move(
            session,
            stored,
            state=S.ROLLOUT_STATE_PROMOTED,
            actor=actor,
            shares=[Share(r.candidate_version, policy.PRODUCTION, 100)],
            reason=reason,
            new=new,
            finished=True,
        )
        deployed = S.ModelDeployed(
            model=r.model,
            version=r.candidate_version,
            previous_version=r.baseline_version,
            rollout_id=r.rollout_id,
            strategy=r.strategy,
            artifact_uri=stored.candidate.artifact_uri,
            artifact_sha256=stored.candidate.artifact_sha256,
            generation=r.generation,
            actor=actor,
            reason=reason,
        )
        deployed.deployed_at.CopyFrom(r.updated_at)
        await self.outbox.add(session, deployed)
        prometheus.FINISHED.labels(r.model, "promoted").inc()
        log.info("%s v%d promoted to production: %s", r.model, r.candidate_version, reason)

    async def _roll_back(
        self, session: AsyncSession, stored: StoredRollout, *, actor: str, reason: str, automatic: bool
    ) -> None:
        r = stored.rollout
        await self.registry.remove_alias(
            r.model,
            self.settings.canary_alias,
            expected=r.candidate_version,
            actor=actor,
            reason=f"rollout {r.rollout_id} rolled back",
        )
        if automatic:
            await self._fill_baseline_health(stored)
        shares = [Share(r.baseline_version, policy.PRODUCTION, 100)] if r.baseline_version else []
        await self._move(
            session,
            stored,
            state=S.ROLLOUT_STATE_ROLLED_BACK,
            actor=actor,
            shares=shares,
            reason=reason,
            finished=True,
        )
        await self._rolled_back_event(session, stored, actor=actor, reason=reason, automatic=automatic)

    async def _rolled_back_event(
        self, session: AsyncSession, stored: StoredRollout, *, actor: str, reason: str, automatic: bool
    ) -> None:
        r = stored.rollout
        event = S.ModelRolledBack(
            rollout_id=r.rollout_id,
            model=r.model,
            from_version=r.candidate_version,
            to_version=r.baseline_version,
            reason=reason,
            automatic=automatic,
            actor=actor,
            candidate_health=r.candidate_health,
            baseline_health=r.baseline_health,
            generation=r.generation,
        )
        event.rolled_back_at.CopyFrom(r.updated_at)
        await self.outbox.add(session, event)
        prometheus.FINISHED.labels(r.model, "rolled_back").inc()
        prometheus.ROLLBACKS.labels(r.model, "true" if automatic else "false").inc()
        log.warning("%s v%d rolled back to v%d: %s", r.model, r.candidate_version, r.baseline_version, reason)

    async def _abort(
        self,
        session: AsyncSession,
        stored: StoredRollout,
        *,
        actor: str,
        reason: str,
        keep_canary_alias: bool,
    ) -> None:
        r = stored.rollout
        if not keep_canary_alias:
            await self.registry.remove_alias(
                r.model, self.settings.canary_alias, expected=r.candidate_version, actor=actor, reason=reason
            )
        await self._move(
            session, stored, state=S.ROLLOUT_STATE_ABORTED, actor=actor, reason=reason, finished=True
        )
        prometheus.FINISHED.labels(r.model, "aborted").inc()
        log.info("%s rollout %s of v%d aborted: %s", r.model, r.rollout_id, r.candidate_version, reason)

    async def _rollback_production(self, *, model: str, actor: str, reason: str) -> dpb.Rollout:
        """With no rollout running: production goes back to the version that served before it."""
        async with self._lock(model):
            async with self.database.transaction() as session:
                desired = await storage.desired_state(session=session, scope=self.scope, model=model)
                current = production_of(desired)
                if current is None:
                    aliased = await self.registry.aliased_version(model, self.settings.production_alias)
                    if aliased is None:
                        await self.registry.model_spec(
                            model
                        )  # NotFound for a model the registry does not know
                        raise FailedPrecondition(f"{model} has nothing in production to roll back")
                    current = serving_version(aliased)
                previous = await self.registry.previous_production(
                    model, self.settings.production_alias, current.version
                )
                if not previous:
                    raise FailedPrecondition(
                        f"{model} v{current.version} is in production and no earlier version served before "
                        "it: nothing to roll back to"
                    )
                restored = serving_version(await self.registry.model_version(model, previous))
                now = now_ts()
                rollout = dpb.Rollout(
                    rollout_id=str(uuid.uuid4()),
                    model=model,
                    candidate_version=current.version,
                    baseline_version=previous,
                    strategy=policy.DIRECT,
                    steps=[100],
                    actor=actor,
                )
                for stamp in (rollout.started_at, rollout.updated_at, rollout.step_started_at):
                    stamp.CopyFrom(now)
                stored = StoredRollout(
                    rollout=rollout,
                    candidate=current,
                    baseline=restored,
                    batching=desired.batching if desired is not None else S.BatchingConfig(),
                    traceparent=current_traceparent(),
                )
                why = f"{reason}: production back from v{current.version} to v{previous}"
                with tracer.start_as_current_span(
                    "roll back production",
                    attributes={"mlops.model.name": model, "mlops.model.version": current.version},
                ):
                    await self.registry.move_alias(
                        model,
                        self.settings.production_alias,
                        previous,
                        expected=current.version,
                        actor=actor,
                        reason=why,
                    )
                    await self._move(
                        session,
                        stored,
                        state=S.ROLLOUT_STATE_ROLLED_BACK,
                        actor=actor,
                        shares=[Share(previous, policy.PRODUCTION, 100)],
                        reason=why,
                        new=True,
                        finished=True,
                    )
                    await self._rolled_back_event(session, stored, actor=actor, reason=why, automatic=False)
        await self._record(stored)
        return stored.rollout
