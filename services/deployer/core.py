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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import Outbox
from mlops.bus.tracing import context_from_text, current_traceparent
from mlops.db import Database
from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.errors import Conflict, FailedPrecondition, InvalidArgument, MlopsError, NotFound
from mlops.events.v1 import common_pb2, deployment_pb2, evaluation_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.deployer import policy, prometheus, storage
from services.deployer.clients import MonitorClient, RegistryClient
from services.deployer.policy import Action, Share
from services.deployer.settings import DeployerSettings
from services.deployer.storage import StoredRollout

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.deployer")

S = deployment_pb2
STATE_NAMES = [name.removeprefix("ROLLOUT_STATE_") for name in S.RolloutState.keys()[1:]]


def now_ts() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def state_name(state: int) -> str:
    return S.RolloutState.Name(state).removeprefix("ROLLOUT_STATE_")


def serving_version(version: pb.ModelVersion) -> S.ServingVersion:
    return S.ServingVersion(
        version=version.version,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        task=version.signature.task,
        feature_names=version.signature.feature_names,
        class_labels=version.signature.class_labels,
    )


def production_of(desired: S.DesiredState | None) -> S.ServingVersion | None:
    if desired is None:
        return None
    for version in desired.versions:
        if version.role == common_pb2.SERVING_ROLE_PRODUCTION:
            return version
    return None


def prediction_drift_bound(body: pb.ModelSpecBody, default: float) -> float:
    """The spec's `rollout.max_prediction_drift` when set, else the deployer's default (0 by default:
    the drift is reported with each step but decides nothing, since a retrained model is meant to
    answer differently from the champion it replaces)."""
    if body.rollout.HasField("max_prediction_drift"):
        return body.rollout.max_prediction_drift
    return default


def check_evaluated(event: evaluation_pb2.ModelEvaluated) -> None:
    problems = []
    if not event.model:
        problems.append("model is empty")
    if event.version <= 0:
        problems.append(f"version must be 1 or more, got {event.version}")
    if problems:
        raise InvalidArgument("ModelEvaluated cannot be rolled out: " + "; ".join(problems))


class DeployerCore:
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
        self._locks: dict[str, asyncio.Lock] = {}
        self._held: dict[str, tuple[float, float]] = {}
        """Held rollouts: when each is next checked, and the interval that led there."""

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    # --- passed evaluations ------------------------------------------------------------------------

    async def handle_model_evaluated(
        self, event: evaluation_pb2.ModelEvaluated, *, session: AsyncSession
    ) -> dpb.Rollout | None:
        """Roll out a version that passed its gate, in the consumer's transaction; a failed one is
        logged and left alone. The current trace context is stored with the rollout."""
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
        if stored.hold and time.monotonic() < due:
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
                elapsed = (datetime.now(UTC) - storage.moment(r.step_started_at)).total_seconds()
                last = r.step_index >= len(r.steps) - 1
                decision = policy.decide(
                    judgement,
                    elapsed_s=elapsed,
                    step_seconds=r.step_seconds,
                    last_step=last,
                    paused=r.state == S.ROLLOUT_STATE_PAUSED,
                    auto_promote=r.auto_promote,
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
            await self._roll_back(
                session, stored, actor=actor, reason=f"{judgement.reason} at {label}", automatic=True
            )
            return True
        if action is Action.ADVANCE:
            await self._fill_baseline_health(stored)
            r.step_index += 1
            r.step_started_at.CopyFrom(now_ts())
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
                None, bounds, min_requests=needed, no_answer=f"{type(error).__name__}: {error.message}"
            )
        except Exception as error:
            return policy.judge(
                None, bounds, min_requests=needed, no_answer=f"{type(error).__name__}: {error}"
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
        prometheus.TRAFFIC_PERCENT.labels(r.model, str(r.candidate_version)).set(
            0 if r.state in (S.ROLLOUT_STATE_ROLLED_BACK, S.ROLLOUT_STATE_ABORTED) else r.traffic_percent
        )


def _by(done: str, actor: str, reason: str) -> str:
    """What a person did to a rollout, for its ledger: "paused by alice: load test"."""
    return f"{done} by {actor}" + (f": {reason}" if reason else "")
