"""The evaluator's rules, transport-neutral: a `ModelTrained` in, a `ModelEvaluated` out.

The challenger (the new version, as the registry holds it: its artifact and signature, never the
event's claim of them, see `claims`) and the champion (the version the `production` alias points to)
are scored on the same rows: the TEST split of the challenger's data set version, assigned by
`mlops.tabular` from the spec's fractions exactly as the trainer assigned it, so no row the
challenger trained on is ever scored. Each model reads the rows through its own signature (its
feature order, its class labels). The spec's gates then decide; the registry records the
evaluation under an id derived from what was evaluated, and `ModelEvaluated` leaves through the
outbox in the same transaction as the inbox entry of the event that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry import trace
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.errors import IntegrityError, InvalidArgument
from mlops.events.v1 import data_pb2, evaluation_pb2, training_pb2
from mlops.names import DATASET_NAME
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from services.evaluator import gates, prometheus, storage
from services.evaluator.claims import registered_version
from services.evaluator.contenders import (
    Contender,
    HeldOut,
    ScoreCard,
    compared_champion,
    contender,
    evaluation_id_for,
    held_out_rows,
    score_contender,
    slice_metrics,
)
from services.evaluator.settings import EvaluatorSettings

if TYPE_CHECKING:  # the registry's gRPC client, passed in by the composition root
    from services.evaluator.clients import RegistryClient

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.evaluator")


class EvaluatorCore:
    def __init__(
        self,
        registry: RegistryClient,
        store: ArtifactStore,
        outbox: Outbox,
        settings: EvaluatorSettings,
    ) -> None:
        self.registry = registry
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent_evaluations)

    async def handle_model_trained(
        self, trained: training_pb2.ModelTrained, *, session: AsyncSession
    ) -> evaluation_pb2.ModelEvaluated:
        """Evaluate, record, and queue `ModelEvaluated` in the caller's transaction. The same content
        under another event id (the trainer published twice) is not evaluated or published again."""
        evaluation_id = self.evaluation_id(trained)
        before = await storage.find_evaluation(session=session, evaluation_id=evaluation_id)
        if before is not None:
            trace.get_current_span().set_attribute("mlops.evaluator.already_evaluated", True)
            log.info(
                "%s v%d was evaluated before (%s); nothing to do",
                trained.model,
                trained.version,
                evaluation_id,
            )
            return before
        evaluated = await self.evaluate(trained)
        await storage.save_evaluation(session=session, evaluated=evaluated)
        await self.outbox.add(session, evaluated)
        return evaluated

    @staticmethod
    def evaluation_id(trained: training_pb2.ModelTrained) -> str:
        return evaluation_id_for(
            model=trained.model,
            version=trained.version,
            spec_version=trained.spec_version,
            dataset_sha256=trained.dataset_sha256 or f"{trained.dataset}@{trained.dataset_version}",
        )

    async def evaluate(self, trained: training_pb2.ModelTrained) -> evaluation_pb2.ModelEvaluated:
        """Score challenger and champion on the same held-out rows, apply the gates, record the
        evaluation in the registry; returns the event to publish (the registry's record of it)."""
        attributes = {
            "mlops.model.name": trained.model,
            "mlops.model.version": trained.version,
            "mlops.dataset.name": trained.dataset,
            "mlops.dataset.version": trained.dataset_version,
        }
        async with self._slots:
            started = time.perf_counter()
            with tracer.start_as_current_span("evaluate model", attributes=attributes) as span:
                registered = await registered_version(self.registry, trained)
                spec = await self.registry.model_spec(trained.model, trained.spec_version)
                body = spec.spec.spec
                dataset = await self.registry.dataset_version(trained.dataset, trained.dataset_version)
                if trained.dataset_sha256 and dataset.sha256 != trained.dataset_sha256:
                    raise InvalidArgument(
                        f"{trained.dataset} v{trained.dataset_version} has sha256 {dataset.sha256} in the "
                        f"registry, but the model was trained on {trained.dataset_sha256}"
                    )
                champion_version = await self.registry.aliased_version(
                    trained.model, self.settings.champion_alias
                )
                if champion_version is not None and champion_version.version == trained.version:
                    champion_version = None  # re-evaluating the champion itself: nothing to compare with
                span.set_attribute(
                    "mlops.evaluator.champion_version", champion_version.version if champion_version else 0
                )

                challenger = contender("challenger", registered)
                held_out = await self._held_out(dataset, body)
                span.set_attribute("mlops.evaluator.test_rows", len(held_out.rows))
                challenger_card = await self._score(challenger, held_out, measure_latency=True)
                champion_card = None
                if champion_version is not None:
                    champion_card = await self._score_champion(champion_version, held_out)

                with tracer.start_as_current_span("apply gates", attributes=attributes):
                    evaluation = self._judge(
                        evaluation_id=self.evaluation_id(trained),
                        model=trained.model,
                        version=trained.version,
                        card=challenger_card,
                        champion=(champion_version, champion_card),
                        held_out=held_out,
                        body=body,
                        spec_version=spec.version,
                        dataset=dataset,
                    )
                reply = await self.registry.record_evaluation(evaluation)
                recorded = reply.evaluation
                span.set_attribute("mlops.evaluator.passed", recorded.passed)
                if not reply.created:
                    log.info(
                        "evaluation %s was recorded before; publishing the recorded verdict",
                        recorded.evaluation_id,
                    )
                elapsed = time.perf_counter() - started
                prometheus.EVALUATION_SECONDS.observe(elapsed)
                prometheus.EVALUATIONS.labels(trained.model, "passed" if recorded.passed else "failed").inc()
                for result in recorded.gates:
                    if not result.passed:
                        prometheus.GATE_FAILURES.labels(trained.model, result.gate.split(":")[0]).inc()
                log.info(
                    "%s v%d %s in %.2fs on %d held-out rows (%s): %s",
                    trained.model,
                    trained.version,
                    gate_summary(recorded.gates),
                    elapsed,
                    len(held_out.rows),
                    challenger_card.provider,
                    " | ".join(result.message for result in recorded.gates),
                )
                return model_evaluated(recorded, trained, registered)

    async def reevaluate_external_champions(
        self, recorded: data_pb2.DatasetVersionRecorded
    ) -> list[pb.Evaluation]:
        """A new version of a data set that models trained outside the platform are judged on
        (`training.external`): nobody retrains them, so each one's champion is evaluated on the new
        version's held-out rows against its spec's gates, and the evaluation is recorded in the registry
        (`mlops models evaluations`). Nothing is published: the champion is already in production, and
        a verdict about it must not start a rollout. A champion that cannot read the new rows is logged
        and left; the other models are still evaluated."""
        if not DATASET_NAME.match(recorded.dataset) or recorded.version < 1:
            raise InvalidArgument(
                f"DatasetVersionRecorded names data set {recorded.dataset[:200]!r} version {recorded.version}: "
                "a record names a data set by a valid name and a version from 1"
            )
        specs = [
            spec
            for spec in await self.registry.specs_for_dataset(recorded.dataset)
            if spec.spec.spec.training.external
        ]
        if not specs:
            return []
        dataset = await self.registry.dataset_version(recorded.dataset, recorded.version)
        if recorded.sha256 and dataset.sha256 != recorded.sha256:
            raise IntegrityError(
                f"DatasetVersionRecorded says {recorded.dataset} v{recorded.version} has sha256 "
                f"{recorded.sha256}, the registry holds {dataset.sha256}"
            )
        latest = await self.registry.dataset_version(recorded.dataset)
        if latest.version > dataset.version:
            # a record read again (a first start reads the topic from its beginning), or one a later
            # commit has overtaken: the champion is judged on the latest data, which has its own record
            log.info(
                "%s v%d is not the latest version (v%d); its record re-evaluates nothing",
                dataset.dataset,
                dataset.version,
                latest.version,
            )
            return []
        recorded_evaluations = []
        for spec in specs:
            champion = await self.registry.aliased_version(spec.model, self.settings.champion_alias)
            if champion is None:
                log.info(
                    "%s (trained outside the platform) has no %s version to re-evaluate on %s v%d",
                    spec.model,
                    self.settings.champion_alias,
                    dataset.dataset,
                    dataset.version,
                )
                continue
            try:
                evaluation = await self.reevaluate_champion(spec, champion, dataset)
            except InvalidArgument as error:
                log.warning(
                    "%s v%d cannot be evaluated on %s v%d: %s",
                    spec.model,
                    champion.version,
                    dataset.dataset,
                    dataset.version,
                    error.message,
                )
                trace.get_current_span().add_event(
                    "champion not evaluated", {"mlops.model.name": spec.model, "reason": error.message}
                )
                continue
            recorded_evaluations.append(evaluation)
        return recorded_evaluations

    async def reevaluate_champion(
        self, spec: pb.ModelSpecVersion, champion: pb.ModelVersion, dataset: pb.DatasetVersion
    ) -> pb.Evaluation:
        """One champion on one data set version, recorded in the registry; no challenger, no event."""
        body = spec.spec.spec
        attributes = {
            "mlops.model.name": spec.model,
            "mlops.model.version": champion.version,
            "mlops.dataset.name": dataset.dataset,
            "mlops.dataset.version": dataset.version,
        }
        async with self._slots:
            started = time.perf_counter()
            with tracer.start_as_current_span("re-evaluate champion", attributes=attributes) as span:
                held_out = await self._held_out(dataset, body)
                card = await self._score(contender("champion", champion), held_out, measure_latency=True)
                evaluation = self._judge(
                    evaluation_id=evaluation_id_for(
                        model=spec.model,
                        version=champion.version,
                        spec_version=spec.version,
                        dataset_sha256=dataset.sha256,
                    ),
                    model=spec.model,
                    version=champion.version,
                    card=card,
                    champion=(None, None),
                    held_out=held_out,
                    body=body,
                    spec_version=spec.version,
                    dataset=dataset,
                )
                reply = await self.registry.record_evaluation(evaluation)
                recorded = reply.evaluation
                span.set_attribute("mlops.evaluator.passed", recorded.passed)
                verdict = "passed" if recorded.passed else "failed"
                prometheus.CHAMPION_REEVALUATIONS.labels(spec.model, verdict).inc()
                log_at = log.info if recorded.passed else log.warning
                log_at(
                    "%s v%d (%s, trained outside the platform) re-evaluated on %s v%d in %.2fs, %d held-out "
                    "rows: %s%s | %s",
                    spec.model,
                    champion.version,
                    self.settings.champion_alias,
                    dataset.dataset,
                    dataset.version,
                    time.perf_counter() - started,
                    len(held_out.rows),
                    gate_summary(recorded.gates),
                    "" if recorded.passed else "; register a new version",
                    " | ".join(result.message for result in recorded.gates),
                )
                return recorded

    def _judge(
        self,
        *,
        evaluation_id: str,
        model: str,
        version: int,
        card: ScoreCard,
        champion: tuple[pb.ModelVersion | None, ScoreCard | None],
        held_out: HeldOut,
        body: pb.ModelSpecBody,
        spec_version: int,
        dataset: pb.DatasetVersion,
    ) -> pb.Evaluation:
        """The gates applied to a scored contender, stated as the evaluation the registry keeps."""
        champion_version, champion_card = champion
        policy = gates.GatePolicy.from_proto(body.gate, task=body.task)
        slices = slice_metrics(held_out, card, champion_card)
        results = gates.apply_gates(
            policy,
            metrics=card.metrics,
            champion=compared_champion(champion_version, champion_card),
            latency_p99_ms=card.latency_p99_ms,
            model_size_bytes=card.size_bytes,
            slices=slices,
            min_slice_rows=self.settings.min_slice_rows,
        )
        evaluation = pb.Evaluation(
            evaluation_id=evaluation_id,
            model=model,
            version=version,
            champion_version=champion_version.version if champion_version else 0,
            passed=gates.passed(results),
            metrics=card.metrics,
            champion_metrics=champion_card.metrics if champion_card else {},
            gates=results,
            slices=slices,
            latency_p50_ms=card.latency_p50_ms,
            latency_p99_ms=card.latency_p99_ms,
            model_size_bytes=card.size_bytes,
            dataset=dataset.dataset,
            dataset_version=dataset.version,
            dataset_sha256=dataset.sha256,
            row_count=len(held_out.rows),
            spec_version=spec_version,
            primary_metric=policy.metric,
        )
        evaluation.evaluated_at.GetCurrentTime()
        return evaluation

    async def _held_out(self, dataset: pb.DatasetVersion, body: pb.ModelSpecBody) -> HeldOut:
        with tracer.start_as_current_span(
            "load held-out rows",
            attributes={"mlops.dataset.name": dataset.dataset, "mlops.dataset.version": dataset.version},
        ):
            with tempfile.TemporaryDirectory(prefix="mlops-evaluator-") as tmp:
                path = await self.store.get_file(dataset.uri, Path(tmp) / "data", dataset.sha256)
                return await asyncio.to_thread(
                    held_out_rows,
                    path,
                    dataset.format or "csv",
                    body,
                    slice_max_values=self.settings.slice_max_values,
                    slice_bins=self.settings.slice_bins,
                )

    async def _score(self, contender: Contender, held_out: HeldOut, *, measure_latency: bool) -> ScoreCard:
        model_bytes = await self.store.get_bytes(contender.artifact_uri, contender.artifact_sha256)
        return await asyncio.to_thread(
            score_contender, model_bytes, contender, held_out, self.settings, measure_latency=measure_latency
        )

    async def _score_champion(self, version: pb.ModelVersion, held_out: HeldOut) -> ScoreCard | None:
        """The champion's card, or None when it cannot read these rows (its features or classes are
        not in this data set version): the regression gate then says so and is skipped."""
        champion = contender("champion", version)
        try:
            return await self._score(champion, held_out, measure_latency=False)
        except InvalidArgument as error:
            log.warning("%s cannot be compared on these rows: %s", version.model, error)
            trace.get_current_span().add_event("champion not comparable", {"reason": error.message})
            return None


def model_evaluated(
    evaluation: pb.Evaluation, trained: training_pb2.ModelTrained, version: pb.ModelVersion
) -> evaluation_pb2.ModelEvaluated:
    event = evaluation_pb2.ModelEvaluated(
        model=evaluation.model,
        version=evaluation.version,
        champion_version=evaluation.champion_version,
        passed=evaluation.passed,
        metrics=evaluation.metrics,
        champion_metrics=evaluation.champion_metrics,
        gates=evaluation.gates,
        slices=evaluation.slices,
        latency_p50_ms=evaluation.latency_p50_ms,
        latency_p99_ms=evaluation.latency_p99_ms,
        model_size_bytes=evaluation.model_size_bytes,
        evaluation_id=evaluation.evaluation_id,
        dataset=evaluation.dataset,
        dataset_version=evaluation.dataset_version,
        dataset_sha256=evaluation.dataset_sha256,
        row_count=evaluation.row_count,
        spec_version=evaluation.spec_version,
        run_id=version.run_id or trained.run_id,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        primary_metric=evaluation.primary_metric,
    )
    event.evaluated_at.CopyFrom(evaluation.evaluated_at)
    return event


def gate_summary(results: Sequence[evaluation_pb2.GateResult]) -> str:
    failed = [r.gate for r in results if not r.passed]
    return "passed" if not failed else "failed: " + ", ".join(failed)
