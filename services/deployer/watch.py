"""The watch over every running rollout: each tick the candidate's health is asked of the monitor,
judged by `policy`, and the decision applied (wait, hold, step on, promote, roll back, or pause
or roll back once a hold has had no verdict for the spec's health timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.errors import Conflict, FailedPrecondition, MlopsError, NotFound
from mlops.events.v1 import common_pb2, deployment_pb2
from services.deployer import policy, storage
from services.deployer.policy import Action
from services.deployer.storage import StoredRollout
from services.deployer.transitions import RolloutTransitions

log = logging.getLogger(__name__)

S = deployment_pb2


def _health_timeout_passed(stored: StoredRollout) -> bool:
    """True once a held step has waited its health timeout: the hold's back-off must not delay the
    action by up to `hold_check_interval_s`."""
    deadline = storage.health_deadline(stored)
    return deadline is not None and datetime.now(UTC) >= deadline


class RolloutWatch(RolloutTransitions):
    # --- the watch -----------------------------------------------------------------------------------

    async def watch(self, stopping: asyncio.Event) -> None:
        """Look at every running rollout each tick until `stopping` is set."""
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception as error:  # an outage: the next tick tries again
                log.warning("rollout watch: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.tick_interval_s)

    async def tick(self) -> None:
        async with self.database.session() as session:
            running = await storage.running_rollout_ids(session=session, scope=self.scope)
            unrecorded = await storage.unrecorded_rollout_ids(session=session, scope=self.scope)
        for gone in self._held.keys() - set(running):  # ended elsewhere (superseded, by a person)
            del self._held[gone]
        results = await asyncio.gather(
            *(self.step(rollout_id) for rollout_id in running), return_exceptions=True
        )
        for rollout_id, result in zip(running, results, strict=True):
            if isinstance(result, Exception) and not isinstance(result, Conflict):
                log.warning("rollout %s: %s", rollout_id, result)
        for rollout_id in unrecorded:  # moves whose registry record failed, or was left to the watch
            async with self.database.session() as session:
                stored = await storage.get_rollout(session=session, scope=self.scope, rollout_id=rollout_id)
            if stored is not None and stored.recorded_moves < len(stored.rollout.history):
                await self._record(stored)

    async def step(self, rollout_id: str) -> None:
        """Check one running rollout's candidate and apply what the policy decides."""
        async with self.database.session() as session:
            stored = await storage.get_rollout(session=session, scope=self.scope, rollout_id=rollout_id)
        if stored is None or not stored.running:
            self._held.pop(rollout_id, None)
            return
        due, interval = self._held.get(rollout_id, (0.0, 0.0))
        if stored.hold and time.monotonic() < due and not _health_timeout_passed(stored):
            return
        moved = False
        async with self._lock(stored.model):
            async with self.database.session() as session:
                stored = await storage.get_rollout(session=session, scope=self.scope, rollout_id=rollout_id)
            if stored is None or not stored.running:
                return
            r = stored.rollout
            with self._span("check rollout", stored) as span:
                judgement = await self._check(stored)
                now = datetime.now(UTC)
                elapsed = (now - storage.moment(r.step_started_at)).total_seconds()
                since_verdict = (
                    (now - stored.verdict_at).total_seconds() if stored.verdict_at is not None else None
                )
                if judgement.is_verdict:
                    stored.verdict_at = now
                last = r.step_index >= len(r.steps) - 1
                decision = policy.decide(
                    judgement,
                    elapsed_s=elapsed,
                    step_seconds=r.step_seconds,
                    last_step=last,
                    paused=r.state == S.ROLLOUT_STATE_PAUSED,
                    auto_promote=r.auto_promote,
                    since_verdict_s=since_verdict,
                    health_timeout_s=stored.health_timeout_s,
                    on_health_timeout=stored.on_health_timeout,
                    step=self._label(stored),
                )
                span.set_attributes(
                    {
                        "mlops.deployer.verdict": judgement.verdict.value,
                        "mlops.deployer.action": decision.action.value,
                        "mlops.deployer.step": r.step_index,
                    }
                )
                async with self.database.transaction() as session:
                    moved = await self._apply(session, stored, decision, judgement)
            self._observe(stored)
            if stored.hold and stored.running:
                # A held step is checked at growing intervals: a long hold must not grow the
                # rollout's trace by several spans a second.
                interval = min(
                    max(interval * 2, self.settings.tick_interval_s), self.settings.hold_check_interval_s
                )
                self._held[rollout_id] = (time.monotonic() + interval, interval)
            else:
                self._held.pop(rollout_id, None)
        if moved:
            await self._record(stored)

    async def _apply(self, session: AsyncSession, stored: StoredRollout, decision, judgement) -> bool:
        r = stored.rollout
        label = self._label(stored)
        actor = self.settings.actor
        action = decision.action
        if action is Action.ROLLBACK:
            # A broken bound says which at the step; a health timeout's reason says it all already.
            broken = judgement.verdict is policy.Verdict.BROKEN
            reason = f"{judgement.reason} at {label}" if broken else decision.reason
            await self._roll_back(session, stored, actor=actor, reason=reason, automatic=True)
            return True
        if action is Action.PAUSE:
            stored.hold = ""
            log.warning("%s rollout %s: %s", r.model, r.rollout_id, decision.reason)
            await self._move(
                session, stored, state=S.ROLLOUT_STATE_PAUSED, actor=actor, reason=decision.reason
            )
            return True
        if action is Action.ADVANCE:
            await self._fill_baseline_health(stored)
            r.step_index += 1  # its time starts with the move's desired state
            stored.hold = ""
            shares = policy.shares_at(
                r.strategy,
                list(r.steps),
                r.step_index,
                candidate=r.candidate_version,
                baseline=r.baseline_version,
            )
            await self._move(
                session,
                stored,
                state=self._running_state(stored),
                actor=actor,
                shares=shares,
                reason=f"{label} healthy for {r.step_seconds}s: {judgement.reason}; on to {self._label(stored)}",
            )
            return True
        if action is Action.PROMOTE:
            await self._fill_baseline_health(stored)
            try:
                await self._promote(
                    session, stored, actor=actor, reason=f"{self._summary(stored)}: {judgement.reason}"
                )
                return True
            except FailedPrecondition as error:
                return await self._hold(
                    session, stored, "promotion_refused", f"cannot promote: {error.message}"
                )
        if action is Action.AWAIT_PROMOTION:
            return await self._hold(
                session,
                stored,
                "await_promotion",
                f"healthy at {label} ({judgement.reason}); auto_promote is off: waiting for a person to promote",
            )
        if action is Action.HOLD:
            return await self._hold(
                session, stored, judgement.verdict.value, f"holding at {label}: {decision.reason}"
            )
        await storage.update_rollout(session=session, scope=self.scope, stored=stored)
        return False

    async def _hold(self, session: AsyncSession, stored: StoredRollout, kind: str, reason: str) -> bool:
        """Stay at the step and say why; a new kind of hold is announced once, not every tick."""
        if stored.hold == kind:
            stored.rollout.reason = reason
            await storage.update_rollout(session=session, scope=self.scope, stored=stored)
            return False
        stored.hold = kind
        log.info("%s: %s", stored.model, reason)
        await self._move(
            session, stored, state=stored.rollout.state, actor=self.settings.actor, reason=reason
        )
        return True

    async def _check(self, stored: StoredRollout) -> policy.Judgement:
        """The candidate's health over the last step_seconds, judged against the rollout's bounds."""
        r = stored.rollout
        bounds = policy.Bounds(
            max_error_rate=r.max_error_rate,
            max_p99_latency_ms=r.max_p99_latency_ms,
            min_requests=r.min_requests,
            max_prediction_drift=r.max_prediction_drift,
        )
        needed = policy.min_requests_at(r.strategy, r.step_index, r.min_requests)
        try:
            response = await self.monitor.health(
                r.model,
                r.candidate_version,
                window_seconds=r.step_seconds,
                baseline_version=r.baseline_version,
            )
        except NotFound:
            # The monitor answered: it has seen no request of the candidate yet.
            r.candidate_health.CopyFrom(common_pb2.HealthSnapshot(version=r.candidate_version))
            r.ClearField("prediction_drift")
            return policy.judge(policy.Health(0, 0.0, 0.0), bounds, min_requests=needed)
        except MlopsError as error:
            return policy.judge(
                None,
                bounds,
                min_requests=needed,
                no_answer=f"{type(error).__name__}: {error.message}",
                no_answer_code=error.grpc_code.name,
            )
        except Exception as error:
            return policy.judge(
                None,
                bounds,
                min_requests=needed,
                no_answer=f"{type(error).__name__}: {error}",
                no_answer_code=type(error).__name__,
            )
        health = response.health
        r.candidate_health.CopyFrom(health)
        drift = response.prediction_drift if response.HasField("prediction_drift") else None
        if drift is None:
            r.ClearField("prediction_drift")
        else:
            r.prediction_drift = drift
        return policy.judge(
            policy.Health(health.request_count, health.error_rate, health.latency_p99_ms, drift),
            bounds,
            min_requests=needed,
        )
