"""Kafka side of the evaluator: every `ModelTrained` gets a verdict; every `DatasetVersionRecorded` of a
data set that models trained outside the platform are judged on gets their champions re-evaluated."""

from __future__ import annotations

from opentelemetry import trace

from mlops.bus import EventContext
from mlops.events.v1 import data_pb2, training_pb2
from services.evaluator.core import EvaluatorCore


class EvaluatorHandlers:
    def __init__(self, core: EvaluatorCore) -> None:
        self.core = core

    async def on_model_trained(self, event: training_pb2.ModelTrained, ctx: EventContext) -> None:
        """Evaluate the new version in the inbox transaction: the verdict is queued in the outbox if
        and only if the event is marked handled. A model or data set that breaks the contract is a
        permanent error (InvalidArgument, NotFound, IntegrityError): the event goes to the DLQ with
        the reason."""
        assert ctx.session is not None
        trace.get_current_span().set_attributes(
            {
                "mlops.model.name": event.model,
                "mlops.model.version": event.version,
                "mlops.dataset.name": event.dataset,
                "mlops.dataset.version": event.dataset_version,
            }
        )
        await self.core.handle_model_trained(event, session=ctx.session)

    async def on_dataset_recorded(self, event: data_pb2.DatasetVersionRecorded, ctx: EventContext) -> None:
        """Re-evaluate the champion of each external model (`training.external`) judged on the data set;
        the evaluations go to the registry, nothing to the bus. A record the registry does not hold,
        or whose sha256 differs from the registry's, goes to the DLQ with the reason."""
        trace.get_current_span().set_attributes(
            {"mlops.dataset.name": event.dataset, "mlops.dataset.version": event.version}
        )
        await self.core.reevaluate_external_champions(event)
